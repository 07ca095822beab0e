"""Golden files for every manifest the operator builds, plus explicit checks of the hardening."""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import pytest
import yaml

from tests.unit.manifests import ROOT, SETTINGS, load
from trainguard.admission.configurations import Endpoint, Trusted, build_webhook_configurations
from trainguard.api import constants as c
from trainguard.api.models import InputVerification, Tenant, TrainingJob
from trainguard.settings import Settings
from trainguard.workload import builders as b

GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture
def job() -> TrainingJob:
    return TrainingJob.model_validate(
        load("examples/trainingjob-llm.yaml", uid="11111111-2222-3333-4444-555555555555", generation=1)
    )


@pytest.fixture
def tenant() -> Tenant:
    return Tenant.model_validate(load("examples/tenant-team-a.yaml", uid="tenant-uid"))


def check_golden(name: str, manifest: Any) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(manifest, sort_keys=True)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path.name} is missing: run UPDATE_GOLDEN=1 pytest tests/unit/test_builders.py"
    assert text == path.read_text(), f"{path.name} differs; review and rerun with UPDATE_GOLDEN=1 if intended"


def test_golden_pod(job: TrainingJob, tenant: Tenant) -> None:
    check_golden("pod", b.build_pod(job, tenant, 1, 2, SETTINGS))


def test_golden_children(job: TrainingJob) -> None:
    for child in b.build_children(job, SETTINGS):
        check_golden(child["kind"].lower(), child)
    check_golden("secret", b.build_integrity_secret(job, bytes(32), SETTINGS))


