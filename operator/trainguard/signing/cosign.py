"""Pure verification of cosign key-based signatures, in both layouts cosign writes.

* Classic: a manifest tagged `sha256-<hex>.sig` whose layers are simple-signing payloads; the
  signature (base64 DER, ECDSA P-256 over SHA-256 of the raw payload bytes) is in the layer
  annotation `dev.cosignproject.cosign/signature`, and the payload's
  `critical.image.docker-manifest-digest` must equal the image digest.
* Sigstore bundle (v0.3) attached as an OCI referrer: a DSSE envelope over an in-toto statement
  whose subject digest is the image digest and whose predicate type is cosign's; the signature
  covers the DSSE pre-authentication encoding (PAE) of the payload.

Nothing here does I/O: bytes and keys in, a verdict out.
"""

from __future__ import annotations

import base64
import binascii
import json

# Signer is this module's too: the image verifier and its tests name it `cosign.Signer`.
from trainguard.integrity.keys import Signer as Signer
from trainguard.integrity.keys import signed_by

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
COSIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
MAX_PAYLOAD_BYTES = 64 * 1024


class SignatureInvalid(Exception):
    """A signature object that does not verify; the message says why (never which key was tried)."""


def _b64(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid(f"{what} is not valid base64") from exc


def verify_simple_signing(
    payload: bytes, signature_b64: str, image_digest: str, signers: list[Signer]
) -> Signer:
    """Verify one classic cosign signature layer; return the trusted signer whose key made it."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SignatureInvalid(f"signature payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    signer = signed_by(signers, _b64(signature_b64, "the signature annotation"), payload)
    if signer is None:
        raise SignatureInvalid("signed by a key the tenant does not trust")
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureInvalid("the signed payload is not a cosign simple-signing document") from exc
    if kind != SIMPLE_SIGNING_TYPE:
        raise SignatureInvalid(f"the signed payload has type {kind!r}, not {SIMPLE_SIGNING_TYPE!r}")
    if signed_digest != image_digest:
        raise SignatureInvalid(f"the signature is for {signed_digest}, not for this image ({image_digest})")
    return signer


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def verify_bundle(bundle_bytes: bytes, image_digest: str, signers: list[Signer]) -> Signer:
    """Verify one Sigstore bundle (DSSE over an in-toto statement); return the trusted signer."""
    if len(bundle_bytes) > MAX_PAYLOAD_BYTES:
        raise SignatureInvalid(f"signature bundle of {len(bundle_bytes)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        bundle = json.loads(bundle_bytes)
        envelope = bundle["dsseEnvelope"]
        payload_type = envelope["payloadType"]
        payload = _b64(envelope["payload"], "the DSSE payload")
        signatures = [_b64(s["sig"], "a DSSE signature") for s in envelope["signatures"]][:8]
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureInvalid("the bundle is not a Sigstore bundle with a DSSE envelope") from exc
    if payload_type != INTOTO_PAYLOAD_TYPE:
        raise SignatureInvalid(f"the DSSE payload type is {payload_type!r}, not {INTOTO_PAYLOAD_TYPE!r}")
    message = pae(payload_type, payload)
    signer = next((s for sig in signatures if (s := signed_by(signers, sig, message))), None)
    if signer is None:
        raise SignatureInvalid("signed by a key the tenant does not trust")
    try:
        statement = json.loads(payload)
        predicate = statement["predicateType"]
        subjects = [s["digest"]["sha256"] for s in statement["subject"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureInvalid("the signed statement is not an in-toto statement") from exc
    if predicate != COSIGN_PREDICATE:
        raise SignatureInvalid(f"the statement's predicate type is {predicate!r}, not cosign's")
    if f"sha256:{subjects[0] if len(subjects) == 1 else ''}" != image_digest:
        raise SignatureInvalid(f"the statement's subject is not this image ({image_digest})")
    return signer
