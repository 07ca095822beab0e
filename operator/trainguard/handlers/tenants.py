"""Thin kopf handlers for Tenants: members get the researcher role in the tenant's namespaces."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from trainguard.api.models import GROUP, VERSION, Tenant
from trainguard.kube import client as kube
from trainguard.workload.access import build_members_binding
from trainguard.workload.webhooks import TENANT_NAMESPACE_LABEL

log = logging.getLogger("trainguard.tenants")


def researcher_role() -> str:
    return os.environ.get("TRAINGUARD_RESEARCHER_ROLE", "trainguard-researcher")


@kopf.on.event(GROUP, VERSION, "tenants")
async def tenant_changed(type: str, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        return  # the garbage collector removes the bindings the tenant owns
    tenant = Tenant.model_validate(dict(body))
    for namespace in tenant.spec.namespaces:
        # The label scopes the pod guard's webhooks to tenant namespaces.
        await kube.label_namespace(namespace, {TENANT_NAMESPACE_LABEL: tenant.metadata.name})
        binding = build_members_binding(tenant, namespace, researcher_role())
        try:
            await kube.apply_role_binding(binding)
        except kube.KubeError as exc:
            if exc.status != 404:
                raise
            log.info("namespace %s of tenant %s does not exist yet", namespace, tenant.metadata.name)