def test_pod_is_hardened(job: TrainingJob, tenant: Tenant) -> None:
    pod = b.build_pod(job, tenant, 0, 0, SETTINGS)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "llm-finetune-runner"
    assert spec["hostNetwork"] is False
    assert spec["hostPID"] is False
    assert spec["hostIPC"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any("hostPath" in v for v in spec["volumes"])
    assert [c["name"] for c in spec["containers"]] == ["trainer"]
    # The sidecar is a native sidecar: started (socket ready) before the trainer, stopped after it.
    assert [(c["name"], c["restartPolicy"]) for c in spec["initContainers"]] == [
        ("integrity-sidecar", "Always")
    ]
    assert "startupProbe" in spec["initContainers"][0]
    for container in spec["containers"] + spec["initContainers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["privileged"] is False
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    trainer = spec["containers"][0]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["resources"]["requests"]["nvidia.com/gpu"] == "8"


def test_shared_storage_is_read_only_at_the_volume_level(job: TrainingJob, tenant: Tenant) -> None:
    pod = b.build_pod(job, tenant, 0, 0, SETTINGS)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["shared-imagenet"]["persistentVolumeClaim"] == {"claimName": "imagenet", "readOnly": True}
    assert volumes["shared-llama-base"]["persistentVolumeClaim"] == {
        "claimName": "llama-base",
        "readOnly": True,
    }
    # Only the job's own output claim is writable.
    writable = [
        v["name"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v and not v["persistentVolumeClaim"].get("readOnly")
    ]
    assert writable == ["output"]
    assert volumes["output"]["persistentVolumeClaim"]["claimName"] == "llm-finetune-output"
    for container in pod["spec"]["containers"]:
        for mount in container["volumeMounts"]:
            if mount["name"].startswith("shared-"):
                assert mount["readOnly"] is True
    sidecar_mounts = {m["name"] for m in pod["spec"]["initContainers"][0]["volumeMounts"]}
    assert sidecar_mounts == {"integrity", "integrity-token", "output", "sidecar-record", "sidecar-tmp"}, (
        "the sidecar never sees shared storage"
    )
    # The sidecar's signed record lives where only it looks: the trainer cannot read when a check
    # ran from it, nor edit it.
    trainer_mounts = {m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert "sidecar-record" not in trainer_mounts
    report = next(a for a in pod["spec"]["initContainers"][0]["args"] if a.startswith("--report="))
    assert report == f"--report={b.SIDECAR_RECORD_DIR}/reports.jsonl"
    sidecar_output = next(
        m for m in pod["spec"]["initContainers"][0]["volumeMounts"] if m["name"] == "output"
    )
    assert sidecar_output["readOnly"] is True, "the sidecar reads checkpoints, it never writes them"
    trainer_mounts = {m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert "integrity-token" not in trainer_mounts, "the trainer never sees the sidecar's token"


def test_no_key_in_the_pod_only_the_sidecars_token_to_ask_for_it(job: TrainingJob, tenant: Tenant) -> None:
    pod = b.build_pod(job, tenant, 0, 0, SETTINGS)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert not any("secret" in v for v in volumes.values()), (
        "no Secret is mounted: the key is not in the namespace"
    )
    assert pod["spec"]["automountServiceAccountToken"] is False
    token = volumes["integrity-token"]["projected"]
    assert token["sources"] == [
        {
            "serviceAccountToken": {
                "audience": "trainguard.dev/integrity",
                "expirationSeconds": 600,
                "path": "token",
            }
        }
    ]
    sidecar = pod["spec"]["initContainers"][0]
    mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "integrity-token")
    assert mount == {"name": "integrity-token", "mountPath": "/var/run/trainguard-token", "readOnly": True}
    assert "--token-file=/var/run/trainguard-token/token" in sidecar["args"]
    base = SETTINGS.report_url
    assert f"--key-url={base}/keys/team-a/llm-finetune" in sidecar["args"]
    assert f"--report-url={base}/team-a/llm-finetune" in sidecar["args"]
    assert not any(a.startswith("--key-file") for a in sidecar["args"])
    for container in pod["spec"]["containers"]:
        assert "integrity-token" not in {m["name"] for m in container["volumeMounts"]}


def test_the_key_lives_in_the_operators_namespace_named_by_the_jobs_uid(job: TrainingJob) -> None:
    settings = b.WorkloadSettings(operator_namespace="platform-trainguard")
    secret = b.build_integrity_secret(job, b"k" * 32, settings)
    meta = secret["metadata"]
    assert meta["namespace"] == "platform-trainguard"
    assert meta["name"] == "integrity-key-11111111-2222-3333-4444-555555555555"
    assert meta["name"] == b.integrity_secret_name(job.metadata.uid)
    assert "ownerReferences" not in meta, "owner references cannot cross namespaces"
    assert meta["labels"] == {
        c.LABEL_MANAGED_BY: "trainguard",
        c.LABEL_COMPONENT: "integrity-key",
        c.LABEL_JOB: "llm-finetune",
        c.LABEL_JOB_UID: job.metadata.uid,
        c.LABEL_TENANT: "team-a",
        "trainguard.dev/job-namespace": "team-a",
    }
    assert secret["data"] == {"key": "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="}


def test_unknown_shared_storage_is_never_built(job: TrainingJob, tenant: Tenant) -> None:
    bare = tenant.model_copy(update={"spec": tenant.spec.model_copy(update={"shared_storage": []})})
    with pytest.raises(ValueError, match="not shared storage of tenant"):
        b.build_pod(job, bare, 0, 0, SETTINGS)


def test_every_child_is_owned_by_the_job_and_labelled(job: TrainingJob, tenant: Tenant) -> None:
    for child in [*b.build_children(job, SETTINGS), *b.build_pods(job, tenant, 0, SETTINGS)]:
        meta = child["metadata"]
        assert meta["ownerReferences"] == [b.owner_reference(job)]
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"][c.LABEL_JOB_UID] == job.metadata.uid
        assert meta["labels"][c.LABEL_TENANT] == "team-a"
        assert meta["namespace"] == "team-a"


def test_network_policy_admits_only_the_same_job(job: TrainingJob) -> None:
    policy = b.build_network_policy(job, SETTINGS)["spec"]
    same = {"podSelector": {"matchLabels": {c.LABEL_JOB_UID: job.metadata.uid}}}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"from": [same]}]
    assert policy["egress"][0] == {"to": [same]}
    assert {p["port"] for p in policy["egress"][1]["ports"]} == {53}


@pytest.mark.parametrize(
    "settings",
    [
        SETTINGS,
        # As the chart renders them for a release in another namespace, on another port.
        Settings(
            operator_namespace="platform-trainguard",
            integrity_port=9443,
            integrity_url="http://trainguard-integrity.platform-trainguard.svc:9443",
        ).workload(),
    ],
    ids=["defaults", "chart-elsewhere"],
)
def test_the_network_policy_lets_the_sidecar_reach_exactly_its_report_and_key_urls(
    job: TrainingJob, tenant: Tenant, settings: b.WorkloadSettings
) -> None:
    """Under a CNI that enforces NetworkPolicy, a sidecar whose report URL the policy does not allow
    would lose every verdict: the egress rule must name the URL's namespace and port, and no more."""
    sidecar = b.build_pod(job, tenant, 0, 0, settings)["spec"]["initContainers"][0]
    policy = b.build_network_policy(job, settings)["spec"]
    rules = [rule for rule in policy["egress"] if any("namespaceSelector" in peer for peer in rule["to"])]
    dns = [rule for rule in rules if {p["port"] for p in rule["ports"]} == {53}]
    (operator,) = [rule for rule in rules if rule not in dns]
    for flag in ("--report-url=", "--key-url="):
        url = urllib.parse.urlsplit(next(a for a in sidecar["args"] if a.startswith(flag)).removeprefix(flag))
        service, namespace, suffix = (url.hostname or "").split(".", 2)
        assert (service, suffix) == ("trainguard-integrity", "svc")
        (peer,) = operator["to"]
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "trainguard"}}
        assert operator["ports"] == [{"protocol": "TCP", "port": url.port}]


