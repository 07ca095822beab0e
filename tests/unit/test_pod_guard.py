"""The pod guard's allowlist for pods trainguard did not make, the metadata-only shortcut, the
labels trainguard keeps on tenant namespaces, and that trainguard's own pods meet the Pod Security
`restricted` profile those labels enforce."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.unit.manifests import ROOT, SETTINGS, load
from trainguard.api.constants import TENANT_NAMESPACE_LABEL
from trainguard.api.models import Tenant, TrainingJob
from trainguard.policy.namespaces import (
    PSA_ENFORCE,
    PSA_ENFORCE_VERSION,
    protected_label_changes,
    tenant_namespace_labels,
)
from trainguard.policy.pods import NamespaceView, containers, only_metadata_changed, validate_foreign_pod
from trainguard.workload import builders as b

Pod = dict[str, Any]

VIEW = NamespaceView(
    shared_claims={"imagenet": "imagenet"},
    job_claims=frozenset({"llm-output"}),
    job_secrets=frozenset({"llm-integrity"}),
    job_service_accounts=frozenset({"llm-runner"}),
)


def deployment_pod() -> Pod:
    """What a Deployment's ReplicaSet might reasonably create in a tenant namespace: non-root,
    configMap, emptyDir, Secrets and a claim of its own, no GPUs, restricted-compliant."""
    hardened = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7d9f8-abcde",
            "namespace": "team-a",
            "labels": {"app": "web", "pod-template-hash": "7d9f8", "app.kubernetes.io/managed-by": "helm"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9f8",
                    "uid": "u",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "web",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [
                {"name": "migrate", "image": "r.io/web:v1", "securityContext": dict(hardened)},
            ],
            "containers": [
                {
                    "name": "web",
                    "image": "r.io/web:v1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {"name": "MY_NVIDIA_NOTE", "value": "not a runtime variable"},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "web-token", "key": "t"}}},
                    ],
                    "envFrom": [
                        {"configMapRef": {"name": "web-config"}, "prefix": "APP_"},
                        {"secretRef": {"name": "web-env"}},
                    ],
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
                    "securityContext": dict(hardened),
                }
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "web-config"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
                {"name": "tls", "secret": {"secretName": "web-tls"}},
                {
                    "name": "info",
                    "downwardAPI": {
                        "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                    },
                },
                {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
                {
                    "name": "kube-api-access",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                            {"configMap": {"name": "kube-root-ca.crt"}},
                            {
                                "downwardAPI": {
                                    "items": [
                                        {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                    ]
                                }
                            },
                            {"secret": {"name": "web-tls"}},
                            {"clusterTrustBundle": {"signerName": "example.com/ca", "path": "ca.pem"}},
                        ]
                    },
                },
            ],
        },
    }


def web(pod: Pod) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def add_volume(volume: dict[str, Any]) -> Callable[[Pod], None]:
    def change(pod: Pod) -> None:
        pod["spec"]["volumes"].append({"name": "added", **volume})

    return change


def set_in(*keys: str, value: Any) -> Callable[[Pod], None]:
    """Set pod[keys...] = value, making dicts on the way."""

    def change(pod: Pod) -> None:
        target = pod
        for key in keys[:-1]:
            target = target.setdefault(key, {}) if isinstance(target, dict) else target[int(key)]
        target[keys[-1]] = value

    return change


def on_web(**fields: Any) -> Callable[[Pod], None]:
    def change(pod: Pod) -> None:
        web(pod).update(fields)

    return change


def on_web_security(**fields: Any) -> Callable[[Pod], None]:
    def change(pod: Pod) -> None:
        web(pod)["securityContext"].update(fields)

    return change


def both(*changes: Callable[[Pod], None]) -> Callable[[Pod], None]:
    def change(pod: Pod) -> None:
        for c in changes:
            c(pod)

    return change


ADDED = "spec.volumes[7]"  # where add_volume puts its volume
WEB = "spec.containers[0]"


def test_a_deployments_pod_passes_the_guard_and_restricted() -> None:
    pod = deployment_pod()
    assert validate_foreign_pod(pod, VIEW) == []
    assert restricted_violations(pod) == []


# --------------------------------------------------------------------------- refused: one per rule

REFUSED: list[tuple[str, Callable[[Pod], None], str, str, str]] = [
    # volumes: only configMap, emptyDir, downwardAPI, secret, persistentVolumeClaim, projected
    *[
        (
            f"{kind} volume",
            add_volume({kind: source}),
            f"{ADDED}.{kind}",
            "VolumeTypeNotAllowed",
            f"{kind} volumes are not allowed",
        )
        for kind, source in [
            ("hostPath", {"path": "/"}),
            ("nfs", {"server": "nfs.example.com", "path": "/exports"}),
            ("csi", {"driver": "secrets-store.csi.k8s.io"}),
            ("ephemeral", {"volumeClaimTemplate": {"spec": {"storageClassName": "fast"}}}),
            ("iscsi", {"targetPortal": "10.0.0.1:3260", "iqn": "iqn.x", "lun": 0}),
            ("rbd", {"monitors": ["10.0.0.1"], "image": "disk"}),
            ("gitRepo", {"repository": "https://example.com/r.git"}),
            ("image", {"reference": "r.io/weights:v1"}),
        ]
    ],
    (
        "secret volume of a job",
        add_volume({"secret": {"secretName": "llm-integrity"}}),
        f"{ADDED}.secret.secretName",
        "JobSecretOutsideJob",
        "Secret 'llm-integrity' belongs to a TrainingJob",
    ),
    (
        "shared storage claim",
        add_volume({"persistentVolumeClaim": {"claimName": "imagenet", "readOnly": True}}),
        f"{ADDED}.persistentVolumeClaim",
        "SharedStorageOutsideJob",
        "claim 'imagenet' is the tenant's shared storage 'imagenet'",
    ),
    (
        "a job's output claim, writable",
        add_volume({"persistentVolumeClaim": {"claimName": "llm-output"}}),
        f"{ADDED}.persistentVolumeClaim",
        "JobClaimOutsideJob",
        "claim 'llm-output' belongs to a TrainingJob",
    ),
    (
        "a job's output claim, read-only",
        add_volume({"persistentVolumeClaim": {"claimName": "llm-output", "readOnly": True}}),
        f"{ADDED}.persistentVolumeClaim",
        "JobClaimOutsideJob",
        "only its own pods mount them",
    ),
    (
        "projected secret of a job",
        add_volume(
            {"projected": {"sources": [{"configMap": {"name": "c"}}, {"secret": {"name": "llm-integrity"}}]}}
        ),
        f"{ADDED}.projected.sources[1].secret.name",
        "JobSecretOutsideJob",
        "Secret 'llm-integrity' belongs to a TrainingJob",
    ),
    (
        "projected source not allowed",
        add_volume({"projected": {"sources": [{"podCertificate": {"signerName": "x/y"}}]}}),
        f"{ADDED}.projected.sources[0].podCertificate",
        "VolumeTypeNotAllowed",
        "projected podCertificate sources are not allowed",
    ),
    # GPUs: no nvidia.com/ resource
    (
        "nvidia.com/gpu limit",
        set_in("spec", "containers", "0", "resources", "limits", "nvidia.com/gpu", value="1"),
        f"{WEB}.resources",
        "GPUOutsideJob",
        "only TrainingJobs may use GPUs in a tenant namespace (asks for nvidia.com/gpu)",
    ),
    (
        "MIG slice request",
        set_in("spec", "containers", "0", "resources", "requests", "nvidia.com/mig-1g.10gb", value="1"),
        f"{WEB}.resources",
        "GPUOutsideJob",
        "asks for nvidia.com/mig-1g.10gb",
    ),
    (
        "GPU in an init container",
        set_in("spec", "initContainers", "0", "resources", value={"limits": {"nvidia.com/gpu.shared": "1"}}),
        "spec.initContainers[0].resources",
        "GPUOutsideJob",
        "nvidia.com/gpu.shared",
    ),
    # env: reserved names and job Secrets
    (
        "NVIDIA_ variable",
        on_web(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]),
        f"{WEB}.env[0]",
        "GPUOutsideJob",
        "NVIDIA_VISIBLE_DEVICES asks the NVIDIA runtime for GPUs outside the device plugin",
    ),
    (
        "TRAINGUARD_ variable",
        on_web(env=[{"name": "TRAINGUARD_INTEGRITY_SOCKET", "value": "/tmp/mine.sock"}]),
        f"{WEB}.env[0]",
        "ReservedEnvName",
        "TRAINGUARD_INTEGRITY_SOCKET is reserved",
    ),
    (
        "env from a job's Secret",
        on_web(env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "llm-integrity", "key": "key"}}}]),
        f"{WEB}.env[0].valueFrom.secretKeyRef.name",
        "JobSecretOutsideJob",
        "'llm-integrity' belongs to a TrainingJob",
    ),
    (
        "envFrom a job's Secret",
        on_web(envFrom=[{"secretRef": {"name": "llm-integrity"}}]),
        f"{WEB}.envFrom[0].secretRef.name",
        "JobSecretOutsideJob",
        "only that job's own pods may read it",
    ),
    (
        "envFrom prefix NVIDIA_",
        on_web(envFrom=[{"configMapRef": {"name": "c"}, "prefix": "NVIDIA_"}]),
        f"{WEB}.envFrom[0].prefix",
        "GPUOutsideJob",
        "envFrom prefix 'NVIDIA_' makes variables that ask the NVIDIA runtime",
    ),
    (
        "envFrom prefix TRAINGUARD_",
        on_web(envFrom=[{"configMapRef": {"name": "c"}, "prefix": "TRAINGUARD_X"}]),
        f"{WEB}.envFrom[0].prefix",
        "ReservedEnvName",
        "envFrom prefix 'TRAINGUARD_X' makes variables that are reserved",
    ),
    # non-root
    (
        "no non-root setting anywhere",
        both(
            set_in("spec", "securityContext", value={}),
            set_in("spec", "initContainers", "0", "securityContext", "runAsUser", value=1000),
        ),
        f"{WEB}.securityContext.runAsNonRoot",
        "RunAsRoot",
        "container 'web' may run as root",
    ),
    (
        "container runAsUser 0",
        on_web_security(runAsUser=0),
        f"{WEB}.securityContext.runAsUser",
        "RunAsRoot",
        "runAsUser: 0 runs the container as root",
    ),
    (
        "pod runAsUser 0",
        set_in("spec", "securityContext", "runAsUser", value=0),
        "spec.securityContext.runAsUser",
        "RunAsRoot",
        "runAsUser: 0 runs the pod's containers as root",
    ),
    (
        "container runAsNonRoot false wins over the pod's true",
        both(
            set_in("spec", "securityContext", value={"runAsNonRoot": True}),
            on_web_security(runAsNonRoot=False),
        ),
        f"{WEB}.securityContext.runAsNonRoot",
        "RunAsRoot",
        "neither runAsNonRoot: true nor a non-zero runAsUser",
    ),
    # privileges
    (
        "added capabilities",
        on_web_security(capabilities={"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_PTRACE"]}),
        f"{WEB}.securityContext.capabilities.add",
        "AddedCapabilities",
        "added capabilities are not allowed (NET_ADMIN, SYS_PTRACE)",
    ),
    (
        "privileged",
        on_web_security(privileged=True),
        f"{WEB}.securityContext.privileged",
        "Privileged",
        "privileged containers are not allowed",
    ),
    (
        "privilege escalation",
        on_web_security(allowPrivilegeEscalation=True),
        f"{WEB}.securityContext.allowPrivilegeEscalation",
        "PrivilegeEscalation",
        "allowPrivilegeEscalation: true lets a process gain privileges",
    ),
    # the node
    (
        "hostPort",
        on_web(ports=[{"containerPort": 8080}, {"containerPort": 8443, "hostPort": 443}]),
        f"{WEB}.ports[1].hostPort",
        "HostPort",
        "hostPort 443 binds a port of the node",
    ),
    *[
        (
            field,
            set_in("spec", field, value=True),
            f"spec.{field}",
            "HostNamespace",
            "host namespaces are not allowed",
        )
        for field in ("hostNetwork", "hostPID", "hostIPC")
    ],
    # a job's identity
    (
        "a job's service account",
        set_in("spec", "serviceAccountName", value="llm-runner"),
        "spec.serviceAccountName",
        "JobServiceAccount",
        "'llm-runner' is the service account of a TrainingJob",
    ),
    (
        "a job's service account, deprecated field",
        set_in("spec", "serviceAccount", value="llm-runner"),
        "spec.serviceAccount",
        "JobServiceAccount",
        "could mint tokens of that job's identity",
    ),
    *[
        (
            f"label {key}",
            set_in("metadata", "labels", key, value="v"),
            f"metadata.labels[{key}]",
            "ReservedLabel",
            "joins that job's Service, NetworkPolicy and gang",
        )
        for key in ("trainguard.dev/job-uid", "trainguard.dev/replica-index", "trainguard.dev/attempt")
    ],
    (
        "trainguard annotation",
        set_in("metadata", "annotations", "trainguard.dev/verified", value="true"),
        "metadata.annotations[trainguard.dev/verified]",
        "ReservedAnnotation",
        "annotations under trainguard.dev/ are trainguard's",
    ),
    # ways to GPU nodes or devices past the device plugin
    (
        "nodeName",
        set_in("spec", "nodeName", value="gpu-node-0"),
        "spec.nodeName",
        "GPUOutsideJob",
        "places the pod past the scheduler",
    ),
    (
        "GPU taint toleration",
        set_in("spec", "tolerations", value=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
        "spec.tolerations[0]",
        "GPUOutsideJob",
        "lets the pod onto GPU nodes",
    ),
    (
        "tolerate every taint",
        set_in("spec", "tolerations", value=[{"operator": "Exists"}]),
        "spec.tolerations[0]",
        "GPUOutsideJob",
        "lets the pod onto GPU nodes",
    ),
    (
        "DRA claim",
        set_in("spec", "resourceClaims", value=[{"name": "gpu", "resourceClaimName": "any-gpu"}]),
        "spec.resourceClaims",
        "GPUOutsideJob",
        "dynamic resource claims",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "reason", "fragment"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused(change: Callable[[Pod], None], path: str, reason: str, fragment: str) -> None:
    pod = deployment_pod()
    change(pod)
    errors = validate_foreign_pod(pod, VIEW)
    assert [(e.path, e.reason) for e in errors] == [(path, reason)]
    assert fragment in str(errors[0])
    assert errors[0].fix


# --------------------------------------------------------------------------- allowed: one per rule

ALLOWED: list[tuple[str, Callable[[Pod], None]]] = [
    (
        "the API server's default tolerations",
        set_in(
            "spec",
            "tolerations",
            value=[
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
            ],
        ),
    ),
    ("emptyDir in memory", add_volume({"emptyDir": {"medium": "Memory"}})),
    (
        "an own claim, read-only",
        add_volume({"persistentVolumeClaim": {"claimName": "notes", "readOnly": True}}),
    ),
    ("an own Secret", add_volume({"secret": {"secretName": "llm-notes"}})),
    (
        "projected service account token only",
        add_volume({"projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}),
    ),
    ("zero GPUs", set_in("spec", "containers", "0", "resources", "limits", "nvidia.com/gpu", value="0")),
    (
        "other extended resources",
        set_in("spec", "containers", "0", "resources", "limits", "example.com/fpga", value="1"),
    ),
    (
        "NVIDIA in a variable's middle",
        on_web(env=[{"name": "USE_NVIDIA_SMI", "value": "no"}, {"name": "NCCL_DEBUG", "value": "WARN"}]),
    ),
    (
        "env from an own Secret",
        on_web(env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "web-token", "key": "k"}}}]),
    ),
    (
        "envFrom an own Secret with a prefix",
        on_web(envFrom=[{"secretRef": {"name": "web-env"}, "prefix": "WEB_"}]),
    ),
    (
        "runAsNonRoot on the pod only",
        both(set_in("spec", "securityContext", value={"runAsNonRoot": True}), on_web_security()),
    ),
    (
        "runAsUser on the container only",
        both(
            set_in("spec", "securityContext", value={}),
            set_in("spec", "initContainers", "0", "securityContext", "runAsUser", value=1),
            on_web_security(runAsUser=1000),
        ),
    ),
    (
        "container runAsNonRoot wins over the pod's false",
        both(
            set_in("spec", "securityContext", value={"runAsNonRoot": False}),
            set_in("spec", "initContainers", "0", "securityContext", "runAsNonRoot", value=True),
            on_web_security(runAsNonRoot=True),
        ),
    ),
    ("empty capabilities.add", on_web_security(capabilities={"drop": ["ALL"], "add": []})),
    ("privileged false, no escalation", on_web_security(privileged=False, allowPrivilegeEscalation=False)),
    ("containerPort without hostPort", on_web(ports=[{"containerPort": 80, "protocol": "TCP"}])),
    (
        "host namespaces false",
        both(*(set_in("spec", f, value=False) for f in ("hostNetwork", "hostPID", "hostIPC"))),
    ),
    ("an own service account", set_in("spec", "serviceAccountName", value="default")),
    (
        "labels and annotations of others",
        both(
            set_in("metadata", "labels", "example.com/trainguard.dev", value="x"),
            set_in("metadata", "annotations", "example.com/trainguard.dev-note", value="x"),
        ),
    ),
    (
        "a batch Job's pod",
        set_in(
            "metadata",
            value={
                "name": "backfill-x7k2p",
                "labels": {
                    "batch.kubernetes.io/job-name": "backfill",
                    "batch.kubernetes.io/controller-uid": "u",
                },
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": "backfill",
                        "uid": "u",
                        "controller": True,
                    }
                ],
            },
        ),
    ),
]


@pytest.mark.parametrize("change", [a[1] for a in ALLOWED], ids=[a[0] for a in ALLOWED])
def test_allowed(change: Callable[[Pod], None]) -> None:
    pod = deployment_pod()
    change(pod)
    assert validate_foreign_pod(pod, VIEW) == []


def test_every_problem_at_once_in_every_container_list() -> None:
    pod = deployment_pod()
    pod["metadata"]["labels"]["trainguard.dev/job-uid"] = "victim"
    pod["spec"]["securityContext"] = {}
    pod["spec"]["volumes"][0] = {"name": "config", "nfs": {"server": "s", "path": "/"}}
    pod["spec"]["ephemeralContainers"] = [
        {"name": "dbg", "image": "r.io/dbg:v1", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}
    ]
    errors = validate_foreign_pod(pod, VIEW)
    assert [(e.path, e.reason) for e in errors] == [
        ("metadata.labels[trainguard.dev/job-uid]", "ReservedLabel"),
        ("spec.volumes[0].nfs", "VolumeTypeNotAllowed"),
        ("spec.initContainers[0].securityContext.runAsNonRoot", "RunAsRoot"),
        ("spec.containers[0].securityContext.runAsNonRoot", "RunAsRoot"),
        ("spec.ephemeralContainers[0].env[0]", "GPUOutsideJob"),
        ("spec.ephemeralContainers[0].securityContext.runAsNonRoot", "RunAsRoot"),
    ]
    assert "set securityContext.runAsNonRoot: true and a non-zero securityContext.runAsUser" in str(errors[2])


# --------------------------------------------------------------------------- trainguard's own pods


@pytest.fixture
def tenant() -> Tenant:
    return Tenant.model_validate(load("examples/tenant-team-a.yaml", uid="tenant-uid"))


def variant(gpus: int, integrity: bool) -> TrainingJob:
    body = load("examples/trainingjob-llm.yaml", uid="11111111-2222-3333-4444-555555555555", generation=1)
    body["spec"]["resources"]["gpusPerReplica"] = gpus
    body["spec"]["integrity"]["mode"] = "Enforce" if integrity else "Off"
    return TrainingJob.model_validate(body)


VARIANTS = [(8, True), (8, False), (0, True), (0, False)]
VARIANT_IDS = ["gpu-integrity", "gpu", "cpu-integrity", "cpu"]


@pytest.mark.parametrize(("gpus", "integrity"), VARIANTS, ids=VARIANT_IDS)
def test_trainguards_own_pods_meet_pod_security_restricted(
    tenant: Tenant, gpus: int, integrity: bool
) -> None:
    pod = b.build_pod(variant(gpus, integrity), tenant, 1, 2, SETTINGS)
    assert bool(pod["spec"].get("initContainers")) == integrity  # the sidecar is checked too
    assert restricted_violations(pod) == []


def test_the_golden_pod_meets_pod_security_restricted() -> None:
    golden = yaml.safe_load((ROOT / "tests" / "golden" / "pod.yaml").read_text())
    assert restricted_violations(golden) == []


def test_a_copy_of_a_jobs_pod_made_by_someone_else_is_refused_on_every_count(tenant: Tenant) -> None:
    job = variant(8, True)
    pod = b.build_pod(job, tenant, 0, 0, SETTINGS)
    pod["metadata"].pop("ownerReferences")
    view = NamespaceView(
        shared_claims={s.claim_name: s.name for s in tenant.spec.shared_storage},
        job_claims=frozenset({b.output_claim_name(job)}),
        job_service_accounts=frozenset({b.service_account_name(job)}),
    )
    reasons = {e.reason for e in validate_foreign_pod(pod, view)}
    assert reasons >= {
        "ReservedLabel",  # the job's uid, replica and attempt: its gang, Service and NetworkPolicy
        "JobServiceAccount",  # the job's identity
        "JobClaimOutsideJob",  # its output, writable
        "SharedStorageOutsideJob",
        "GPUOutsideJob",  # GPUs, and NVIDIA_VISIBLE_DEVICES in the sidecar
        "ReservedEnvName",  # TRAINGUARD_*
    }


def test_the_restricted_checker_is_not_vacuous(tenant: Tenant) -> None:
    pod = b.build_pod(variant(8, True), tenant, 0, 0, SETTINGS)
    sidecar = pod["spec"]["initContainers"][0]["securityContext"]
    sidecar["capabilities"] = {"add": ["SYS_PTRACE"]}
    sidecar.pop("allowPrivilegeEscalation")
    pod["spec"]["securityContext"].pop("seccompProfile")
    pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = False
    pod["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    assert restricted_violations(pod) == [
        f"spec.volumes[{len(pod['spec']['volumes']) - 1}]: volume type hostPath",
        "spec.initContainers[0].securityContext.allowPrivilegeEscalation: must be false",
        "spec.initContainers[0].securityContext.capabilities.drop: must include ALL",
        "spec.initContainers[0].securityContext.capabilities.add: only NET_BIND_SERVICE, not ['SYS_PTRACE']",
        "spec.containers[0].securityContext.runAsNonRoot: must be true (container or pod)",
    ]


# The Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
# `restricted` at the latest version: every baseline control plus the restricted ones.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def _context_violations(at: str, security: dict[str, Any]) -> list[str]:
    """Baseline controls shared by the pod's and each container's securityContext."""
    out = []
    if (security.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{at}.windowsOptions.hostProcess: must not be set")
    selinux = security.get("seLinuxOptions") or {}
    if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        out.append(f"{at}.seLinuxOptions: only container types, no user or role")
    if (security.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append(f"{at}.appArmorProfile: must not be Unconfined")
    if security.get("runAsUser") == 0:
        out.append(f"{at}.runAsUser: must not be 0")
    seccomp = (security.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        out.append(f"{at}.seccompProfile.type: must be RuntimeDefault or Localhost")
    return out


def restricted_violations(pod: Pod) -> list[str]:
    """Every way `pod` fails Pod Security `restricted` (empty: it meets it)."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    out = [f"spec.{f}: must not be true" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value == "unconfined":
            out.append(f"metadata.annotations[{key}]: must not be unconfined")
    for i, volume in enumerate(spec.get("volumes") or []):
        out += [
            f"spec.volumes[{i}]: volume type {k}"
            for k in volume
            if k != "name" and k not in RESTRICTED_VOLUMES
        ]
    pod_security = spec.get("securityContext") or {}
    out += _context_violations("spec.securityContext", pod_security)
    out += [
        f"spec.securityContext.sysctls: {s.get('name')} is not safe"
        for s in pod_security.get("sysctls") or []
        if s.get("name") not in SAFE_SYSCTLS
    ]
    for path, container in containers(pod):
        security = container.get("securityContext") or {}
        at = f"{path}.securityContext"
        out += _context_violations(at, security)
        if security.get("privileged"):
            out.append(f"{at}.privileged: must not be true")
        if security.get("procMount") not in (None, "Default"):
            out.append(f"{at}.procMount: must be Default")
        out += [
            f"{path}.ports[{k}].hostPort: must not be set"
            for k, p in enumerate(container.get("ports") or [])
            if p.get("hostPort")
        ]
        if security.get("allowPrivilegeEscalation") is not False:
            out.append(f"{at}.allowPrivilegeEscalation: must be false")
        if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
            out.append(f"{at}.runAsNonRoot: must be true (container or pod)")
        seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_TYPES:
            out.append(f"{at}.seccompProfile: RuntimeDefault or Localhost (container or pod)")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            out.append(f"{at}.capabilities.drop: must include ALL")
        added = [c for c in capabilities.get("add") or [] if c != "NET_BIND_SERVICE"]
        if added:
            out.append(f"{at}.capabilities.add: only NET_BIND_SERVICE, not {added}")
    return out


