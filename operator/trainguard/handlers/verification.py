"""Admission settings and image verification shared by the admission webhooks and the job
reconciler (which verifies once more before the first pod: no way around admission)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from trainguard.api.models import Tenant
from trainguard.kube import client as kube
from trainguard.signing.cosign import Signer
from trainguard.signing.registry import RegistryClient
from trainguard.signing.verifier import ResultCache, VerificationFailed, VerifiedImage, Verifier
from trainguard.workload import webhooks as hooks


@dataclass
class AdmissionConfig:
    """Set by `trainguard run` before the operator starts."""

    port: int = 0  # 0: this instance serves no webhooks (another one admits)
    listen: str = "127.0.0.1"
    host: str = "127.0.0.1"  # the address the API server calls
    service: str = ""  # "namespace/name" of the Service in front of the webhooks (in a cluster)
    cert_dir: Path | None = None
    config_name: str = "trainguard"
    plain_http_registries: frozenset[str] = frozenset()
    operator_users: frozenset[str] = frozenset()
    verify_timeout: float = 5.0  # well under the webhooks' 10 s
    cache_seconds: float = 300.0  # how long a (digest, trusted signers) verdict is reused
    verifier: Verifier = field(default_factory=lambda: Verifier(RegistryClient()))


CONFIG = AdmissionConfig()


def configure(config: AdmissionConfig) -> None:
    global CONFIG
    client = RegistryClient(plain_http=config.plain_http_registries, timeout=1.5)
    config.verifier = Verifier(client, ResultCache(ttl_seconds=config.cache_seconds))
    CONFIG = config


# Tenants as last seen by the tenant watch; admission reads them here instead of calling the API
# server on every request. A tenant not (yet) seen is read from the API server.
TENANTS: dict[str, Tenant] = {}


def remember_tenant(tenant: Tenant) -> None:
    TENANTS[tenant.metadata.name] = tenant


def forget_tenant(name: str) -> None:
    TENANTS.pop(name, None)


async def load_tenant(name: str) -> Tenant | None:
    known = TENANTS.get(name)
    if known is not None:
        return known
    raw = await kube.get_tenant(name)
    return Tenant.model_validate(raw) if raw else None


async def tenant_of_namespace(namespace: str) -> Tenant | None:
    ns = await kube.get_namespace(namespace)
    name = ((ns or {}).get("metadata", {}).get("labels") or {}).get(hooks.TENANT_NAMESPACE_LABEL)
    return await load_tenant(name) if name else None


def _signers(tenant: Tenant) -> list[Signer]:
    try:
        return [Signer.from_pem(s.name, s.public_key) for s in tenant.spec.trusted_signers]
    except ValueError as exc:
        raise VerificationFailed("InvalidTrustedSigner", f"tenant {tenant.metadata.name}: {exc}") from exc


async def verify_image(image: str, tenant: Tenant) -> VerifiedImage:
    signers = _signers(tenant)
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(CONFIG.verifier.verify, image, signers), CONFIG.verify_timeout
        )
    except TimeoutError as exc:
        raise VerificationFailed(
            "CannotVerify",
            f"cannot verify {image}: the registry did not answer within {CONFIG.verify_timeout:.0f} s",
        ) from exc
