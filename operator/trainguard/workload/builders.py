"""Pure builders of everything the operator creates for an admitted TrainingJob.

Each function takes the parsed job (and tenant) and returns the manifest as a plain dict, ready
for the API server. Nothing here talks to Kubernetes; golden-file tests pin the output.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.api.constants import (
    API_VERSION,
    GPU_RESOURCE,
    INPUT_SIGNERS_ENV,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LABEL_REPLICA,
    LABEL_TENANT,
    MANAGED_BY,
    SIDECAR_CONTAINER,
    TRAINER_CONTAINER,
    VERIFIED_INPUTS_ENV,
    VERIFY_INPUTS_CONTAINER,
)
from trainguard.api.models import InputVerification, IntegrityMode, Tenant, TrainingJob

Manifest = dict[str, Any]

RENDEZVOUS_PORT = 29500
RUN_AS = 65532  # the conventional "nonroot" user of distroless images
# The integrity sidecar's own user (same group as the trainer, for the socket): the trainer can
# neither read its memory nor signal it, even in a pod whose process namespace is shared.
SIDECAR_RUN_AS = 65531
INTEGRITY_DIR = "/run/trainguard"
INTEGRITY_SOCKET = f"{INTEGRITY_DIR}/sidecar.sock"
INTEGRITY_TOKEN_DIR = "/var/run/trainguard-token"  # noqa: S105 - a path, not a secret
# The sidecar's own record (its signed report stream), in a volume only the sidecar mounts: nothing
# the trainer can read tells when a check ran, and nothing it can write edits the record.
SIDECAR_RECORD_DIR = "/var/lib/trainguard-sidecar"
# The audience of the sidecar's projected ServiceAccount token: good for asking the operator for
# the job's key, and for nothing else (the API server refuses it, it names another audience).
INTEGRITY_TOKEN_AUDIENCE = "trainguard.dev/integrity"  # noqa: S105 - a name, not a secret
INTEGRITY_TOKEN_SECONDS = 600  # the shortest lifetime the API server allows
# On a job's key Secret (in the operator's namespace): the namespace of the job it belongs to.
LABEL_JOB_NAMESPACE = "trainguard.dev/job-namespace"


@dataclass(frozen=True)
class WorkloadSettings:
    """Operator-wide settings the builders need (from the Helm values)."""

    sidecar_image: str = "ghcr.io/trainguard/integrity-sidecar:0.1.0"
    # Where sidecars post their signed reports (the operator's integrity endpoint).
    report_url: str = "http://trainguard-integrity.trainguard-system.svc:8082"
    dns_namespace: str = "kube-system"
    # Where the operator runs: jobs' integrity keys live there, out of reach of tenant roles.
    operator_namespace: str = "trainguard-system"
    # The operator's integrity endpoint (key delivery, reports): sidecars may reach it, nothing else.
    operator_port: int = 8082
    # The GPU flavors (Kueue ResourceFlavors) the platform configured: name -> node labels. A job
    # admitted to a flavor runs on its nodes.
    gpu_flavors: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: {"gpu": {}})
    # Annotations of a TrainingJob copied onto its pods, by prefix (none by default; the local
    # cluster's simulated nodes read `kwok.trainguard.test/` ones).
    pod_annotation_prefixes: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- names


def service_name(job: TrainingJob) -> str:
    return job.name


def service_account_name(job: TrainingJob) -> str:
    return f"{job.name}-runner"


def output_claim_name(job: TrainingJob) -> str:
    return f"{job.name}-output"


def network_policy_name(job: TrainingJob) -> str:
    return f"{job.name}-isolation"


def integrity_secret_name(job_uid: str) -> str:
    """The job's key Secret, in the operator's namespace: named by the job's uid, which nobody can
    choose in advance, so no Secret made before the job can ever pass for its key."""
    return f"integrity-key-{job_uid}"


def pod_name(job: TrainingJob, replica: int, attempt: int) -> str:
    return f"{job.name}-{replica}-a{attempt}"


def pod_hostname(job: TrainingJob, replica: int) -> str:
    """Stable across restarts, so `<job>-0.<job>` always names the rendezvous master."""
    return f"{job.name}-{replica}"


# --------------------------------------------------------------------------- common metadata


def job_selector(job: TrainingJob) -> dict[str, str]:
    return {LABEL_JOB_UID: job.metadata.uid}


def labels(job: TrainingJob, component: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: component,
        LABEL_JOB: job.name,
        LABEL_JOB_UID: job.metadata.uid,
        LABEL_TENANT: job.spec.tenant,
    }


def owner_reference(job: TrainingJob) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "name": job.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    job: TrainingJob, name: str, component: str, extra_labels: dict[str, str] | None = None
) -> Manifest:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": {**labels(job, component), **(extra_labels or {})},
        "ownerReferences": [owner_reference(job)],
    }


# --------------------------------------------------------------------------- children


def build_service_account(job: TrainingJob) -> Manifest:
    """A per-job identity with no permissions and no token mounted anywhere."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(job, service_account_name(job), "runner"),
        "automountServiceAccountToken": False,
    }


