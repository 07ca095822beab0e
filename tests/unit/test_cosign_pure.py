"""Pure cosign verification and reference parsing, with keys made here."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trainguard.api.images import InvalidReference, parse
from trainguard.signing import cosign

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def keypair(name: str) -> tuple[ec.EllipticCurvePrivateKey, cosign.Signer]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, cosign.Signer.from_pem(name, pem.decode())


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()


def simple_payload(digest: str) -> bytes:
    doc = {
        "critical": {
            "identity": {"docker-reference": "r.example.com/t"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(doc).encode()


def bundle(key: ec.EllipticCurvePrivateKey, digest: str, predicate: str = cosign.COSIGN_PREDICATE) -> bytes:
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": predicate,
        "predicate": {},
    }
    payload = json.dumps(statement).encode()
    sig = sign(key, cosign.pae(cosign.INTOTO_PAYLOAD_TYPE, payload))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": cosign.INTOTO_PAYLOAD_TYPE,
        "signatures": [{"sig": sig}],
    }
    return json.dumps({"mediaType": cosign.BUNDLE_MEDIA_TYPE, "dsseEnvelope": envelope}).encode()


def test_simple_signing_verifies_with_a_trusted_key_and_names_it() -> None:
    key, signer = keypair("release")
    _, other = keypair("other")
    payload = simple_payload(DIGEST)
    assert (
        cosign.verify_simple_signing(payload, sign(key, payload), DIGEST, [other, signer]).name == "release"
    )


def test_simple_signing_rejects_untrusted_keys_other_digests_and_tampering() -> None:
    key, signer = keypair("release")
    stranger, _ = keypair("stranger")
    payload = simple_payload(DIGEST)
    with pytest.raises(cosign.SignatureInvalid, match="does not trust"):
        cosign.verify_simple_signing(payload, sign(stranger, payload), DIGEST, [signer])
    with pytest.raises(cosign.SignatureInvalid, match=f"the signature is for {DIGEST}, not for this image"):
        cosign.verify_simple_signing(payload, sign(key, payload), OTHER, [signer])
    tampered = payload.replace(b"ab", b"cd")
    with pytest.raises(cosign.SignatureInvalid, match="does not trust"):
        cosign.verify_simple_signing(tampered, sign(key, payload), OTHER, [signer])
    with pytest.raises(cosign.SignatureInvalid, match="not valid base64"):
        cosign.verify_simple_signing(payload, "!!!", DIGEST, [signer])


def test_bundle_verifies_and_checks_subject_and_predicate() -> None:
    key, signer = keypair("release")
    assert cosign.verify_bundle(bundle(key, DIGEST), DIGEST, [signer]).name == "release"
    with pytest.raises(cosign.SignatureInvalid, match="subject is not this image"):
        cosign.verify_bundle(bundle(key, DIGEST), OTHER, [signer])
    with pytest.raises(cosign.SignatureInvalid, match="not cosign's"):
        cosign.verify_bundle(bundle(key, DIGEST, "https://slsa.dev/provenance/v1"), DIGEST, [signer])
    with pytest.raises(cosign.SignatureInvalid, match="65537 bytes exceeds 65536"):
        cosign.verify_bundle(b"x" * (cosign.MAX_PAYLOAD_BYTES + 1), DIGEST, [signer])


def test_pae_matches_the_dsse_specification() -> None:
    assert cosign.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_only_p256_keys_are_accepted() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="only ECDSA P-256"):
        cosign.Signer.from_pem("big", pem.decode())


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("r.example.com/team/trainer:v1", "r.example.com", "team/trainer", "v1", None),
        ("127.0.0.1:5000/t/x", "127.0.0.1:5000", "t/x", "latest", None),
        (f"r.io/t/x:v2@{DIGEST}", "r.io", "t/x", "v2", DIGEST),
        (f"localhost/x@{DIGEST}", "localhost", "x", None, DIGEST),
    ],
)
def test_references_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ubuntu:22.04", "names no registry"),
        ("r.io/x@sha256:abc", "is not sha256:"),
        ("r.io/UPPER:v1", "repository"),
    ],
)
def test_bad_references_say_how_to_fix_them(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse(text)
