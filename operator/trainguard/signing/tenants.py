"""Image verification under a tenant's trust: the tenant's signers, a time limit, the cache.

Shared by admission (which pins and validates) and the reconciler (which verifies once more
before the first pod: no way around admission).
"""

from __future__ import annotations

import asyncio
import functools

from trainguard.api.images import parse
from trainguard.api.models import PinnedImage, Tenant
from trainguard.signing.cosign import Signer
from trainguard.signing.registry import RegistryClient
from trainguard.signing.verifier import ResultCache, VerificationFailed, VerifiedImage, Verifier


class TenantImages:
    """Verifies images against the signers a tenant trusts, in a thread, within `timeout` seconds."""

    def __init__(self, verifier: Verifier, timeout: float) -> None:
        self.verifier = verifier
        self.timeout = timeout

    @classmethod
    def create(cls, plain_http: frozenset[str], cache_seconds: float, timeout: float) -> TenantImages:
        client = RegistryClient(plain_http=plain_http, timeout=1.5)
        return cls(Verifier(client, ResultCache(ttl_seconds=cache_seconds)), timeout)

    async def verify(self, image: str, tenant: Tenant) -> VerifiedImage:
        signers = _signers(tenant)
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self.verifier.verify, image, signers), self.timeout
            )
        except TimeoutError as exc:
            raise VerificationFailed(
                "CannotVerify",
                f"cannot verify {image}: the registry did not answer within {self.timeout:.0f} s",
            ) from exc

    async def verify_pinned(self, image: str, tenant: Tenant) -> PinnedImage:
        """The reconciler's check: `image` must already be pinned to a digest, and verify."""
        if "@" not in image:
            raise VerificationFailed("NotPinned", f"{image} was not pinned to a digest at admission")
        try:
            ref = parse(image)
            # By digest alone: the tag was resolved, and matched, when admission pinned it; a digest
            # names immutable content, so a warm cache answers without the registry.
            verified = await self.verify(f"{ref.name}@{ref.digest}", tenant)
        except ValueError as exc:
            raise VerificationFailed("InvalidImageReference", str(exc)) from exc
        return PinnedImage(reference=image.split("@", 1)[0], digest=verified.digest, signer=verified.signer)


def _signers(tenant: Tenant) -> list[Signer]:
    try:
        return [_signer(s.name, s.public_key) for s in tenant.spec.trusted_signers]
    except ValueError as exc:
        raise VerificationFailed("InvalidTrustedSigner", f"tenant {tenant.metadata.name}: {exc}") from exc


@functools.lru_cache(maxsize=1024)
def _signer(name: str, pem: str) -> Signer:
    """A parsed public key, once per (name, PEM): parsing is most of a warm verification's CPU."""
    return Signer.from_pem(name, pem)