def build_service(job: TrainingJob) -> Manifest:
    """Headless service: stable DNS names for rendezvous (`<job>-<i>.<job>`)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(job, service_name(job), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job_selector(job),
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def build_output_claim(job: TrainingJob) -> Manifest:
    spec: Manifest = {
        "accessModes": ["ReadWriteOnce"] if job.spec.replicas == 1 else ["ReadWriteMany"],
        "resources": {"requests": {"storage": job.spec.output.size}},
    }
    if job.spec.output.storage_class_name:
        spec["storageClassName"] = job.spec.output.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(job, output_claim_name(job), "output"),
        "spec": spec,
    }


def build_network_policy(job: TrainingJob, settings: WorkloadSettings) -> Manifest:
    """Only pods of the same job may talk to the job's pods; egress to the same job and DNS."""
    same_job = [{"podSelector": {"matchLabels": job_selector(job)}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(job, network_policy_name(job), "isolation"),
        "spec": {
            "podSelector": {"matchLabels": job_selector(job)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": same_job}],
            "egress": [
                {"to": same_job},
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": settings.dns_namespace}
                            },
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                *_operator_egress(job, settings),
            ],
        },
    }


def _operator_egress(job: TrainingJob, settings: WorkloadSettings) -> list[Manifest]:
    """The integrity sidecar fetches the job's key from the operator and reports to it."""
    if job.spec.integrity.mode == IntegrityMode.OFF:
        return []
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "trainguard"}},
    }
    return [{"to": [operator], "ports": [{"protocol": "TCP", "port": settings.operator_port}]}]


def hardened_container_security(user: int = RUN_AS) -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": RUN_AS,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def rendezvous_env(job: TrainingJob, replica: int) -> list[Manifest]:
    """What a distributed launcher reads to find its peers: one replica is one node.

    `torchrun` reads its options from `PET_*` variables (as Kubeflow Trainer sets them), so
    `torchrun train.py` needs no flags, and a command that names `--nnodes` or
    `--nproc-per-node` itself still works (flags win over the environment). `RANK`, `WORLD_SIZE`
    and `MASTER_*` serve code that calls `torch.distributed.init_process_group` once per pod;
    torchrun replaces them in each worker with per-process values. A job's own `env` comes after
    these and wins (Kubernetes takes the last of two entries of the same name).
    """
    master = f"{pod_hostname(job, 0)}.{service_name(job)}" if needs_service(job) else pod_hostname(job, 0)
    gpus = job.spec.resources.gpus_per_replica
    return [
        {"name": "RANK", "value": str(replica)},
        {"name": "WORLD_SIZE", "value": str(job.spec.replicas)},
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
        {"name": "PET_NNODES", "value": str(job.spec.replicas)},
        {"name": "PET_NODE_RANK", "value": str(replica)},
        # One process per GPU; a CPU-only replica runs one process.
        {"name": "PET_NPROC_PER_NODE", "value": str(max(gpus, 1))},
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]


