"""The pod guard: what a Pod not created by trainguard may do in a tenant namespace. Pure.

An allowlist, not a denylist: a volume type, projected source or capability that is not named
here is refused, so a new Kubernetes feature is closed until someone decides to open it. The
rules keep such pods away from GPUs, from the tenant's shared storage, from every TrainingJob's
own objects (claims, Secrets, service account, labels) and from root on the node.

Covers every container list (containers, initContainers, ephemeralContainers) so that `kubectl
debug` and init containers are no way around the rules, and applies to pods that controllers
(Deployments, batch Jobs) create as much as to pods a person creates. Image signatures are
checked by the handler (they need the registry); this module lists which images need checking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.api.constants import GROUP, LABEL_JOB_UID, LABEL_MANAGED_BY, MANAGED_BY
from trainguard.policy.errors import FieldError

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

# Label and annotation keys only trainguard sets (a job's identity, verification claims).
RESERVED_KEY_PREFIX = f"{GROUP}/"
# Every NVIDIA extended resource: whole GPUs, MIG slices, shared GPUs.
GPU_RESOURCE_PREFIX = "nvidia.com/"
# Variables trainguard sets in a job's containers, and those the NVIDIA runtime obeys.
NVIDIA_ENV_PREFIX = "NVIDIA_"
TRAINGUARD_ENV_PREFIX = "TRAINGUARD_"

ALLOWED_VOLUMES = ("configMap", "emptyDir", "downwardAPI", "secret", "persistentVolumeClaim", "projected")
ALLOWED_PROJECTIONS = ("serviceAccountToken", "configMap", "downwardAPI", "secret", "clusterTrustBundle")
NON_ROOT_FIX = (
    "set securityContext.runAsNonRoot: true and a non-zero securityContext.runAsUser (e.g. 65532), "
    "on the pod or on the container"
)


@dataclass(frozen=True)
class NamespaceView:
    """What the guard knows of the pod's namespace."""

    shared_claims: Mapping[str, str]  # claim name -> tenant shared-storage name
    job_claims: frozenset[str] = frozenset()  # claims that belong to a TrainingJob (e.g. "<job>-output")
    job_secrets: frozenset[str] = frozenset()  # Secrets that belong to a TrainingJob
    job_service_accounts: frozenset[str] = frozenset()  # "<job>-runner"


def orphans(objects: Iterable[Mapping[str, Any]], live_job_uids: Iterable[str]) -> list[Mapping[str, Any]]:
    """The objects whose job-uid label names no live TrainingJob (or that carry none): what a job
    leaves behind that no owner reference removes (its key Secret, its Kueue Workload)."""
    live = set(live_job_uids)
    return [o for o in objects if (o["metadata"].get("labels") or {}).get(LABEL_JOB_UID) not in live]


def job_uid_of(pod: Mapping[str, Any]) -> str | None:
    """The uid of the TrainingJob that controls `pod`, when trainguard made it; else None."""
    meta = pod.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGED_BY:
        return None
    return next(
        (
            str(o.get("uid"))
            for o in meta.get("ownerReferences") or []
            if o.get("kind") == "TrainingJob" and o.get("controller")
        ),
        None,
    )


def is_job_pod(pod: Mapping[str, Any]) -> bool:
    return job_uid_of(pod) is not None


def containers(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field path, container) for every container of every kind."""
    spec = pod.get("spec") or {}
    return [(f"spec.{kind}[{i}]", c) for kind in CONTAINER_LISTS for i, c in enumerate(spec.get(kind) or [])]


def images(pod: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path of .image, image) of every container, for signature checks."""
    return [(f"{path}.image", c.get("image", "")) for path, c in containers(pod)]


def only_metadata_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """An UPDATE that changes nothing the guard judges: the spec, the labels and the annotations
    under trainguard.dev/ are all equal. Finalizers, owner references (the garbage collector
    removes them), other annotations, managedFields and resourceVersion may differ."""
    if (old.get("spec") or {}) != (new.get("spec") or {}):
        return False
    old_meta, new_meta = old.get("metadata") or {}, new.get("metadata") or {}
    if (old_meta.get("labels") or {}) != (new_meta.get("labels") or {}):
        return False
    return _reserved_keys(old_meta.get("annotations")) == _reserved_keys(new_meta.get("annotations"))


