"""Kueue's objects for each Tenant, rendered from the Tenant alone (the one source of truth).

A tenant gets a ClusterQueue named after it (`tenant-<name>`): its GPU quota in one flavor, the
borrowing and lending limits, its cohort, the preemption policy, and a namespace selector that
matches only namespaces labelled as the tenant's (a label only trainguard may set). Each of its
namespaces gets one LocalQueue (`trainguard`) pointing at that ClusterQueue, and a ResourceQuota
on GPU requests at nominal + borrowing limit: a backstop that holds even if Kueue is bypassed.
Cohorts and ResourceFlavors are shared between tenants.

Pure: manifests out, no API calls. `handlers/tenants.py` applies them and reverts drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trainguard.api.constants import (
    API_VERSION,
    CLUSTER_QUEUE_PREFIX,
    GPU_CEILING_QUOTA,
    GPU_RESOURCE,
    KUEUE_API_VERSION,
    LABEL_MANAGED_BY,
    LABEL_TENANT,
    LOCAL_QUEUE,
    MANAGED_BY,
    TENANT_NAMESPACE_LABEL,
)
from trainguard.api.models import Tenant

Manifest = dict[str, Any]


def cluster_queue_name(tenant: str) -> str:
    return f"{CLUSTER_QUEUE_PREFIX}{tenant}"


def tenant_of_cluster_queue(name: str) -> str | None:
    return name[len(CLUSTER_QUEUE_PREFIX) :] if name.startswith(CLUSTER_QUEUE_PREFIX) else None


def _labels(tenant: str | None = None) -> dict[str, str]:
    labels = {LABEL_MANAGED_BY: MANAGED_BY}
    if tenant:
        labels[LABEL_TENANT] = tenant
    return labels


def _owner(tenant: Tenant, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Tenant",
        "name": tenant.metadata.name,
        "uid": tenant.metadata.uid,
        "controller": controller,
        "blockOwnerDeletion": False,
    }


def cluster_queue(tenant: Tenant) -> Manifest:
    name = tenant.metadata.name
    quota = tenant.spec.quota
    resource: dict[str, Any] = {"name": GPU_RESOURCE, "nominalQuota": str(quota.nominal_gpus)}
    spec: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {TENANT_NAMESPACE_LABEL: name}},
        "queueingStrategy": "BestEffortFIFO",
        "stopPolicy": "None",  # Hold or HoldAndDrain would starve the tenant: reverted as drift
        "resourceGroups": [
            {"coveredResources": [GPU_RESOURCE], "flavors": [{"name": quota.flavor, "resources": [resource]}]}
        ],
        # A tenant takes back what it lent (preempting the borrowers' newest, lowest-priority jobs
        # first) and orders its own jobs by priority; it never preempts to borrow.
        "preemption": {
            "reclaimWithinCohort": "Any",
            "withinClusterQueue": "LowerPriority",
            "borrowWithinCohort": {"policy": "Never"},
        },
    }
    if quota.cohort:
        spec["cohortName"] = quota.cohort
        resource["borrowingLimit"] = str(quota.borrowing_limit_gpus)
        if quota.lending_limit_gpus is not None:
            resource["lendingLimit"] = str(quota.lending_limit_gpus)
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {
            "name": cluster_queue_name(name),
            "labels": _labels(name),
            "ownerReferences": [_owner(tenant)],
        },
        "spec": spec,
    }


def local_queue(tenant: Tenant, namespace: str) -> Manifest:
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "LocalQueue",
        "metadata": {
            "name": LOCAL_QUEUE,
            "namespace": namespace,
            "labels": _labels(tenant.metadata.name),
            "ownerReferences": [_owner(tenant)],
        },
        "spec": {"clusterQueue": cluster_queue_name(tenant.metadata.name), "stopPolicy": "None"},
    }


def gpu_ceiling(tenant: Tenant, namespace: str) -> Manifest:
    """The backstop: whatever creates pods in the namespace, their GPU requests stay under the
    tenant's ceiling (per namespace: a tenant of several namespaces has the ceiling in each)."""
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": GPU_CEILING_QUOTA,
            "namespace": namespace,
            "labels": _labels(tenant.metadata.name),
            "ownerReferences": [_owner(tenant)],
        },
        "spec": {"hard": {f"requests.{GPU_RESOURCE}": str(tenant.spec.quota.max_gpus)}},
    }


def cohorts(tenants: Iterable[Tenant]) -> list[Manifest]:
    """One Cohort per cohort name the tenants use. No owner reference: several tenants share it,
    and it holds no quota of its own, so one left when its last tenant goes costs nothing."""
    names = sorted({t.spec.quota.cohort for t in tenants if t.spec.quota.cohort})
    return [
        {
            "apiVersion": KUEUE_API_VERSION,
            "kind": "Cohort",
            "metadata": {"name": name, "labels": _labels()},
            "spec": {},
        }
        for name in names
    ]


def could_own(tenant: Tenant, kind: str, name: str, namespace: str | None) -> bool:
    """False when `tenant` surely renders no such object: a ClusterQueue named for another tenant,
    or a namespaced object outside its namespaces. Cheap, so that Kueue's status updates (one per
    admission, on queues of every tenant) are matched to their tenant without rendering them all."""
    if kind == "ClusterQueue":
        return tenant_of_cluster_queue(name) == tenant.metadata.name
    if namespace is not None:
        return namespace in tenant.spec.namespaces
    return True


def wanted_for(tenant: Tenant, kind: str, name: str, namespace: str | None) -> Manifest | None:
    """The manifest the tenant renders for one object (kind, name, namespace), if any."""
    for manifest in [*cohorts([tenant]), *tenant_objects(tenant)]:
        meta = manifest["metadata"]
        if manifest["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
            return manifest
    return None


def resource_flavors(flavors: Mapping[str, Mapping[str, str]]) -> list[Manifest]:
    """The GPU products the platform configured: flavor name -> the node labels that select them."""
    return [
        {
            "apiVersion": KUEUE_API_VERSION,
            "kind": "ResourceFlavor",
            "metadata": {"name": name, "labels": _labels()},
            "spec": {"nodeLabels": dict(labels)} if labels else {},
        }
        for name, labels in sorted(flavors.items())
    ]


def tenant_objects(tenant: Tenant) -> list[Manifest]:
    """Everything one tenant owns, in the order to apply it (queue before its local queues)."""
    out = [cluster_queue(tenant)]
    for namespace in tenant.spec.namespaces:
        out += [local_queue(tenant, namespace), gpu_ceiling(tenant, namespace)]
    return out


def drifted(wanted: Manifest, current: Manifest) -> bool:
    """Whether `current` differs from `wanted` in a field trainguard owns (its spec, labels and
    owners); fields the API server or Kueue default are compared only where `wanted` sets them."""
    if _subset_differs(wanted.get("spec", {}), current.get("spec", {})):
        return True
    meta, have = wanted["metadata"], current.get("metadata", {})
    if any((have.get("labels") or {}).get(k) != v for k, v in meta.get("labels", {}).items()):
        return True
    owners = {o["uid"] for o in meta.get("ownerReferences", [])}
    return owners != {o.get("uid") for o in have.get("ownerReferences") or []}


def _subset_differs(wanted: Any, current: Any) -> bool:
    if isinstance(wanted, dict):
        if not isinstance(current, dict):
            return True
        return any(_subset_differs(v, current.get(k)) for k, v in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(current, list) or len(wanted) != len(current):
            return True
        return any(_subset_differs(w, c) for w, c in zip(wanted, current, strict=True))
    return str(wanted) != str(current) if wanted is not None else current is not None