def build_pod(
    job: TrainingJob, tenant: Tenant, replica: int, attempt: int, settings: WorkloadSettings
) -> Manifest:
    spec = job.spec
    gpus = str(spec.resources.gpus_per_replica)
    resources: Manifest = {
        "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
        "limits": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
    }
    if spec.resources.gpus_per_replica:
        resources["requests"][GPU_RESOURCE] = gpus
        resources["limits"][GPU_RESOURCE] = gpus

    volumes: list[Manifest] = [
        {"name": "output", "persistentVolumeClaim": {"claimName": output_claim_name(job)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Gi"}},
    ]
    mounts: list[Manifest] = [
        {"name": "output", "mountPath": spec.output.mount_path},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the container's scratch space, root FS is read-only
    ]
    verified_mounts: list[Manifest] = []
    for entry in spec.shared_storage:
        storage = tenant.spec.storage(entry.name)
        if storage is None:  # admission refuses this; never build a pod that would mount it writable
            raise ValueError(
                f"spec.sharedStorage[{entry.name}] is not shared storage of tenant {tenant.metadata.name}"
            )
        volume = f"shared-{entry.name}"
        # Read-only at the volume level: the kubelet mounts the claim read-only for every container.
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": storage.claim_name, "readOnly": True}}
        )
        mounts.append({"name": volume, "mountPath": entry.mount_path, "readOnly": True})
        if entry.verification == InputVerification.SIGNED_MANIFEST:
            verified_mounts.append({"name": volume, "mountPath": entry.mount_path, "readOnly": True})

    integrity = spec.integrity.mode != IntegrityMode.OFF
    if integrity:
        # Socket and the shared weight buffer: node-local disk, served from the page cache.
        volumes.append({"name": "integrity", "emptyDir": {}})
        volumes.append({"name": "sidecar-record", "emptyDir": {"sizeLimit": "1Gi"}})
        # The sidecar's proof of identity, mounted into the sidecar only, never into the trainer: a
        # token of the job's ServiceAccount, bound to this pod and good only for asking the
        # operator for the job's key (the key itself never exists in the tenant's namespace).
        volumes.append(
            {
                "name": "integrity-token",
                "projected": {
                    # Owner and group read: the sidecar reads it through the pod's group.
                    "defaultMode": 0o440,
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": INTEGRITY_TOKEN_AUDIENCE,
                                "expirationSeconds": INTEGRITY_TOKEN_SECONDS,
                                "path": "token",
                            }
                        }
                    ],
                },
            }
        )
        mounts.append({"name": "integrity", "mountPath": INTEGRITY_DIR})

    env: list[Manifest] = [
        {"name": "TRAINGUARD_JOB", "value": job.name},
        {"name": "TRAINGUARD_TENANT", "value": spec.tenant},
        *rendezvous_env(job, replica),
    ]
    if integrity:
        env.append({"name": "TRAINGUARD_INTEGRITY_SOCKET", "value": INTEGRITY_SOCKET})
    if verified_mounts:
        # For `trainguard.trainer.read_verified`: a checkpoint re-checked as it is loaded.
        env.append({"name": INPUT_SIGNERS_ENV, "value": input_signers(tenant)})
        paths = [m["mountPath"] for m in verified_mounts]
        env.append({"name": VERIFIED_INPUTS_ENV, "value": json.dumps(paths)})
    env.extend(e.to_api() for e in spec.env)

    trainer: Manifest = {
        "name": TRAINER_CONTAINER,
        "image": job.spec.image,  # pinned to the verified digest at admission
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
        "securityContext": hardened_container_security(),
    }
    if spec.command:
        trainer["command"] = list(spec.command)
    if spec.args:
        trainer["args"] = list(spec.args)
    containers = [trainer]
    gpu_integrity = integrity and spec.resources.gpus_per_replica > 0
    if gpu_integrity:
        volumes.append({"name": "sidecar-tmp", "emptyDir": {"sizeLimit": "1Gi"}})

    pod_spec: Manifest = {
        "restartPolicy": "Never",  # the operator restarts the whole gang within the failure policy
        "hostname": pod_hostname(job, replica),
        "serviceAccountName": service_account_name(job),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 30,
        "containers": containers,
        "volumes": volumes,
    }
    init_containers: list[Manifest] = []
    if verified_mounts:
        # First and to completion: nothing else starts (not the sidecar, not the trainer) unless
        # every verified folder is exactly what a trusted signer signed.
        init_containers.append(build_input_verifier(tenant, verified_mounts, settings))
    if integrity:
        # A native sidecar (an init container that keeps running): it is up, its socket ready,
        # before the trainer starts, and it stops when the trainer is done, so the pod completes.
        init_containers.append(build_sidecar(job, replica, settings, gpu=gpu_integrity, attempt=attempt))
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if gpu_integrity:
        # CUDA IPC checks process ids: the sidecar opens the trainer's GPU memory only when both
        # see the same process namespace. The sidecar's own user keeps it out of the trainer's reach.
        pod_spec["shareProcessNamespace"] = True
    if needs_service(job):
        pod_spec["subdomain"] = service_name(job)  # `<job>-<i>.<job>`: the headless Service's names
    if tenant.spec.image_pull_secret is not None:
        # The Secret the image was verified with (each tenant namespace holds it under this name):
        # the kubelet pulls with the same credentials.
        pod_spec["imagePullSecrets"] = [{"name": tenant.spec.image_pull_secret.name}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _with_annotations(
            metadata(
                job,
                pod_name(job, replica, attempt),
                "worker",
                {LABEL_REPLICA: str(replica), LABEL_ATTEMPT: str(attempt)},
            ),
            {
                k: v
                for k, v in job.metadata.annotations.items()
                if k.startswith(tuple(settings.pod_annotation_prefixes))
            },
        ),
        "spec": pod_spec,
    }


