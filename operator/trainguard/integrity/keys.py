"""Public keys of trusted signers, as cosign makes them (ECDSA P-256, PEM). Pure: the image signing
path (`trainguard.signing`) and the shared-inputs verifier (`integrity.inputs`) read keys alike."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def p256_public_key(pem: str, who: str) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key in `pem`; ValueError naming `who` (e.g. "trusted signer 'ci'")
    for anything else."""
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{who}: only ECDSA P-256 public keys are supported (cosign's default)")
    return key
