"""Who may act on a TrainingJob's pods: the decisions RBAC cannot make. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainguard.api.constants import LABEL_JOB, SIDECAR_CONTAINER
from trainguard.api.models import Tenant
from trainguard.policy.errors import FieldError


@dataclass(frozen=True)
class Refusal:
    reason: str  # CamelCase, for events and metrics
    message: str


def connect_refusal(
    pod_name: str,
    action: str,
    container: str | None,
    tenant_name: str,
    tenant: Tenant | None,
    user: str,
    groups: list[str],
) -> Refusal | None:
    """`kubectl exec` / `attach` (`action`) into a job's pod: only that job's tenant members, and
    never into its integrity sidecar. None when allowed."""
    if container == SIDECAR_CONTAINER:
        return Refusal(
            "SidecarExec",
            f"pods/{action} into {pod_name} -c {SIDECAR_CONTAINER}: the integrity sidecar holds the job's "
            "key, and nobody may run commands in it; read its findings in the job's status and events",
        )
    if tenant is None or not tenant.spec.members.includes(user, groups):
        return Refusal(
            "ForeignExec",
            f"pods/{action} into {pod_name}: only members of tenant {tenant_name!r} may {action} into its "
            "TrainingJobs' pods; ask a member of that tenant, or the platform team",
        )
    return None


def job_pod_refusal(pod: dict[str, Any], operation: str) -> FieldError:
    """Anyone but the operator creating, changing or deleting a job's pod."""
    verb = {"CREATE": "create", "DELETE": "delete"}.get(operation, "change")
    owner = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB, "?")
    return FieldError(
        "metadata.ownerReferences",
        "JobPodIsOperatorOwned",
        f"only trainguard may {verb} the pods of TrainingJob {owner!r}",
        "change or delete the TrainingJob instead; trainguard recreates its pods",
    )