def _with_annotations(meta: Manifest, annotations: dict[str, str]) -> Manifest:
    if annotations:
        meta["annotations"] = {**meta.get("annotations", {}), **annotations}
    return meta


def input_signers(tenant: Tenant) -> str:
    """The tenant's trusted signers as the pod reads them: public keys only, nothing secret. In
    the pod spec itself rather than a ConfigMap: a pod's spec cannot change once created and only
    the operator creates a job's pods, while a ConfigMap in the tenant's namespace could be edited
    between admission and start."""
    return json.dumps(
        [{"name": s.name, "publicKey": s.public_key} for s in tenant.spec.trusted_signers],
        separators=(",", ":"),
    )


def build_input_verifier(tenant: Tenant, mounts: list[Manifest], settings: WorkloadSettings) -> Manifest:
    """The init container that checks each verified shared folder against its signed manifest
    (`python -m trainguard.inputs verify`, in the sidecar's image). It fails, naming each file
    that differs in its termination message, before the trainer can read any of them."""
    return {
        "name": VERIFY_INPUTS_CONTAINER,
        "image": settings.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "trainguard.inputs"],
        "args": ["verify", "--termination-log=/dev/termination-log", *(m["mountPath"] for m in mounts)],
        "env": [{"name": INPUT_SIGNERS_ENV, "value": input_signers(tenant)}],
        # The message names the files; the logs say the same when it could not be written.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {
            "requests": {"cpu": "500m", "memory": "128Mi"},
            "limits": {"cpu": "2", "memory": "512Mi"},
        },
        "volumeMounts": mounts,
        # The trainer's user: it reads exactly what the trainer could read.
        "securityContext": hardened_container_security(),
    }


