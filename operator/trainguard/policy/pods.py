"""The pod guard: what a Pod not created by trainguard may not do in a tenant namespace. Pure.

Covers every container list (containers, initContainers, ephemeralContainers) so that `kubectl
debug` and init containers are no way around the rules. Image signatures are checked by the
handler (they need the registry); this module lists which images need checking.
"""

from __future__ import annotations

from typing import Any

from trainguard.api.constants import GPU_RESOURCE, LABEL_MANAGED_BY, MANAGED_BY
from trainguard.policy.errors import FieldError

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
# Identities that manage pods for the cluster itself: trusted like the operator.
SYSTEM_GROUPS = frozenset({"system:masters"})
SYSTEM_USERS = frozenset({"system:kube-controller-manager", "system:kube-scheduler"})
SYSTEM_ACCOUNT_PREFIX = "system:serviceaccount:kube-system:"


def is_exempt(user: str, groups: list[str], operator_users: frozenset[str]) -> bool:
    """The operator, cluster admins and kube-system controllers (GC, namespace deletion)."""
    return (
        user in operator_users
        or user in SYSTEM_USERS
        or user.startswith(SYSTEM_ACCOUNT_PREFIX)
        or any(g in SYSTEM_GROUPS for g in groups)
    )


def is_job_pod(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    owned = any(
        o.get("kind") == "TrainingJob" and o.get("controller") for o in meta.get("ownerReferences") or []
    )
    return owned and (meta.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY


def containers(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field path, container) for every container of every kind."""
    spec = pod.get("spec") or {}
    return [(f"spec.{kind}[{i}]", c) for kind in CONTAINER_LISTS for i, c in enumerate(spec.get(kind) or [])]


def validate_foreign_pod(pod: dict[str, Any], shared_claims: dict[str, str]) -> list[FieldError]:
    """Every rule a pod not created by trainguard breaks; `shared_claims` maps claim -> storage name."""
    spec = pod.get("spec") or {}
    errors: list[FieldError] = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            errors.append(
                FieldError(
                    f"spec.{field}",
                    "HostNamespace",
                    "host namespaces are not allowed",
                    f"remove spec.{field}",
                )
            )
    for i, volume in enumerate(spec.get("volumes") or []):
        if "hostPath" in volume:
            errors.append(
                FieldError(
                    f"spec.volumes[{i}].hostPath",
                    "HostPath",
                    "hostPath volumes are not allowed",
                    "use an emptyDir or a PersistentVolumeClaim",
                )
            )
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim in shared_claims:
            errors.append(
                FieldError(
                    f"spec.volumes[{i}].persistentVolumeClaim",
                    "SharedStorageOutsideJob",
                    f"claim {claim!r} is the tenant's shared storage {shared_claims[claim]!r}",
                    "read shared storage from a TrainingJob (spec.sharedStorage), which mounts it read-only",
                )
            )
    for path, container in containers(pod):
        resources = container.get("resources") or {}
        wants = [resources.get(k, {}).get(GPU_RESOURCE) for k in ("limits", "requests")]
        if any(w not in (None, "0", 0) for w in wants):
            errors.append(
                FieldError(
                    f"{path}.resources",
                    "GPUOutsideJob",
                    "only TrainingJobs may use GPUs in a tenant namespace",
                    "run the workload as a TrainingJob so that quota, signing and integrity apply",
                )
            )
        for j, env in enumerate(container.get("env") or []):
            if str(env.get("name", "")).startswith("NVIDIA_"):
                errors.append(
                    FieldError(
                        f"{path}.env[{j}]",
                        "GPUOutsideJob",
                        f"{env.get('name')} asks the NVIDIA runtime for GPUs outside the device plugin",
                        "remove the variable; run GPU work as a TrainingJob",
                    )
                )
        security = container.get("securityContext") or {}
        if security.get("privileged"):
            errors.append(
                FieldError(
                    f"{path}.securityContext.privileged",
                    "Privileged",
                    "privileged containers are not allowed",
                    "remove privileged: true",
                )
            )
    return errors


def images(pod: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path of .image, image) of every container, for signature checks."""
    return [(f"{path}.image", c.get("image", "")) for path, c in containers(pod)]
