"""Deciding whether an image may run: resolve it to a digest and find a trusted signature.

Results are cached by (digest, trusted signers, credential identity) for a bounded time: a digest
names immutable content, and a verdict reached with one tenant's registry credentials is never
reused for a request that would read the registry with other credentials (or none): that request
must show the registry it may read the image itself.

A signature's payload or bundle is a blob named by its digest, so it is read once (`BlobCache`);
which signatures an image has is read anew with every verdict the result cache does not hold.

A tag can move, so its resolution is kept only a few seconds (`TagCache`, 10 s): a burst of
creates of one tag asks the registry once, and a tag moved in the registry is followed within
those seconds. What runs is never in doubt: the job is pinned to the digest the tag named, and
that digest's signature is what was verified. A tag given with a digest (`name:tag@sha256:…`,
what admission pins a job to) is checked against the same resolution, so the validating
webhook's check of the final object, moments after the mutating webhook pinned it, asks the
registry nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from trainguard.api.images import ImageReference, InvalidReference, parse
from trainguard.signing import cosign
from trainguard.signing.auth import Credential, Keychain, identity_of
from trainguard.signing.registry import RegistryAuthError, RegistryClient, RegistryError


@dataclass(frozen=True)
class VerifiedImage:
    reference: ImageReference
    digest: str
    signer: str
    cached: bool = False  # answered from the result cache, without the registry

    @property
    def pinned(self) -> str:
        return self.reference.pinned(self.digest)


class VerificationFailed(Exception):
    """Why an image may not run. `reason` is a CamelCase code for events and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


K = TypeVar("K")
V = TypeVar("V")


@dataclass
class ExpiringCache(Generic[K, V]):
    """A bounded map whose entries expire `ttl_seconds` after they were put; thread-safe."""

    ttl_seconds: float = 300.0
    max_entries: int = 4096
    clock: Callable[[], float] = time.monotonic
    _entries: dict[K, tuple[float, V]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] < self.clock():
                self._entries.pop(key, None)
                return None
            return hit[1]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (self.clock() + self.ttl_seconds, value)


class ResultCache(ExpiringCache[tuple[str, str, str], str]):
    """(digest, trusted signers' key, credential identity) -> the signer that verified it."""


@dataclass
class TagCache(ExpiringCache[tuple[str, str], str]):
    """Recent tag resolutions: (credential identity, `registry/repository:tag`) -> digest."""

    ttl_seconds: float = 10.0


@dataclass
class BlobCache(ExpiringCache[tuple[str, str, str], bytes]):
    """Signature payloads and bundles already read: (credential identity, `registry/repository`,
    blob digest) -> its bytes. A blob is named by the digest of its content (the client checks
    it), so what is kept can never be stale; which signatures an image has can change, and is
    read anew whenever a verdict is (its signature manifest). Bounded: small blobs only."""

    ttl_seconds: float = 3600.0
    max_entries: int = 1024
    max_blob_bytes: int = 16 * 1024  # 1,024 entries: at most 16 MiB

    def put(self, key: tuple[str, str, str], value: bytes) -> None:
        if len(value) <= self.max_blob_bytes:  # a larger blob is read again when needed
            super().put(key, value)


def signers_key(signers: list[cosign.Signer]) -> str:
    """One key for a set of trusted signers (their names and public keys, in any order)."""
    return hashlib.sha256(b"\0\0".join(sorted(s.identity for s in signers))).hexdigest()