def build_sidecar(
    job: TrainingJob, replica: int, settings: WorkloadSettings, gpu: bool, attempt: int = 0
) -> Manifest:
    """The weight-verification sidecar: the only container that mounts the pod's token, with which
    it asks the operator for the job's integrity key at start."""
    spec = job.spec
    env: list[Manifest] = [
        {"name": "TRAINGUARD_JOB", "value": job.name},
        {"name": "TRAINGUARD_REPLICA", "value": str(replica)},
        {"name": "TRAINGUARD_INTEGRITY_MODE", "value": spec.integrity.mode.value},
        {"name": "TRAINGUARD_INTEGRITY_EVERY_STEPS", "value": str(spec.integrity.every_steps)},
        {"name": "TRAINGUARD_INTEGRITY_SOCKET", "value": INTEGRITY_SOCKET},
    ]
    mounts: list[Manifest] = [
        {"name": "integrity", "mountPath": INTEGRITY_DIR},
        {"name": "integrity-token", "mountPath": INTEGRITY_TOKEN_DIR, "readOnly": True},
        {"name": "sidecar-record", "mountPath": SIDECAR_RECORD_DIR},
        # To hash the checkpoints the trainer saves there; it never writes them.
        {"name": "output", "mountPath": spec.output.mount_path, "readOnly": True},
    ]
    resources: Manifest = {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    if gpu:
        # It reads the trainer's GPU memory on that GPU, so it must see the pod's GPUs without
        # taking any: the NVIDIA runtime's device list. It opens only the GPU whose UUID the
        # trainer names. Triton compiles the fingerprint kernel once into its scratch folder.
        env += [
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"},
            {"name": "HOME", "value": "/tmp"},  # noqa: S108 - the sidecar's own emptyDir
            {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},  # noqa: S108
            {"name": "NUMBA_CACHE_DIR", "value": "/tmp/numba"},  # noqa: S108 - the CPU fingerprint loop
        ]
        mounts.append({"name": "sidecar-tmp", "mountPath": "/tmp"})  # noqa: S108
        resources = {
            "requests": {"cpu": "500m", "memory": "2Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},  # a CUDA context and PyTorch
        }
    return {
        "name": SIDECAR_CONTAINER,
        "image": settings.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "startupProbe": {
            "exec": {
                "command": [
                    "python",
                    "-m",
                    "trainguard.sidecar",
                    "--probe",
                    INTEGRITY_SOCKET,
                ]
            },
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "env": env,
        "command": ["python", "-m", "trainguard.sidecar"],
        "args": [
            f"--socket={INTEGRITY_SOCKET}",
            f"--key-url={settings.report_url}/keys/{job.namespace}/{job.name}",
            f"--token-file={INTEGRITY_TOKEN_DIR}/token",
            f"--replica={replica}",
            f"--job-uid={job.metadata.uid}",
            f"--attempt={attempt}",
            f"--mode={spec.integrity.mode.value}",
            f"--every-steps={spec.integrity.every_steps}",
            f"--report={SIDECAR_RECORD_DIR}/reports.jsonl",
            f"--report-url={settings.report_url}/{job.namespace}/{job.name}",
        ],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": hardened_container_security(SIDECAR_RUN_AS),
    }


def build_pods(job: TrainingJob, tenant: Tenant, attempt: int, settings: WorkloadSettings) -> list[Manifest]:
    """Every pod of one attempt: the gang is created together or not at all."""
    return [build_pod(job, tenant, i, attempt, settings) for i in range(job.spec.replicas)]


def build_integrity_secret(job: TrainingJob, key: bytes, settings: WorkloadSettings) -> Manifest:
    """The job's integrity key (random, made by the operator): sidecars sign with it, the operator
    checks their reports with it. It lives in the operator's namespace, where no tenant role
    reaches, named by the job's uid; the operator hands it to the job's own sidecars only, on proof
    of identity. No owner reference (none can cross namespaces): the operator deletes it with the job."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": integrity_secret_name(job.metadata.uid),
            "namespace": settings.operator_namespace,
            "labels": {**labels(job, "integrity-key"), LABEL_JOB_NAMESPACE: job.namespace},
        },
        "data": {"key": base64.b64encode(key).decode()},
    }


def needs_service(job: TrainingJob) -> bool:
    """Only replicas that must find each other need the headless Service: one replica finds
    itself by its hostname (the kubelet writes it into the pod's /etc/hosts). A Service selects
    the job's pods, so each pod change also rewrites its Endpoints and EndpointSlices: most jobs
    on a shared cluster are single-node, and are spared that churn."""
    return job.spec.replicas > 1


def build_children(job: TrainingJob, settings: WorkloadSettings) -> list[Manifest]:
    """Everything but the pods, in the order they must exist."""
    return [
        build_service_account(job),
        build_output_claim(job),
        *([build_service(job)] if needs_service(job) else []),
        build_network_policy(job, settings),
    ]
