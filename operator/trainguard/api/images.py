"""Image references as written in `spec.image`: `registry/repo[:tag][@sha256:digest]`. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


class InvalidReference(ValueError):
    """The image reference is malformed; the message says how to write it."""


@dataclass(frozen=True)
class ImageReference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def pinned(self, digest: str) -> str:
        """The reference that runs exactly `digest` (the tag kept for humans)."""
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.name}{tag}@{digest}"

    def __str__(self) -> str:
        return self.pinned(self.digest) if self.digest else f"{self.name}:{self.tag or 'latest'}"


def parse(reference: str) -> ImageReference:
    """Parse `reference`; a registry host is required (trainguard never guesses Docker Hub)."""
    ref = reference.strip()
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise InvalidReference(f"digest {digest!r} is not sha256:<64 hex digits>")
    host, _, rest = ref.partition("/")
    if not rest or not ("." in host or ":" in host or host == "localhost"):
        raise InvalidReference(
            f"{reference!r} names no registry; write the full reference, "
            "e.g. registry.example.com/team/trainer:v1"
        )
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise InvalidReference(f"tag {tag!r} is not a valid tag")
    if not _REPO_RE.match(rest):
        raise InvalidReference(
            f"repository {rest!r} is not a valid repository name (lower case, digits, . _ - /)"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(host, rest, tag, digest)
