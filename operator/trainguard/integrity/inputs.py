"""Signed manifests of shared inputs (base checkpoints, shared code, tokenizers). Pure.

A manifest lists every regular file of a shared folder: its name relative to the folder, its
SHA-256 and its size, sorted, as canonical JSON. A signer the tenant trusts signs the manifest's
bytes with `cosign sign-blob --key` (either output: the base64 signature of `--output-signature`
or the Sigstore bundle of `--bundle`; both are ECDSA P-256 over SHA-256 of the bytes). Both files
live on the read-only volume itself, under `.trainguard/`, which the manifest leaves out.

Nothing here touches the filesystem: the scan is done by `trainguard.inputs` (the command the
verify init container runs) and by the trainer library, which hand the results in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from trainguard.integrity.keys import Signer, signed_by

FORMAT = "trainguard.dev/inputs/v1"
MANIFEST_DIR = ".trainguard"  # at the root of the shared folder; never listed in the manifest
MANIFEST_FILE = f"{MANIFEST_DIR}/manifest.json"
SIGNATURE_FILE = f"{MANIFEST_DIR}/manifest.json.sig"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # about 300,000 files
MAX_SIGNATURE_BYTES = 64 * 1024
SIGN_COMMAND = (
    "cosign sign-blob --key <a key tenant trusts> --tlog-upload=false --new-bundle-format=false "
    f"--use-signing-config=false --output-signature {SIGNATURE_FILE} {MANIFEST_FILE}"
)


class ManifestInvalid(Exception):
    """The manifest or its signature cannot be trusted; the message says why and how to fix it."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str  # hex
    size: int


def signers_from_json(text: str) -> list[Signer]:
    """The signers as the operator hands them to a pod: `[{"name": …, "publicKey": <PEM>}, …]`."""
    return [Signer.from_pem(str(s["name"]), str(s["publicKey"])) for s in json.loads(text)]


def is_valid_name(name: str) -> bool:
    """A relative POSIX name inside the folder: no absolute path, no `..`, no empty part."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def is_manifest_own(name: str) -> bool:
    return name == MANIFEST_DIR or name.startswith(MANIFEST_DIR + "/")


def render(files: Mapping[str, FileEntry]) -> bytes:
    """The manifest's canonical bytes: what is signed, byte for byte (sorted, no spaces, one
    trailing newline), so the same folder always gives the same manifest."""
    listed = [
        {"path": name, "sha256": files[name].sha256, "size": files[name].size}
        for name in sorted(files)
        if not is_manifest_own(name)
    ]
    for entry in listed:
        if not is_valid_name(str(entry["path"])):
            raise ValueError(f"{entry['path']!r} is not a relative name inside the folder")
    doc = {"format": FORMAT, "files": listed}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def parse(data: bytes) -> dict[str, FileEntry]:
    """The files a manifest lists; ManifestInvalid when it is not one."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(f"the manifest is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data)
        if doc["format"] != FORMAT:
            raise ManifestInvalid(f"the manifest's format is {doc['format']!r}, not {FORMAT!r}")
        files = {str(f["path"]): FileEntry(str(f["sha256"]), int(f["size"])) for f in doc["files"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestInvalid("the manifest is not a trainguard inputs manifest") from exc
    bad = [name for name in files if not is_valid_name(name) or is_manifest_own(name)]
    if bad:
        raise ManifestInvalid(f"the manifest names {bad[0]!r}, which is not a file of the folder")
    return files


def _signature_bytes(signature: bytes, manifest: bytes) -> bytes:
    """The raw DER signature from either cosign output: a Sigstore bundle (JSON) or base64."""
    text = signature.strip()
    if text.startswith(b"{"):
        try:
            bundle = json.loads(text)
            message = bundle["messageSignature"]
            digest = message["messageDigest"]
            algorithm, signed_digest, raw = digest["algorithm"], digest["digest"], message["signature"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestInvalid(
                "the signature file is neither a cosign signature nor a blob bundle"
            ) from exc
        if algorithm != "SHA2_256" or _b64(signed_digest) != hashlib.sha256(manifest).digest():
            raise ManifestInvalid("the signature bundle is for other bytes than this manifest")
        return _b64(raw)
    return _b64(text.decode("ascii", errors="replace"))


def _b64(value: object) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestInvalid("the signature is not valid base64") from exc


def verify_signature(manifest: bytes, signature: bytes, signers: list[Signer]) -> Signer:
    """The trusted signer whose key signed these manifest bytes; ManifestInvalid when none did."""
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise ManifestInvalid(f"the signature file is more than {MAX_SIGNATURE_BYTES} bytes")
    signer = signed_by(signers, _signature_bytes(signature, manifest), manifest)
    if signer is not None:
        return signer
    names = ", ".join(s.name for s in signers) or "none"
    raise ManifestInvalid(
        f"{SIGNATURE_FILE} is not a signature of {MANIFEST_FILE} by a signer the tenant trusts "
        f"(trusted: {names}); sign it again: {SIGN_COMMAND}"
    )


def differences(expected: Mapping[str, FileEntry], actual: Mapping[str, FileEntry]) -> list[str]:
    """Every file that is not as signed, each named: changed, missing, or not in the manifest."""
    actual = {k: v for k, v in actual.items() if not is_manifest_own(k)}
    problems: list[str] = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if got is None:
            problems.append(f"{name}: missing (the manifest lists it)")
        elif want is None:
            problems.append(f"{name}: added (not in the manifest)")
        elif want != got:
            problems.append(
                f"{name}: changed (sha256 {got.sha256[:12]}…, {got.size} bytes; "
                f"signed {want.sha256[:12]}…, {want.size} bytes)"
            )
    return problems


def check_file(expected: Mapping[str, FileEntry], name: str, data: bytes) -> str | None:
    """Why these bytes are not the signed content of `name` (None when they are)."""
    want = expected.get(name)
    if want is None:
        return f"{name}: not in the manifest, so it is not a verified input"
    got = FileEntry(hashlib.sha256(data).hexdigest(), len(data))
    return differences({name: want}, {name: got})[0] if got != want else None