def test_gang_has_one_pod_per_replica_with_rendezvous_env(job: TrainingJob, tenant: Tenant) -> None:
    pods = b.build_pods(job, tenant, 3, SETTINGS)
    assert [p["metadata"]["name"] for p in pods] == ["llm-finetune-0-a3", "llm-finetune-1-a3"]
    env = {e["name"]: e["value"] for e in pods[1]["spec"]["containers"][0]["env"]}
    assert env["RANK"] == "1"
    assert env["WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "llm-finetune-0.llm-finetune"
    assert pods[1]["spec"]["hostname"] == "llm-finetune-1"
    assert pods[1]["spec"]["subdomain"] == "llm-finetune"


def test_a_single_replica_finds_itself_without_a_service(job: TrainingJob, tenant: Tenant) -> None:
    """No peers to find: no headless Service (nor the Endpoints churn its selector brings), no
    subdomain; the launcher's master is the pod's own hostname, which its /etc/hosts resolves."""
    single = job.model_copy(update={"spec": job.spec.model_copy(update={"replicas": 1})})
    assert "Service" not in [child["kind"] for child in b.build_children(single, SETTINGS)]
    (pod,) = b.build_pods(single, tenant, 0, SETTINGS)
    assert "subdomain" not in pod["spec"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == pod["spec"]["hostname"] == "llm-finetune-0"
    assert env["WORLD_SIZE"] == "1"
    assert "Service" in [child["kind"] for child in b.build_children(job, SETTINGS)]


def _torchrun_options(pod: dict[str, Any]) -> Any:
    """What torchrun makes of a pod's command and environment (its own parser reads PET_*)."""
    from torch.distributed.run import parse_args

    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    argv = [*container["command"][1:], *container.get("args", [])]
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return parse_args(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_torchrun_finds_its_node_rank_and_master_in_each_replica(job: TrainingJob, tenant: Tenant) -> None:
    """The example's own command (`torchrun --nnodes=2 --nproc-per-node=8 train.py`) names no
    node rank: without PET_NODE_RANK every replica would start as node 0 and the rendezvous hang."""
    pods = b.build_pods(job, tenant, 1, SETTINGS)
    options = [_torchrun_options(p) for p in pods]
    assert [o.node_rank for o in options] == [0, 1]
    assert {(o.nnodes, o.nproc_per_node, o.master_addr, o.master_port) for o in options} == {
        ("2", "8", "llm-finetune-0.llm-finetune", 29500)
    }
    # With no flags at all, the environment alone says the same.
    bare = job.model_copy(update={"spec": job.spec.model_copy(update={"command": ["torchrun", "train.py"]})})
    options = [_torchrun_options(p) for p in b.build_pods(bare, tenant, 1, SETTINGS)]
    assert [(o.nnodes, o.node_rank, o.nproc_per_node) for o in options] == [("2", 0, "8"), ("2", 1, "8")]


def test_a_cpu_replica_runs_one_process_and_a_jobs_own_env_wins(job: TrainingJob, tenant: Tenant) -> None:
    spec = job.spec.model_copy(
        update={
            "resources": job.spec.resources.model_copy(update={"gpus_per_replica": 0}),
            "env": [*job.spec.env, type(job.spec.env[0])(name="PET_MASTER_PORT", value="23456")],
        }
    )
    pod = b.build_pods(job.model_copy(update={"spec": spec}), tenant, 1, SETTINGS)[0]
    env = pod["spec"]["containers"][0]["env"]
    assert {e["name"]: e["value"] for e in env}["PET_NPROC_PER_NODE"] == "1"
    # Kubernetes takes the last of two entries of one name: the job's own comes last.
    assert [e["value"] for e in env if e["name"] == "PET_MASTER_PORT"] == ["29500", "23456"]
    assert _torchrun_options(pod).master_port == 23456


def test_integrity_off_means_no_sidecar(job: TrainingJob, tenant: Tenant) -> None:
    off = job.model_copy(
        update={
            "spec": job.spec.model_copy(
                update={"integrity": job.spec.integrity.model_copy(update={"mode": "Off"})}
            )
        }
    )
    pod = b.build_pod(off, tenant, 0, 0, SETTINGS)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["trainer"]
    assert "initContainers" not in pod["spec"]


def with_gpus(job: TrainingJob, gpus: int) -> TrainingJob:
    resources = job.spec.resources.model_copy(update={"gpus_per_replica": gpus})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"resources": resources})})


