"""Reading a file of a verified shared folder (`verification: SignedManifest`) so that the bytes
the trainer loads are the bytes a trusted signer signed, even if the folder changed after the
verify-inputs init container checked it: the file is read once, checked, and those bytes are
returned to be loaded (e.g. `torch.load(io.BytesIO(data), weights_only=True)`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from trainguard.api.constants import INPUT_SIGNERS_ENV, VERIFIED_INPUTS_ENV
from trainguard.integrity.inputs import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    ManifestInvalid,
    check_file,
    parse,
    signers_from_json,
    verify_signature,
)


class SharedInputChanged(Exception):
    """A file of a verified shared folder is not as signed; the message names it."""


def read_verified(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> bytes:
    """The bytes of `path`, a file under a verified shared folder of this job, once they match the
    folder's signed manifest; SharedInputChanged naming the file when they do not."""
    env = os.environ if environ is None else environ
    target = Path(os.path.abspath(path))
    roots = [Path(os.path.abspath(p)) for p in json.loads(env.get(VERIFIED_INPUTS_ENV) or "[]")]
    root = next((r for r in roots if target.is_relative_to(r) and target != r), None)
    if root is None:
        verified = ", ".join(map(str, roots)) or "none"
        raise SharedInputChanged(
            f"{target} is not under a verified shared folder of this job ({verified}): "
            "set verification: SignedManifest on its spec.sharedStorage entry"
        )
    name = target.relative_to(root).as_posix()
    try:
        manifest = (root / MANIFEST_FILE).read_bytes()
        verify_signature(
            manifest, (root / SIGNATURE_FILE).read_bytes(), signers_from_json(env[INPUT_SIGNERS_ENV])
        )
        expected = parse(manifest)
    except (ManifestInvalid, OSError, KeyError, ValueError) as exc:
        raise SharedInputChanged(f"{root}: cannot trust its manifest: {exc}") from exc
    if target.is_symlink():
        raise SharedInputChanged(f"{target}: a symbolic link, which a manifest cannot vouch for")
    data = target.read_bytes()
    problem = check_file(expected, name, data)
    if problem is not None:
        raise SharedInputChanged(f"shared input file changed: {root}/{problem}")
    return data
