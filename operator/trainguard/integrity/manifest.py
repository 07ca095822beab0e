"""Checkpoint manifests: per-file SHA-256 hashes, signed with the job's integrity key. Pure."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

MANIFEST_SUFFIX = ".trainguard.json"  # beside a checkpoint file: <file>.trainguard.json
DIRECTORY_MANIFEST = "trainguard-manifest.json"  # inside a checkpoint directory (sharded checkpoints)


def manifest_path(checkpoint: Path) -> Path:
    """Where the signed manifest of a checkpoint file or directory lives."""
    return checkpoint / DIRECTORY_MANIFEST if checkpoint.is_dir() else Path(str(checkpoint) + MANIFEST_SUFFIX)


def _mac(key: bytes, files: dict[str, str], step: int | None, path: str) -> str:
    body = json.dumps({"files": files, "step": step, "path": path}, sort_keys=True).encode()
    return hmac.new(key, b"trainguard-checkpoint-v2" + body, hashlib.sha256).hexdigest()


def build_manifest(
    key: bytes, files: dict[str, str], step: int | None = None, path: str = ""
) -> dict[str, Any]:
    """`files` maps a file name to its SHA-256 hex digest; `path` is where the checkpoint was saved
    (a manifest vouches for those bytes at that path, at that step, for this job's key only)."""
    return {
        "format": 2,
        "path": path,
        "step": step,
        "files": dict(sorted(files.items())),
        "mac": _mac(key, files, step, path),
    }


def verify_manifest(
    key: bytes, manifest: dict[str, Any], actual: dict[str, str], path: str = ""
) -> list[str]:
    """Every reason the files on disk are not the ones the sidecar signed at `path`; empty when they are."""
    try:
        files = {str(k): str(v) for k, v in manifest["files"].items()}
        step = manifest.get("step")
        signed_path = str(manifest.get("path", ""))
        mac = str(manifest["mac"])
    except (KeyError, AttributeError, TypeError):
        return ["the manifest is malformed"]
    if not hmac.compare_digest(mac, _mac(key, files, step, signed_path)):
        return ["the manifest's signature is not valid: it was not written by this job's sidecar"]
    if signed_path != path:
        return [f"it was saved as {signed_path} (step {step}): a checkpoint copied from elsewhere"]
    problems = [f"{name} is missing" for name in files if name not in actual]
    problems += [
        f"{name} changed after it was saved"
        for name, digest in files.items()
        if name in actual and actual[name] != digest
    ]
    problems += [f"{name} is not in the manifest" for name in sorted(set(actual) - set(files))]
    return problems