def test_the_sidecar_is_out_of_the_trainers_reach(job: TrainingJob, tenant: Tenant) -> None:
    pod = b.build_pod(job, tenant, 0, 0, SETTINGS)
    [trainer], [sidecar] = pod["spec"]["containers"], pod["spec"]["initContainers"]
    # GPU job: CUDA IPC needs one process namespace, so the sidecar runs as its own user (no
    # ptrace, no /proc/<pid>/mem, no signals from the trainer) in the same group (the socket).
    assert pod["spec"]["shareProcessNamespace"] is True
    assert sidecar["securityContext"]["runAsUser"] != trainer["securityContext"]["runAsUser"]
    assert sidecar["securityContext"]["runAsGroup"] == trainer["securityContext"]["runAsGroup"]
    assert "integrity-key" not in {m["name"] for m in trainer["volumeMounts"]}
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"  # sees the GPUs, requests none
    assert c.GPU_RESOURCE not in sidecar["resources"]["limits"]
    assert not any(e["name"].startswith("NVIDIA_") for e in trainer["env"])

    cpu_pod = b.build_pod(with_gpus(job, 0), tenant, 0, 0, SETTINGS)
    cpu_sidecar = cpu_pod["spec"]["initContainers"][0]
    assert "shareProcessNamespace" not in cpu_pod["spec"]  # shared files are enough on the CPU
    assert not any(e["name"].startswith("NVIDIA_") for e in cpu_sidecar["env"])
    assert "sidecar-tmp" not in {v["name"] for v in cpu_pod["spec"]["volumes"]}
    assert cpu_sidecar["securityContext"]["runAsUser"] == b.SIDECAR_RUN_AS


