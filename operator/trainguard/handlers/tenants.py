"""Thin kopf handlers for Tenants: the operator's indexes of tenants and of tenant namespaces,
the members' researcher role in each of a tenant's namespaces, and the tenant's Kueue objects
(rendered by `quota.render`), kept as rendered: a change by hand is reverted at once."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from trainguard import metrics
from trainguard.api.conditions import Condition, job_state
from trainguard.api.constants import (
    GPU_CEILING_QUOTA,
    GROUP,
    KUEUE_GROUP,
    KUEUE_VERSION,
    LOCAL_QUEUE,
    TENANT_NAMESPACE_LABEL,
    VERSION,
)
from trainguard.api.models import Tenant
from trainguard.context import OperatorContext, context_of, tenants_index
from trainguard.kube import client as kube
from trainguard.policy.namespaces import tenant_namespace_labels
from trainguard.quota import render
from trainguard.tenancy.bindings import build_members_binding

log = logging.getLogger("trainguard.tenants")


@kopf.on.startup()
async def build_context(memo: kopf.Memo, **_: Any) -> None:
    context_of(memo)


@kopf.index(GROUP, VERSION, "tenants")
async def tenants_by_name(name: str, body: kopf.Body, **_: Any) -> dict[str, Tenant] | None:
    """Every Tenant, parsed once: admission and the reconciler read tenants here."""
    try:
        return {name: Tenant.model_validate(dict(body))}
    except ValidationError as exc:  # the CRD schema normally prevents this
        log.warning("tenant %s does not parse and is ignored: %s", name, exc)
        return None


@kopf.index("", "v1", "namespaces", labels={TENANT_NAMESPACE_LABEL: kopf.PRESENT})
async def tenant_namespaces(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, str]:
    """namespace -> the tenant its label names (the pod guard's webhooks select by that label)."""
    return {name: labels[TENANT_NAMESPACE_LABEL]}


@kopf.index(GROUP, VERSION, "trainingjobs")
async def job_states(spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, str] | None:
    """tenant -> the state of each of its jobs (`job_state`), for `trainguard_jobs{tenant,state}`."""
    tenant = spec.get("tenant")
    if not isinstance(tenant, str):
        return None
    try:
        conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    except ValidationError:  # only the operator writes status; a job it cannot read counts as Pending
        conditions = []
    return {tenant: job_state(conditions)}


@kopf.timer(GROUP, VERSION, "tenants", interval=15.0, idle=0)
async def count_jobs(name: str, **kwargs: Any) -> None:
    """A tenant's jobs by state, for Prometheus: counted from the index at a scrape-like pace
    rather than on every job change."""
    states: Mapping[str, Iterable[str]] = kwargs["job_states"]
    metrics.jobs_by_state(name, Counter(states.get(name, ())))


@kopf.on.event(GROUP, VERSION, "tenants")
async def tenant_changed(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if type == "DELETED":
        return  # the garbage collector removes the bindings and Kueue objects the tenant owns
    tenant = Tenant.model_validate(dict(body))
    for namespace in tenant.spec.namespaces:
        await _set_up_namespace(context_of(memo), tenant, namespace)
    await _sync_quota(tenant)


@kopf.timer(GROUP, VERSION, "tenants", interval=60.0, initial_delay=30.0, idle=0)
async def tenant_resync(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Every minute, whatever events were missed: the tenant's Kueue objects as rendered."""
    await _sync_quota(Tenant.model_validate(dict(body)))


@kopf.on.startup()
async def resource_flavors(memo: kopf.Memo, **_: Any) -> None:
    """The GPU flavors the platform configured exist before any tenant's queue names them."""
    for flavor in render.resource_flavors(context_of(memo).settings.gpu_flavors):
        await _apply(flavor)


@kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues")
@kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "cohorts")
@kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "localqueues", field="metadata.name", value=LOCAL_QUEUE)
@kopf.on.event("", "v1", "resourcequotas", field="metadata.name", value=GPU_CEILING_QUOTA)
async def kueue_object_changed(
    type: str | None, body: kopf.Body, name: str, namespace: str | None, **kwargs: Any
) -> None:
    """A tenant's ClusterQueue, Cohort, LocalQueue or GPU ceiling changed or went: put it back as
    its Tenant renders it. Compared with the event's own body, so Kueue's status updates (every
    admission) cost no API call."""
    if type is None:
        return  # the initial listing: the tenants' own events sync everything
    kind = str(body.get("kind") or "")
    for tenant in _all_tenants(kwargs):
        if not render.could_own(tenant, kind, name, namespace):
            continue
        wanted = render.wanted_for(tenant, kind, name, namespace)
        if wanted is None:
            continue
        if type == "DELETED":
            await _apply(wanted)
        elif render.drifted(wanted, dict(body)):
            await _replace(wanted, dict(body))
        return


def _all_tenants(kwargs: Mapping[str, Any]) -> list[Tenant]:
    return [t for ts in list(tenants_index(kwargs).values()) for t in list(ts)]


async def _sync_quota(tenant: Tenant) -> None:
    """Create or bring back the tenant's Kueue objects and GPU ceilings, and its cohort."""
    existing = await asyncio.gather(*(kube.get_namespace(ns) for ns in tenant.spec.namespaces))
    present = {ns for ns, found in zip(tenant.spec.namespaces, existing, strict=True) if found}
    for manifest in [*render.cohorts([tenant]), *render.tenant_objects(tenant)]:
        namespace = manifest["metadata"].get("namespace")
        if namespace is not None and namespace not in present:
            continue  # set up when the namespace appears
        await _apply(manifest)


async def _apply(manifest: dict[str, Any]) -> None:
    kind, meta = manifest["kind"], manifest["metadata"]
    try:
        current = await kube.get_object(kind, meta["name"], meta.get("namespace"))
        if current is None:
            await kube.create_object(manifest)
        elif render.drifted(manifest, current):
            await _replace(manifest, current)
    except kube.KubeError as exc:
        if exc.status == 403 and "terminat" in str(exc):
            return  # the namespace is being deleted: nothing to queue there any more
        raise


async def _replace(manifest: dict[str, Any], current: dict[str, Any]) -> None:
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    await kube.replace_object(manifest, current)
    metrics.KUEUE_DRIFT_REVERTED.labels(kind=kind).inc()
    log.warning("%s %s changed by hand: put back as its Tenant renders it", kind, name)


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(
    type: str, name: str, labels: Mapping[str, str], memo: kopf.Memo, **kwargs: Any
) -> None:
    """A tenant's namespace created after the tenant gets its labels and binding too, and one
    whose labels were changed past the namespace guard (by a webhook outage, say) gets them back."""
    if type == "DELETED":
        return
    for tenants in list(tenants_index(kwargs).values()):
        for tenant in list(tenants):
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
    for manifest in (render.local_queue(tenant, namespace), render.gpu_ceiling(tenant, namespace)):
        await _apply(manifest)