def _reserved_keys(values: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (values or {}).items() if k.startswith(RESERVED_KEY_PREFIX)}


def validate_foreign_pod(pod: dict[str, Any], namespace: NamespaceView) -> list[FieldError]:
    """Every rule a pod not created by trainguard (`is_job_pod` false) breaks, all at once."""
    spec = pod.get("spec") or {}
    errors = _metadata_errors(pod.get("metadata") or {})
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
    # serviceAccount is the deprecated alias of serviceAccountName; either names the identity.
    for field in ("serviceAccountName", "serviceAccount"):
        account = spec.get(field)
        if account and account in namespace.job_service_accounts:
            errors.append(
                FieldError(
                    f"spec.{field}",
                    "JobServiceAccount",
                    f"{account!r} is the service account of a TrainingJob: a pod running as it could "
                    "mint tokens of that job's identity",
                    f"remove spec.{field} (the namespace's default account) or use a service account "
                    "of your own",
                )
            )
    errors += _gpu_route_errors(spec)
    pod_security = spec.get("securityContext") or {}
    if _is_root(pod_security.get("runAsUser")):
        errors.append(
            FieldError(
                "spec.securityContext.runAsUser",
                "RunAsRoot",
                "runAsUser: 0 runs the pod's containers as root",
                NON_ROOT_FIX,
            )
        )
    for i, volume in enumerate(spec.get("volumes") or []):
        errors += _volume_errors(f"spec.volumes[{i}]", volume, namespace)
    for path, container in containers(pod):
        errors += _container_errors(path, container, pod_security, namespace)
    return errors


def _gpu_route_errors(spec: dict[str, Any]) -> list[FieldError]:
    """Ways to a GPU node or device past the device plugin's `nvidia.com/*` resources."""
    errors: list[FieldError] = []
    fix = "run GPU work as a TrainingJob, which trainguard places on GPU nodes itself"
    if spec.get("nodeName"):
        errors.append(
            FieldError(
                "spec.nodeName",
                "GPUOutsideJob",
                "spec.nodeName places the pod past the scheduler, GPU nodes included",
                f"remove spec.nodeName; {fix}",
            )
        )
    for i, toleration in enumerate(spec.get("tolerations") or []):
        if str(toleration.get("key", "")).startswith(GPU_RESOURCE_PREFIX) or (
            toleration.get("operator") == "Exists" and not toleration.get("key")
        ):
            errors.append(
                FieldError(
                    f"spec.tolerations[{i}]",
                    "GPUOutsideJob",
                    "the toleration lets the pod onto GPU nodes, which keep their taint for TrainingJobs",
                    f"remove the toleration; {fix}",
                )
            )
    if spec.get("resourceClaims"):
        errors.append(
            FieldError(
                "spec.resourceClaims",
                "GPUOutsideJob",
                "dynamic resource claims can hand the pod devices past the GPU quota",
                f"remove spec.resourceClaims; {fix}",
            )
        )
    return errors


# --------------------------------------------------------------------------- metadata


def _metadata_errors(meta: dict[str, Any]) -> list[FieldError]:
    errors = [
        FieldError(
            f"metadata.labels[{key}]",
            "ReservedLabel",
            f"labels under {RESERVED_KEY_PREFIX} are trainguard's: a pod wearing a job's labels joins "
            "that job's Service, NetworkPolicy and gang",
            "remove the label",
        )
        for key in meta.get("labels") or {}
        if key.startswith(RESERVED_KEY_PREFIX)
    ]
    errors += [
        FieldError(
            f"metadata.annotations[{key}]",
            "ReservedAnnotation",
            f"annotations under {RESERVED_KEY_PREFIX} are trainguard's (verification and integrity "
            "claims): no other pod may make them",
            "remove the annotation",
        )
        for key in meta.get("annotations") or {}
        if key.startswith(RESERVED_KEY_PREFIX)
    ]
    return errors


# --------------------------------------------------------------------------- volumes