def test_webhook_configurations_fail_closed_and_scope_the_pod_guard() -> None:
    trusted = Trusted(
        frozenset({"system:serviceaccount:trainguard-system:trainguard"}),
        frozenset({"system:serviceaccount:kueue-system:kueue-controller-manager"}),
    )
    local = build_webhook_configurations("tg", Endpoint("Q0E=", url_base="https://127.0.0.1:9443"), trusted)
    in_cluster = build_webhook_configurations(
        "tg",
        Endpoint(
            "Q0E=",
            service_namespace="trainguard-system",
            service_name="trainguard-webhook",
            service_port=9443,
        ),
        trusted,
    )
    check_golden("webhooks-local", local)
    check_golden("webhooks-in-cluster", in_cluster)
    mutating, validating = local
    assert mutating["webhooks"][0]["clientConfig"]["url"] == "https://127.0.0.1:9443/admit-trainingjob"
    for hook in mutating["webhooks"] + validating["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] == 5  # as the chart's default (values.yaml)
    scoped = {h["name"]: "namespaceSelector" in h for h in validating["webhooks"]}
    assert scoped == {
        "validate-trainingjob.trainguard.dev": False,  # a job outside tenant namespaces must be refused
        "pod-guard.trainguard.dev": True,
        "pod-guard-ephemeral.trainguard.dev": True,
        "pod-connect-guard.trainguard.dev": True,
        "token-guard.trainguard.dev": True,
        "kueue-guard.trainguard.dev": True,  # LocalQueues and Workloads of tenant namespaces
        "kueue-queue-guard.trainguard.dev": False,  # cluster-scoped: selected by trainguard's label
        "namespace-guard.trainguard.dev": False,  # selected by the namespace object itself instead
    }
    queue_guard = validating["webhooks"][6]
    assert queue_guard["objectSelector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "trainguard"}}
    assert queue_guard["rules"][0]["operations"] == ["UPDATE", "DELETE"]
    namespace_guard = validating["webhooks"][7]
    assert namespace_guard["objectSelector"] == {
        "matchExpressions": [{"key": "trainguard.dev/tenant", "operator": "Exists"}]
    }
    assert validating["webhooks"][0]["rules"][0]["operations"] == ["CREATE", "UPDATE", "DELETE"]
    assert validating["webhooks"][3]["rules"][0]["resources"] == [
        "pods/exec",
        "pods/attach",
        "pods/portforward",
    ]
    service = in_cluster[1]["webhooks"][3]["clientConfig"]["service"]
    assert service == {
        "namespace": "trainguard-system",
        "name": "trainguard-webhook",
        "port": 9443,
        "path": "/pod-connect-guard",
    }


def with_verified_checkpoint(job: TrainingJob) -> TrainingJob:
    """The example job with its base checkpoint (llama-base) declared verified."""
    mounts = [
        m.model_copy(update={"verification": InputVerification.SIGNED_MANIFEST})
        if m.name == "llama-base"
        else m
        for m in job.spec.shared_storage
    ]
    return job.model_copy(update={"spec": job.spec.model_copy(update={"shared_storage": mounts})})


def test_golden_pod_with_a_verified_shared_folder(job: TrainingJob, tenant: Tenant) -> None:
    check_golden("pod-verified-inputs", b.build_pod(with_verified_checkpoint(job), tenant, 1, 2, SETTINGS))


def test_a_verified_folder_is_checked_before_anything_else_starts(job: TrainingJob, tenant: Tenant) -> None:
    pod = b.build_pod(with_verified_checkpoint(job), tenant, 0, 0, SETTINGS)
    verifier, sidecar = pod["spec"]["initContainers"]
    assert verifier["name"] == c.VERIFY_INPUTS_CONTAINER
    assert "restartPolicy" not in verifier  # runs to completion: a failure stops the pod before the trainer
    assert sidecar["name"] == c.SIDECAR_CONTAINER
    assert verifier["image"] == SETTINGS.sidecar_image  # trainguard's own image, never the tenant's
    assert verifier["command"] == ["python", "-m", "trainguard.inputs"]
    assert verifier["args"] == ["verify", "--termination-log=/dev/termination-log", "/checkpoints/base"]
    # Only the verified folder, read-only: not the dataset, not the output, no token.
    assert verifier["volumeMounts"] == [
        {"name": "shared-llama-base", "mountPath": "/checkpoints/base", "readOnly": True}
    ]
    assert verifier["securityContext"] == b.hardened_container_security()
    # The tenant's trusted signers, public keys only, in the pod spec nobody but the operator writes.
    [signers] = [e["value"] for e in verifier["env"] if e["name"] == c.INPUT_SIGNERS_ENV]
    assert [s["name"] for s in json.loads(signers)] == [s.name for s in tenant.spec.trusted_signers]
    assert all("PRIVATE" not in s["publicKey"] for s in json.loads(signers))
    trainer_env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert trainer_env[c.INPUT_SIGNERS_ENV] == signers
    assert json.loads(trainer_env[c.VERIFIED_INPUTS_ENV]) == ["/checkpoints/base"]


def test_no_verified_folder_means_no_verifier(job: TrainingJob, tenant: Tenant) -> None:
    pod = b.build_pod(job, tenant, 0, 0, SETTINGS)
    assert [i["name"] for i in pod["spec"]["initContainers"]] == [c.SIDECAR_CONTAINER]
    assert c.INPUT_SIGNERS_ENV not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}
