"""Image verification under a tenant's trust: the tenant's signers, its registry credentials, a
time limit, the cache.

Shared by admission (which pins and validates) and the reconciler (which verifies once more
before the first pod: no way around admission).

Registry credentials: the pull Secret the tenant names (`spec.imagePullSecret`), read from the
namespace of the job (or pod) being verified, which is the Secret its pods pull with; for
registries that Secret does not list, the operator's own docker config file (the
`registry_auth_file` setting); else anonymous. A tenant's Secret is only ever read for that
tenant's namespaces, and verdicts are cached per credential identity (`signing/verifier.py`).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.api.images import parse
from trainguard.api.models import PinnedImage, Tenant
from trainguard.signing.auth import (
    Credential,
    CredentialsInvalid,
    Keychain,
    parse_docker_config,
    parse_pull_secret,
)
from trainguard.signing.cosign import Signer
from trainguard.signing.registry import RegistryClient
from trainguard.signing.verifier import ResultCache, VerificationFailed, VerifiedImage, Verifier


class SecretUnreadable(Exception):
    """The operator could not read a Secret (forbidden, API server down); names no value."""


# (namespace, name) -> the Secret as the API server returns it, None when it does not exist;
# raises SecretUnreadable. Wired to the operator's Kubernetes client by `context.py`.
SecretReader = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


@dataclass
class OperatorCredentials:
    """The operator's own docker config file, read again when it changes (a mounted Secret is
    updated in place)."""

    path: Path | None = None
    _loaded: tuple[tuple[int, int], dict[str, Credential]] | None = field(default=None, repr=False)

    def load(self) -> dict[str, Credential]:
        if self.path is None:
            return {}
        source = f"the operator's registry credentials file {self.path}"
        try:
            stat = os.stat(self.path)
            version = (stat.st_mtime_ns, stat.st_size)
            if self._loaded is not None and self._loaded[0] == version:
                return self._loaded[1]
            found = parse_docker_config(self.path.read_bytes(), source)
        except OSError as exc:
            raise VerificationFailed(
                "RegistryCredentialsUnreadable", f"{source} cannot be read: {exc.strerror}"
            ) from exc
        except CredentialsInvalid as exc:
            raise VerificationFailed("RegistryCredentialsUnreadable", str(exc)) from exc
        self._loaded = (version, found)
        return found


class TenantImages:
    """Verifies images against the signers a tenant trusts, with its registry credentials, in a
    thread, within `timeout` seconds."""

    def __init__(
        self,
        verifier: Verifier,
        timeout: float,
        read_secret: SecretReader | None = None,
        operator_credentials: OperatorCredentials | None = None,
    ) -> None:
        self.verifier = verifier
        self.timeout = timeout
        self.read_secret = read_secret
        self.operator_credentials = operator_credentials or OperatorCredentials()

    @classmethod
    def create(
        cls,
        plain_http: frozenset[str],
        cache_seconds: float,
        timeout: float,
        *,
        read_secret: SecretReader | None = None,
        auth_file: Path | None = None,
    ) -> TenantImages:
        client = RegistryClient(plain_http=plain_http, timeout=1.5)
        verifier = Verifier(client, ResultCache(ttl_seconds=cache_seconds))
        return cls(verifier, timeout, read_secret, OperatorCredentials(auth_file))

    async def keychain(self, tenant: Tenant, namespace: str) -> Keychain:
        """The credentials a job of `tenant` in `namespace` is verified (and its pods pull) with."""
        credentials = self.operator_credentials
        operator = await asyncio.to_thread(credentials.load) if credentials.path else {}
        secret_ref = tenant.spec.image_pull_secret
        if secret_ref is None:
            return Keychain(operator=operator)
        source = f"Secret {namespace}/{secret_ref.name}"
        if self.read_secret is None:
            raise VerificationFailed("PullSecretUnreadable", f"this operator cannot read {source}")
        try:
            secret = await self.read_secret(namespace, secret_ref.name)
        except SecretUnreadable as exc:
            raise VerificationFailed(
                "PullSecretUnreadable",
                f"the operator cannot read {source}, tenant {tenant.metadata.name}'s "
                f"image pull Secret: {exc}",
            ) from exc
        if secret is None:
            raise VerificationFailed(
                "PullSecretMissing",
                f"{source} does not exist: tenant {tenant.metadata.name} names {secret_ref.name!r} as its "
                f"image pull Secret (spec.imagePullSecret), which every namespace of the tenant must hold",
            )
        try:
            found = parse_pull_secret(secret, source)
        except CredentialsInvalid as exc:
            raise VerificationFailed("PullSecretInvalid", str(exc)) from exc
        return Keychain(tenant=found, operator=operator, tenant_source=source)

    async def verify(self, image: str, tenant: Tenant, namespace: str) -> VerifiedImage:
        """Verify `image` for a job (or pod) of `tenant` in `namespace`."""
        signers = _signers(tenant)
        try:
            return await asyncio.wait_for(self._verify(image, signers, tenant, namespace), self.timeout)
        except TimeoutError as exc:
            raise VerificationFailed(
                "CannotVerify",
                f"cannot verify {image}: the registry did not answer within {self.timeout:.0f} s",
            ) from exc

    async def _verify(
        self, image: str, signers: list[Signer], tenant: Tenant, namespace: str
    ) -> VerifiedImage:
        keychain = await self.keychain(tenant, namespace)
        known = self.verifier.from_memory(image, signers, keychain)
        if known is not None:  # a warm cache: no registry, so no thread either
            return known
        return await asyncio.to_thread(self.verifier.verify, image, signers, keychain)

    async def verify_pinned(self, image: str, tenant: Tenant, namespace: str) -> PinnedImage:
        """The reconciler's check: `image` must already be pinned to a digest, and verify."""
        if "@" not in image:
            raise VerificationFailed("NotPinned", f"{image} was not pinned to a digest at admission")
        try:
            ref = parse(image)
            # By digest alone: the tag was resolved, and matched, when admission pinned it; a digest
            # names immutable content, so a warm cache answers without the registry.
            verified = await self.verify(f"{ref.name}@{ref.digest}", tenant, namespace)
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