def _volume_errors(path: str, volume: dict[str, Any], namespace: NamespaceView) -> list[FieldError]:
    errors: list[FieldError] = []
    # A volume has exactly one source (the API server defaults an empty one to emptyDir).
    for kind in (k for k in volume if k != "name"):
        if kind not in ALLOWED_VOLUMES:
            errors.append(
                FieldError(
                    f"{path}.{kind}",
                    "VolumeTypeNotAllowed",
                    f"{kind} volumes are not allowed in a tenant namespace outside a TrainingJob",
                    f"use one of these volume types instead: {', '.join(ALLOWED_VOLUMES)}; for storage, "
                    "a claim of your own",
                )
            )
    source = volume.get("secret") or {}
    if source.get("secretName") in namespace.job_secrets:
        errors.append(_job_secret(f"{path}.secret.secretName", source["secretName"]))
    claim = str((volume.get("persistentVolumeClaim") or {}).get("claimName", ""))
    if claim in namespace.shared_claims:
        errors.append(
            FieldError(
                f"{path}.persistentVolumeClaim",
                "SharedStorageOutsideJob",
                f"claim {claim!r} is the tenant's shared storage {namespace.shared_claims[claim]!r}",
                "read shared storage from a TrainingJob (spec.sharedStorage), which mounts it read-only",
            )
        )
    elif claim in namespace.job_claims:
        errors.append(
            FieldError(
                f"{path}.persistentVolumeClaim",
                "JobClaimOutsideJob",
                f"claim {claim!r} belongs to a TrainingJob: its outputs and checkpoints are that job's "
                "alone, and only its own pods mount them",
                "use a claim of your own; to share a job's results, ask the platform team to publish "
                "them as the tenant's shared storage",
            )
        )
    for j, projection in enumerate((volume.get("projected") or {}).get("sources") or []):
        source_path = f"{path}.projected.sources[{j}]"
        for kind in projection:
            if kind not in ALLOWED_PROJECTIONS:
                errors.append(
                    FieldError(
                        f"{source_path}.{kind}",
                        "VolumeTypeNotAllowed",
                        f"projected {kind} sources are not allowed in a tenant namespace outside a "
                        "TrainingJob",
                        f"project only: {', '.join(ALLOWED_PROJECTIONS)}",
                    )
                )
        secret = (projection.get("secret") or {}).get("name")
        if secret in namespace.job_secrets:
            errors.append(_job_secret(f"{source_path}.secret.name", secret))
    return errors


def _job_secret(path: str, name: str) -> FieldError:
    return FieldError(
        path,
        "JobSecretOutsideJob",
        f"Secret {name!r} belongs to a TrainingJob: only that job's own pods may read it",
        "use a Secret of your own",
    )


# --------------------------------------------------------------------------- containers


