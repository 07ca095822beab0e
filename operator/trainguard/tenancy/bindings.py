"""Pure builder of the RoleBinding that lets a tenant's members use their namespaces."""

from __future__ import annotations

from typing import Any

from trainguard.api.constants import API_VERSION, LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, MEMBERS_BINDING
from trainguard.api.models import Tenant

Manifest = dict[str, Any]


def build_members_binding(tenant: Tenant, namespace: str, role: str) -> Manifest:
    """Bind the tenant's users and groups to the researcher ClusterRole in one of its namespaces."""
    subjects = [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u}
        for u in tenant.spec.members.users
    ]
    subjects += [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}
        for g in tenant.spec.members.groups
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": MEMBERS_BINDING,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_TENANT: tenant.metadata.name},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Tenant",
                    "name": tenant.metadata.name,
                    "uid": tenant.metadata.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }
