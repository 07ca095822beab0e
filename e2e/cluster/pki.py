"""Certificates for the local control plane (CA, serving and client certificates from
trainguard's own helpers) and the service-account signing keys."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trainguard.tls.certs import KeyPair, ensure_ca, ensure_leaf, write_private_key

__all__ = ["KeyPair", "ensure_ca", "ensure_leaf", "ensure_service_account_keys"]


def ensure_service_account_keys(folder: Path) -> KeyPair:
    """RSA key pair the API server signs service-account tokens with (`cert` holds the public key)."""
    pair = KeyPair(folder / "sa.pub", folder / "sa.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private_key(pair.key, key)
    pair.cert.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pair