def _container_errors(
    path: str, container: dict[str, Any], pod_security: dict[str, Any], namespace: NamespaceView
) -> list[FieldError]:
    errors: list[FieldError] = []
    resources = container.get("resources") or {}
    gpus = sorted(
        {
            name
            for kind in ("limits", "requests")
            for name, quantity in (resources.get(kind) or {}).items()
            if name.startswith(GPU_RESOURCE_PREFIX) and quantity not in ("0", 0)
        }
    )
    if gpus:
        errors.append(
            FieldError(
                f"{path}.resources",
                "GPUOutsideJob",
                f"only TrainingJobs may use GPUs in a tenant namespace (asks for {', '.join(gpus)})",
                "run the workload as a TrainingJob so that quota, signing and integrity apply",
            )
        )
    for j, env in enumerate(container.get("env") or []):
        name = str(env.get("name", ""))
        reserved = _reserved_env(f"{path}.env[{j}]", name)
        if reserved is not None:
            errors.append(reserved)
        secret = ((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
        if secret in namespace.job_secrets:
            errors.append(_job_secret(f"{path}.env[{j}].valueFrom.secretKeyRef.name", secret))
    for j, source in enumerate(container.get("envFrom") or []):
        # Only the prefix can be judged here: the keys inside a ConfigMap or Secret cannot be seen
        # at admission (and may change later), so a source with a key NVIDIA_VISIBLE_DEVICES, or a
        # shorter prefix that a key completes ("NV" + "IDIA_..."), is not caught. Nor is an image's
        # own ENV. The node's NVIDIA runtime must not hand out GPUs by variable alone.
        prefix = str(source.get("prefix", ""))
        reserved = _reserved_env(f"{path}.envFrom[{j}].prefix", prefix, prefix=True)
        if reserved is not None:
            errors.append(reserved)
        secret = (source.get("secretRef") or {}).get("name")
        if secret in namespace.job_secrets:
            errors.append(_job_secret(f"{path}.envFrom[{j}].secretRef.name", secret))
    errors += _security_errors(path, container, pod_security)
    for k, port in enumerate(container.get("ports") or []):
        if port.get("hostPort"):
            errors.append(
                FieldError(
                    f"{path}.ports[{k}].hostPort",
                    "HostPort",
                    f"hostPort {port['hostPort']} binds a port of the node",
                    "remove hostPort; reach the pod through a Service",
                )
            )
    return errors


def _reserved_env(path: str, name: str, prefix: bool = False) -> FieldError | None:
    """A variable's name (or, with `prefix`, an envFrom prefix) that trainguard or the NVIDIA
    runtime owns."""
    what = f"envFrom prefix {name!r} makes variables that" if prefix else name
    change = "use another prefix" if prefix else "remove the variable"
    if name.startswith(NVIDIA_ENV_PREFIX):
        return FieldError(
            path,
            "GPUOutsideJob",
            f"{what} {'ask' if prefix else 'asks'} the NVIDIA runtime for GPUs outside the device plugin",
            f"{change}; run GPU work as a TrainingJob",
        )
    if name.startswith(TRAINGUARD_ENV_PREFIX):
        return FieldError(
            path,
            "ReservedEnvName",
            f"{what} {'are' if prefix else 'is'} reserved: trainguard sets {TRAINGUARD_ENV_PREFIX}* "
            "variables in a job's containers (where the integrity hook reports)",
            f"{change}; names starting with {TRAINGUARD_ENV_PREFIX} or {NVIDIA_ENV_PREFIX} are "
            "trainguard's and the NVIDIA runtime's",
        )
    return None


def _is_root(user: Any) -> bool:
    return isinstance(user, int) and not isinstance(user, bool) and user == 0


def _security_errors(path: str, container: dict[str, Any], pod_security: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    security = container.get("securityContext") or {}
    at = f"{path}.securityContext"
    # Non-root: the container's setting wins over the pod's.
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    if _is_root(security.get("runAsUser")):
        errors.append(
            FieldError(
                f"{at}.runAsUser", "RunAsRoot", "runAsUser: 0 runs the container as root", NON_ROOT_FIX
            )
        )
    elif _is_root(user):
        pass  # the pod's runAsUser: 0, refused once at spec.securityContext.runAsUser
    elif non_root is not True and not (isinstance(user, int) and user > 0):
        errors.append(
            FieldError(
                f"{at}.runAsNonRoot",
                "RunAsRoot",
                f"container {container.get('name', '')!r} may run as root: neither runAsNonRoot: true "
                "nor a non-zero runAsUser is set on it or on the pod",
                NON_ROOT_FIX,
            )
        )
    if security.get("privileged"):
        errors.append(
            FieldError(
                f"{at}.privileged",
                "Privileged",
                "privileged containers are not allowed",
                "remove privileged: true",
            )
        )
    if security.get("allowPrivilegeEscalation") is True:
        errors.append(
            FieldError(
                f"{at}.allowPrivilegeEscalation",
                "PrivilegeEscalation",
                "allowPrivilegeEscalation: true lets a process gain privileges its parent lacks "
                "(setuid binaries, file capabilities)",
                "set allowPrivilegeEscalation: false",
            )
        )
    added = (security.get("capabilities") or {}).get("add") or []
    if added:
        errors.append(
            FieldError(
                f"{at}.capabilities.add",
                "AddedCapabilities",
                f"added capabilities are not allowed ({', '.join(str(a) for a in added)})",
                "remove capabilities.add; drop ALL instead",
            )
        )
    return errors
