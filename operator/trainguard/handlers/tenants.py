"""Thin kopf handlers for Tenants: the operator's indexes of tenants and of tenant namespaces,
and the members' researcher role in each of a tenant's namespaces."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from trainguard.api.constants import GROUP, TENANT_NAMESPACE_LABEL, VERSION
from trainguard.api.models import Tenant
from trainguard.context import OperatorContext, context_of, tenants_index
from trainguard.kube import client as kube
from trainguard.policy.namespaces import tenant_namespace_labels
from trainguard.tenancy.bindings import build_members_binding

log = logging.getLogger("trainguard.tenants")


@kopf.on.startup()
async def build_context(memo: kopf.Memo, **_: Any) -> None:
    context_of(memo)


@kopf.index(GROUP, VERSION, "tenants")
def tenants_by_name(name: str, body: kopf.Body, **_: Any) -> dict[str, Tenant] | None:
    """Every Tenant, parsed once: admission and the reconciler read tenants here."""
    try:
        return {name: Tenant.model_validate(dict(body))}
    except ValidationError as exc:  # the CRD schema normally prevents this
        log.warning("tenant %s does not parse and is ignored: %s", name, exc)
        return None


@kopf.index("", "v1", "namespaces", labels={TENANT_NAMESPACE_LABEL: kopf.PRESENT})
def tenant_namespaces(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, str]:
    """namespace -> the tenant its label names (the pod guard's webhooks select by that label)."""
    return {name: labels[TENANT_NAMESPACE_LABEL]}


@kopf.on.event(GROUP, VERSION, "tenants")
async def tenant_changed(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        return  # the garbage collector removes the bindings the tenant owns
    tenant = Tenant.model_validate(dict(body))
    for namespace in tenant.spec.namespaces:
        await _set_up_namespace(context_of(memo), tenant, namespace)


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(
    type: str, name: str, labels: Mapping[str, str], memo: kopf.Memo, **kwargs: Any
) -> None:
    """A tenant's namespace created after the tenant gets its labels and binding too, and one
    whose labels were changed past the namespace guard (by a webhook outage, say) gets them back."""
    if type == "DELETED":
        return
    for tenants in tenants_index(kwargs).values():
        for tenant in tenants:
            if name not in tenant.spec.namespaces:
                continue
            wanted = tenant_namespace_labels(tenant.metadata.name)
            if type in (None, "ADDED") or any(labels.get(k) != v for k, v in wanted.items()):
                await _set_up_namespace(context_of(memo), tenant, name)


async def _set_up_namespace(context: OperatorContext, tenant: Tenant, namespace: str) -> None:
    """Label the namespace (its tenant, which scopes the pod guard's webhooks, and Pod Security
    enforcement) and bind the tenant's members."""
    binding = build_members_binding(tenant, namespace, context.settings.researcher_role)
    current = await kube.get_namespace(namespace)
    if current is None:
        log.info("namespace %s of tenant %s does not exist yet", namespace, tenant.metadata.name)
        return
    labels = current["metadata"].get("labels") or {}
    wanted = tenant_namespace_labels(tenant.metadata.name)
    if any(labels.get(k) != v for k, v in wanted.items()):
        # An update the namespace guard sees: only this operator may make it.
        await kube.label_namespace(namespace, dict(wanted))
    await kube.apply_role_binding(binding)
