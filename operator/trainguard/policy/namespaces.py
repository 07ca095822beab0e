"""The labels trainguard keeps on each tenant namespace, and who may change them. Pure.

The tenant label scopes the pod guard's webhooks; the Pod Security Admission labels make the API
server itself refuse pods that could reach the node (privileged, host namespaces and paths,
root, added capabilities, no seccomp), whoever creates them: a second line under the pod guard,
and the first one for anything the guard does not see. trainguard's own job pods meet
`restricted` (tests/unit/test_pod_guard.py checks every variant the builders make).
"""

from __future__ import annotations

from collections.abc import Mapping

from trainguard.api.constants import TENANT_NAMESPACE_LABEL
from trainguard.policy.errors import FieldError

PSA_PREFIX = "pod-security.kubernetes.io"
# enforce refuses pods; warn tells `kubectl apply` of a Deployment or Job about its pod template
# (enforce only sees the pods, which its controller then fails to create); audit records it.
PSA_ENFORCE = f"{PSA_PREFIX}/enforce"
PSA_ENFORCE_VERSION = f"{PSA_PREFIX}/enforce-version"
PSA_WARN = f"{PSA_PREFIX}/warn"
PSA_WARN_VERSION = f"{PSA_PREFIX}/warn-version"
PSA_AUDIT = f"{PSA_PREFIX}/audit"
PSA_AUDIT_VERSION = f"{PSA_PREFIX}/audit-version"

PSA_LEVEL = "restricted"
PSA_VERSION = "latest"


def tenant_namespace_labels(tenant: str) -> dict[str, str]:
    """The labels trainguard keeps on each tenant namespace: the tenant label
    (api.constants.TENANT_NAMESPACE_LABEL) and Pod Security Admission enforcing `restricted`
    (latest), with warn and audit at the same level."""
    return {
        TENANT_NAMESPACE_LABEL: tenant,
        PSA_ENFORCE: PSA_LEVEL,
        PSA_ENFORCE_VERSION: PSA_VERSION,
        PSA_WARN: PSA_LEVEL,
        PSA_WARN_VERSION: PSA_VERSION,
        PSA_AUDIT: PSA_LEVEL,
        PSA_AUDIT_VERSION: PSA_VERSION,
    }


PROTECTED_LABELS = tuple(tenant_namespace_labels(""))


def protected_label_changes(
    old: Mapping[str, str], new: Mapping[str, str], tenant: str | None
) -> list[FieldError]:
    """Every change to a label in tenant_namespace_labels' keys (removed, or a value other than
    trainguard's) made by someone other than the operator: the caller asks only for those.

    `tenant` owns the namespace (a Tenant lists it), or None. A label left as it was is no change,
    even when it is not yet trainguard's value (the operator sets it), and setting trainguard's
    value is always allowed. In a namespace of no tenant trainguard keeps no labels, so only
    setting or changing the tenant label (claiming the namespace for a tenant) is refused.
    """
    expected = tenant_namespace_labels(tenant) if tenant is not None else {}
    keys = PROTECTED_LABELS if tenant is not None else (TENANT_NAMESPACE_LABEL,)
    errors: list[FieldError] = []
    for key in keys:
        before, after, wanted = old.get(key), new.get(key), expected.get(key)
        if after in (before, wanted):
            continue
        if tenant is None:
            if after is None:
                continue  # removing a stray tenant label from a namespace of no tenant
            message = f"{key} names the tenant that owns a namespace, and no Tenant lists this one"
        elif after is None:
            message = f"{key} is kept by trainguard for tenant {tenant!r} ({wanted!r}) and may not be removed"
        else:
            message = f"{key} is kept by trainguard for tenant {tenant!r}: {wanted!r}, not {after!r}"
        errors.append(
            FieldError(
                f"metadata.labels[{key}]",
                "ProtectedNamespaceLabel",
                message,
                "leave the label to trainguard; ask the platform team to change the Tenant instead",
            )
        )
    return errors
