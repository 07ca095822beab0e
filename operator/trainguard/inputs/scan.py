"""Reads a shared folder into the entries a manifest lists."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from trainguard.integrity.inputs import (
    MANIFEST_DIR,
    MANIFEST_FILE,
    SIGN_COMMAND,
    SIGNATURE_FILE,
    FileEntry,
    ManifestInvalid,
    parse,
)


def hash_file(path: Path) -> FileEntry:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        size = f.tell()
    return FileEntry(digest.hexdigest(), size)


def scan(root: Path) -> tuple[dict[str, FileEntry], dict[str, str]]:
    """Every regular file under `root` by relative name (its `.trainguard/` folder left out), and
    what cannot be checked, by name, with why: what cannot be read, and what a manifest cannot
    vouch for: symbolic links (their target can change without the link changing), devices,
    sockets and pipes. Links are never followed."""
    files: dict[str, FileEntry] = {}
    refused: dict[str, str] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError as exc:
            refused[prefix or "./"] = f"cannot be listed ({exc.strerror}), so it cannot be checked"
            continue
        for entry in listed:
            name = f"{prefix}{entry.name}"
            if name == MANIFEST_DIR:
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    pending.append((Path(entry.path), name + "/"))
                elif stat.S_ISREG(mode):
                    files[name] = hash_file(Path(entry.path))
                else:
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                    refused[name] = f"{kind}, which a manifest cannot vouch for; replace it by a copy"
            except OSError as exc:
                refused[name] = f"cannot be read ({exc.strerror}), so it cannot be checked"
    return files, refused


def read_manifest(root: Path) -> tuple[bytes, bytes]:
    """The manifest's and its signature's bytes, from the folder's `.trainguard/`."""
    manifest, signature = root / MANIFEST_FILE, root / SIGNATURE_FILE
    for path in (manifest, signature):
        if path.is_symlink() or not path.is_file():
            raise ManifestInvalid(
                f"{path} is missing (or not a regular file): make it with `trainguard inputs manifest "
                f"{root}` and sign it with `{SIGN_COMMAND}` in that folder"
            )
    data = manifest.read_bytes()
    parse(data)  # a clear error before any signature check
    return data, signature.read_bytes()
