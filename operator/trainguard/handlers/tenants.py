"""Thin kopf handlers for Tenants: members get the researcher role in the tenant's namespaces."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from trainguard.api.models import GROUP, VERSION, Tenant
from trainguard.handlers import verification
from trainguard.kube import client as kube
from trainguard.workload.access import build_members_binding
from trainguard.workload.webhooks import TENANT_NAMESPACE_LABEL

log = logging.getLogger("trainguard.tenants")


def researcher_role() -> str:
    return os.environ.get("TRAINGUARD_RESEARCHER_ROLE", "trainguard-researcher")


@kopf.on.event(GROUP, VERSION, "tenants")
async def tenant_changed(type: str, name: str, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        verification.forget_tenant(name)
        return  # the garbage collector removes the bindings the tenant owns
    tenant = Tenant.model_validate(dict(body))
    verification.remember_tenant(tenant)
    for namespace in tenant.spec.namespaces:
        await _set_up_namespace(tenant, namespace)


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(type: str, name: str, **_: Any) -> None:
    """A tenant's namespace created after the tenant gets its label and binding too."""
    if type in (None, "ADDED"):
        for raw in await kube.list_tenants():
            tenant = Tenant.model_validate(raw)
            if name in tenant.spec.namespaces:
                await _set_up_namespace(tenant, name)


async def _set_up_namespace(tenant: Tenant, namespace: str) -> None:
    """Label the namespace (it scopes the pod guard's webhooks) and bind the tenant's members."""
    try:
        await kube.label_namespace(namespace, {TENANT_NAMESPACE_LABEL: tenant.metadata.name})
        await kube.apply_role_binding(build_members_binding(tenant, namespace, researcher_role()))
    except kube.KubeError as exc:
        if exc.status != 404:
            raise
        log.info("namespace %s of tenant %s does not exist yet", namespace, tenant.metadata.name)
