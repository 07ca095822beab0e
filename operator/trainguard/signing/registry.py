"""A small, bounded OCI distribution client: manifests, blobs and referrers, nothing else.

Every response is size-capped and every request has a timeout; content is checked against the
digest that addressed it. Registries listed as plain-HTTP (a loopback test registry) are spoken
to over http; all others over https.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class RegistryError(Exception):
    """The registry could not be read (down, slow, too large, inconsistent)."""


@dataclass(frozen=True)
class Fetched:
    body: bytes
    digest: str


@dataclass
class RegistryClient:
    plain_http: frozenset[str] = field(default_factory=frozenset)
    timeout: float = 2.0
    max_manifest_bytes: int = 256 * 1024
    max_blob_bytes: int = 64 * 1024
    max_descriptors: int = 16

    def _url(self, registry: str, path: str) -> str:
        scheme = "http" if registry in self.plain_http else "https"
        return f"{scheme}://{registry}/v2/{path}"

    def _get(self, registry: str, path: str, accept: str, limit: int) -> tuple[bytes, dict[str, str]] | None:
        request = urllib.request.Request(self._url(registry, path), headers={"Accept": accept})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 - http(s) only
                body = resp.read(limit + 1)
                headers = {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RegistryError(f"registry {registry} answered {exc.code} for {path}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise RegistryError(
                f"registry {registry} cannot be reached: {getattr(exc, 'reason', exc)}"
            ) from exc
        if len(body) > limit:
            raise RegistryError(f"{path} on {registry} is larger than {limit} bytes")
        return body, headers

    def manifest(self, registry: str, repository: str, reference: str) -> Fetched | None:
        """The manifest at a tag or digest; None when absent. A digest reference is checked."""
        got = self._get(
            registry, f"{repository}/manifests/{reference}", MANIFEST_TYPES, self.max_manifest_bytes
        )
        if got is None:
            return None
        body, headers = got
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"registry {registry} served content for {reference} that hashes to {digest}")
        served = headers.get("docker-content-digest")
        if served and served != digest:
            raise RegistryError(
                f"registry {registry} claims digest {served} for content that hashes to {digest}"
            )
        return Fetched(body, digest)

    def blob(self, registry: str, repository: str, digest: str) -> bytes:
        got = self._get(registry, f"{repository}/blobs/{digest}", "*/*", self.max_blob_bytes)
        if got is None:
            raise RegistryError(f"blob {digest} is missing from {registry}/{repository}")
        body = got[0]
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError(f"blob {digest} on {registry} does not match its digest")
        return body

    def referrers(
        self, registry: str, repository: str, digest: str, artifact_type: str
    ) -> list[dict[str, Any]]:
        """Descriptors of artifacts attached to `digest`: the referrers API, else the tag fallback."""
        index: bytes | None = None
        try:
            got = self._get(
                registry,
                f"{repository}/referrers/{digest}",
                "application/vnd.oci.image.index.v1+json",
                self.max_manifest_bytes,
            )
            index = got[0] if got else None
        except RegistryError:
            index = None  # registries without the referrers API answer 400/405: use the tag schema
        if index is None:
            fallback = self.manifest(registry, repository, digest.replace(":", "-"))
            index = fallback.body if fallback else None
        if index is None:
            return []
        try:
            manifests = json.loads(index).get("manifests", [])
        except ValueError as exc:
            raise RegistryError(f"the referrers index for {digest} is not JSON") from exc
        found = [m for m in manifests if isinstance(m, dict) and m.get("artifactType") == artifact_type]
        return found[: self.max_descriptors]