# --------------------------------------------------------------------------- metadata-only updates


def test_metadata_only_updates_are_recognised() -> None:
    old = deployment_pod()
    old["metadata"]["finalizers"] = ["example.com/keep"]
    old["metadata"]["resourceVersion"] = "1"
    new = copy.deepcopy(old)
    new["metadata"].pop("ownerReferences")  # the garbage collector orphaning the pod
    new["metadata"]["finalizers"] = []
    new["metadata"]["resourceVersion"] = "2"
    new["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    new["metadata"]["annotations"]["example.com/note"] = "x"
    assert only_metadata_changed(old, new)
    assert only_metadata_changed({"metadata": {}}, {"spec": {}, "metadata": {"labels": {}}})


@pytest.mark.parametrize(
    "change",
    [
        set_in("spec", "ephemeralContainers", value=[{"name": "dbg", "image": "r.io/dbg:v1"}]),
        set_in("spec", "containers", "0", "image", value="r.io/web:v2"),
        set_in("metadata", "labels", "trainguard.dev/job-uid", value="victim"),
        set_in("metadata", "labels", "app", value="other"),
        set_in("metadata", "annotations", "trainguard.dev/verified", value="true"),
    ],
    ids=["ephemeral container", "image", "trainguard label", "any label", "trainguard annotation"],
)
def test_changes_to_spec_labels_or_trainguard_annotations_are_not_metadata_only(
    change: Callable[[Pod], None],
) -> None:
    old = deployment_pod()
    new = copy.deepcopy(old)
    change(new)
    assert not only_metadata_changed(old, new)
    assert not only_metadata_changed(new, old)  # removing them neither


# --------------------------------------------------------------------------- tenant namespaces


def test_tenant_namespaces_carry_the_tenant_and_enforce_restricted() -> None:
    labels = tenant_namespace_labels("team-a")
    assert labels[TENANT_NAMESPACE_LABEL] == "team-a"
    assert labels[PSA_ENFORCE] == "restricted"
    assert labels[PSA_ENFORCE_VERSION] == "latest"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_changes_to_other_labels_or_to_trainguards_values_are_not_refused() -> None:
    kept = {**tenant_namespace_labels("team-a"), "team": "vision"}
    assert protected_label_changes(kept, {**kept, "team": "nlp", "cost-center": "42"}, "team-a") == []
    # Not yet labelled (the operator sets the labels): an unrelated update, or setting trainguard's values.
    assert protected_label_changes({"team": "vision"}, {"team": "nlp"}, "team-a") == []
    assert protected_label_changes({}, tenant_namespace_labels("team-a"), "team-a") == []


def test_every_change_to_a_protected_label_is_refused() -> None:
    old = tenant_namespace_labels("team-a")
    new = {k: v for k, v in old.items() if k != PSA_ENFORCE_VERSION}
    new[PSA_ENFORCE] = "privileged"
    new[TENANT_NAMESPACE_LABEL] = "team-b"
    errors = protected_label_changes(old, new, "team-a")
    assert [(e.path, e.reason) for e in errors] == [
        ("metadata.labels[trainguard.dev/tenant]", "ProtectedNamespaceLabel"),
        ("metadata.labels[pod-security.kubernetes.io/enforce]", "ProtectedNamespaceLabel"),
        ("metadata.labels[pod-security.kubernetes.io/enforce-version]", "ProtectedNamespaceLabel"),
    ]
    text = [str(e) for e in errors]
    assert "kept by trainguard for tenant 'team-a': 'team-a', not 'team-b'" in text[0]
    assert "'restricted', not 'privileged'" in text[1]
    assert "('latest') and may not be removed" in text[2]
    assert all("ask the platform team to change the Tenant instead" in t for t in text)


def test_a_namespace_of_no_tenant_may_not_be_claimed_for_one() -> None:
    errors = protected_label_changes({}, {TENANT_NAMESPACE_LABEL: "team-a"}, None)
    assert [(e.path, e.reason) for e in errors] == [
        ("metadata.labels[trainguard.dev/tenant]", "ProtectedNamespaceLabel")
    ]
    assert "no Tenant lists this one" in str(errors[0])
    # Its Pod Security labels are not trainguard's, and a stray tenant label may go.
    assert protected_label_changes({}, {PSA_ENFORCE: "privileged"}, None) == []
    assert protected_label_changes({TENANT_NAMESPACE_LABEL: "team-a"}, {}, None) == []
