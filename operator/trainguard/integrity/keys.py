"""Signers a tenant trusts, as cosign makes their keys (ECDSA P-256, PEM), and which of them signed
some bytes. Pure: image signatures (`trainguard.signing.cosign`) and shared-input manifests
(`integrity.inputs`) are checked against the same signers the same way."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def p256_public_key(pem: str, who: str) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key in `pem`; ValueError naming `who` (e.g. "trusted signer 'ci'")
    for anything else."""
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{who}: only ECDSA P-256 public keys are supported (cosign's default)")
    return key


@dataclass(frozen=True)
class Signer:
    """A signer the tenant trusts (its `spec.trustedSigners` entry)."""

    name: str
    public_key: ec.EllipticCurvePublicKey

    @functools.cached_property
    def identity(self) -> bytes:
        """The signer's name and public key (DER) as bytes: what a set of signers is keyed by."""
        der = self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return self.name.encode() + b"\0" + der

    @classmethod
    def from_pem(cls, name: str, pem: str) -> Signer:
        return cls(name, p256_public_key(pem, f"trusted signer {name!r}"))


def signed_by(signers: Iterable[Signer], signature: bytes, message: bytes) -> Signer | None:
    """The first of `signers` whose key made this ECDSA-SHA256 `signature` of `message`."""
    for signer in signers:
        try:
            signer.public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return signer
    return None