@dataclass
class Verifier:
    client: RegistryClient
    cache: ResultCache = field(default_factory=ResultCache)
    tags: TagCache = field(default_factory=TagCache)
    blobs: BlobCache = field(default_factory=BlobCache)

    def from_memory(
        self, image: str, signers: list[cosign.Signer], keychain: Keychain | None = None
    ) -> VerifiedImage | None:
        """The verdict `verify` would give from its caches alone (no I/O, so the event loop may
        ask it without a thread hop); None when answering needs the registry (or to refuse)."""
        try:
            ref = parse(image)
        except InvalidReference:
            return None
        if not signers:
            return None
        credential = keychain.for_registry(ref.registry) if keychain is not None else None
        identity = identity_of(credential)
        if ref.tag:
            digest = self.tags.get((identity, f"{ref.name}:{ref.tag}"))
            if digest is None or (ref.digest and ref.digest != digest):
                return None
        else:
            digest = ref.digest
        if not digest:
            return None
        signer = self.cache.get((digest, signers_key(signers), identity))
        return None if signer is None else VerifiedImage(ref, digest, signer, cached=True)

    def verify(
        self, image: str, signers: list[cosign.Signer], keychain: Keychain | None = None
    ) -> VerifiedImage:
        """Verify `image` under `signers`, reading its registry with the credential `keychain`
        holds for it (anonymously without one)."""
        try:
            ref = parse(image)
        except InvalidReference as exc:
            raise VerificationFailed("InvalidImageReference", str(exc)) from exc
        if not signers:
            raise VerificationFailed(
                "NoTrustedSigners", "the tenant trusts no signer, so no image can be verified"
            )
        known = self.from_memory(image, signers, keychain)  # a warm cache answers without the registry
        if known is not None:
            return known
        trust = signers_key(signers)
        credential = keychain.for_registry(ref.registry) if keychain is not None else None
        identity = identity_of(credential)
        try:
            digest = self._resolve(ref, credential)
            key = (digest, trust, identity)
            cached = self.cache.get(key)
            if cached is not None:
                return VerifiedImage(ref, digest, cached, cached=True)
            signer = self._find_signature(ref, digest, signers, credential)
        except RegistryAuthError as exc:
            raise VerificationFailed("RegistryAuthFailed", _auth_message(image, exc, keychain)) from exc
        except RegistryError as exc:
            raise VerificationFailed("CannotVerify", f"cannot verify {image}: {exc}") from exc
        self.cache.put(key, signer)
        return VerifiedImage(ref, digest, signer)

    def _resolve(self, ref: ImageReference, credential: Credential | None) -> str:
        tag = (identity_of(credential), f"{ref.name}:{ref.tag}" if ref.tag else "")
        if ref.tag and ref.digest:
            if self.tags.get(tag) == ref.digest:
                return ref.digest  # resolved a moment ago (by the same admission request's pinning)
            fetched = self.client.manifest(ref.registry, ref.repository, ref.tag, credential)
            if fetched is None:
                raise VerificationFailed("ImageNotFound", f"tag {ref.tag} of {ref.name} does not exist")
            if fetched.digest != ref.digest:
                raise VerificationFailed(
                    "TagDigestMismatch",
                    f"{ref.name}:{ref.tag} points to {fetched.digest}, "
                    f"not to the {ref.digest} given after '@'",
                )
            self.tags.put(tag, ref.digest)
            return ref.digest
        if ref.tag and not ref.digest:
            recent = self.tags.get(tag)
            if recent is not None:  # this tag's resolution of the last few seconds
                return recent
        fetched = self.client.manifest(
            ref.registry, ref.repository, ref.digest or ref.tag or "latest", credential
        )
        if fetched is None:
            raise VerificationFailed("ImageNotFound", f"{ref} does not exist in its registry")
        if ref.tag:
            self.tags.put(tag, fetched.digest)
        return fetched.digest

    def _layers(self, body: bytes, what: str) -> list[dict[str, Any]]:
        """The first layers of a signature manifest; a manifest that is not JSON is refused."""
        try:
            layers = json.loads(body).get("layers", [])
        except (ValueError, AttributeError) as exc:
            raise VerificationFailed(
                "MalformedSignature", f"the {what} manifest is not a JSON manifest"
            ) from exc
        return [layer for layer in layers[: self.client.max_descriptors] if isinstance(layer, dict)]

    def _payload(
        self,
        ref: ImageReference,
        layer: dict[str, Any],
        what: str,
        problems: list[str],
        credential: Credential | None,
    ) -> bytes | None:
        """The layer's blob, unless its declared size is over the bound (then noted in `problems`)."""
        if int(layer.get("size", 0)) > cosign.MAX_PAYLOAD_BYTES:
            problems.append(f"a {what} of {layer.get('size')} bytes is too large")
            return None
        key = (identity_of(credential), ref.name, str(layer["digest"]))
        cached = self.blobs.get(key)
        if cached is not None:
            return cached
        blob = self.client.blob(ref.registry, ref.repository, layer["digest"], credential)
        self.blobs.put(key, blob)
        return blob

    def _find_signature(
        self, ref: ImageReference, digest: str, signers: list[cosign.Signer], credential: Credential | None
    ) -> str:
        problems: list[str] = []
        classic = self.client.manifest(
            ref.registry, ref.repository, digest.replace(":", "-") + ".sig", credential
        )
        for layer in self._layers(classic.body, ".sig") if classic else []:
            annotation = (layer.get("annotations") or {}).get(cosign.SIGNATURE_ANNOTATION)
            if not annotation or layer.get("mediaType") != cosign.SIMPLE_SIGNING_MEDIA_TYPE:
                continue
            payload = self._payload(ref, layer, "signature payload", problems, credential)
            if payload is None:
                continue
            try:
                return cosign.verify_simple_signing(payload, annotation, digest, signers).name
            except cosign.SignatureInvalid as exc:
                problems.append(str(exc))
        for descriptor in self.client.referrers(
            ref.registry, ref.repository, digest, cosign.BUNDLE_MEDIA_TYPE, credential
        ):
            manifest = self.client.manifest(ref.registry, ref.repository, descriptor["digest"], credential)
            for layer in self._layers(manifest.body, "bundle") if manifest else []:
                if layer.get("mediaType") != cosign.BUNDLE_MEDIA_TYPE:
                    continue
                bundle = self._payload(ref, layer, "signature bundle", problems, credential)
                if bundle is None:
                    continue
                try:
                    return cosign.verify_bundle(bundle, digest, signers).name
                except cosign.SignatureInvalid as exc:
                    problems.append(str(exc))
        if not problems:
            raise VerificationFailed("Unsigned", f"{ref.name}@{digest} has no cosign signature")
        unique = list(dict.fromkeys(problems))
        reason = "UntrustedSigner" if all("does not trust" in p for p in unique) else "InvalidSignature"
        raise VerificationFailed(reason, f"no trusted signature for {ref.name}@{digest}: {'; '.join(unique)}")


def _auth_message(image: str, exc: RegistryAuthError, keychain: Keychain | None) -> str:
    """Why the registry would not let the image be read, naming the credentials to fix (by where
    they live: a Secret, the operator's file), never their values."""
    message = f"cannot verify {image}: {exc}"
    if exc.credential is not None:
        return f"{message}: the credentials for {exc.registry} there cannot read {exc.repository}"
    if keychain is not None and keychain.tenant_source:
        return f"{message}: {keychain.tenant_source} has no credentials for {exc.registry}"
    return f"{message}: the tenant names no pull Secret (spec.imagePullSecret)"
