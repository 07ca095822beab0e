"""Pure builder of the RoleBinding that lets a tenant's members use their namespaces."""

from __future__ import annotations

from typing import Any

from trainguard.api.constants import API_VERSION, LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, MEMBERS_BINDING
from trainguard.api.models import Tenant

Manifest = dict[str, Any]


def build_members_binding(tenant: Tenant, namespace: str, role: str) -> Manifest:
    """Bind the tenant's members and admins to the researcher ClusterRole in one of its namespaces
    (what each may do to a given job is then the admission webhook's decision)."""
    users = dict.fromkeys([*tenant.spec.members.users, *tenant.spec.admins.users])
    groups = dict.fromkeys([*tenant.spec.members.groups, *tenant.spec.admins.groups])
    subjects = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u} for u in users]
    subjects += [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g} for g in groups]
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
