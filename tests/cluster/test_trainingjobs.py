"""TrainingJobs end to end against the real control plane, with the operator as its own process."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.harness import (
    RELEASE_NAMESPACE,
    OperatorProcess,
    SignedImage,
    TenantSpace,
    make_tenant,
    service_account_kubeconfig,
)
from e2e.cluster.localcluster import Cluster
from e2e.cluster.waiting import wait_for

SELECTOR = "trainguard.dev/job-name={}"


def job(name: str, space: TenantSpace, **spec: Any) -> dict[str, Any]:
    """Two replicas of eight GPUs unless `spec` says otherwise."""
    return space.job(name, **{"replicas": 2, "resources": {"gpusPerReplica": 8}, **spec})


def condition(space: TenantSpace, name: str, kind: str) -> dict[str, Any] | None:
    status = space.get("trainingjob", name).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def wait_condition(
    space: TenantSpace, name: str, kind: str, status: str = "True", timeout: float = 30
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = condition(space, name, kind)
        return found if found and found["status"] == status else None

    return wait_for(f"{name} to have {kind}={status}", probe, timeout)


def finish(space: TenantSpace, pod: str, code: int) -> None:
    space.cluster.kubectl(
        "annotate",
        "pod",
        pod,
        "-n",
        space.namespace,
        f"kwok.trainguard.test/exit-code={code}",
        "--overwrite",
    )


def pod_names(space: TenantSpace, name: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in space.list("pods", SELECTOR.format(name)))


@pytest.mark.usefixtures("operator")
def test_job_runs_on_gpu_nodes_and_succeeds(tenant_space: TenantSpace) -> None:
    space = tenant_space
    out = space.apply(job("train", space))
    assert "trainingjob.trainguard.dev/train created" in out.stdout
    wait_condition(space, "train", "Running")
    pods = space.list("pods", SELECTOR.format("train"))
    assert sorted(p["metadata"]["name"] for p in pods) == ["train-0-a0", "train-1-a0"]
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
    status = space.get("trainingjob", "train")["status"]
    assert status["replicas"]["ready"] == 2
    assert status["totalGPUs"] == 16
    assert status["observedGeneration"] == 1
    assert condition(space, "train", "Admitted")["status"] == "True"  # type: ignore[index]
    # Every child exists, owned by the job.
    for kind, child in [
        ("service", "train"),
        ("networkpolicy", "train-isolation"),
        ("pvc", "train-output"),
        ("serviceaccount", "train-runner"),
    ]:
        owners = space.get(kind, child)["metadata"]["ownerReferences"]
        assert owners[0]["kind"] == "TrainingJob"
        assert owners[0]["name"] == "train"
    assert space.get("pvc", "train-output")["status"]["phase"] == "Bound"
    table = space.cluster.kubectl("get", "tj", "train", "-n", space.namespace).stdout
    assert "Running" in table.splitlines()[1]
    assert space.tenant in table

    for pod in pod_names(space, "train"):
        finish(space, pod, 0)
    done = wait_condition(space, "train", "Succeeded")
    assert done["reason"] == "AllReplicasSucceeded"
    assert space.get("trainingjob", "train")["status"]["completionTime"]
    events = space.cluster.kubectl(
        "get", "events", "-n", space.namespace, "--field-selector", "involvedObject.name=train"
    ).stdout
    assert "Succeeded" in events


@pytest.mark.usefixtures("operator")
def test_failed_replica_restarts_the_gang_after_back_off_then_fails(tenant_space: TenantSpace) -> None:
    space = tenant_space
    space.apply(job("flaky", space, failurePolicy={"maxRestarts": 1, "backoffSeconds": 3}))
    wait_condition(space, "flaky", "Running")
    finish(space, "flaky-1-a0", 2)

    restarted = wait_for(
        "the gang's second attempt",
        lambda: pod_names(space, "flaky") == ["flaky-0-a1", "flaky-1-a1"],
        timeout=30,
    )
    assert restarted
    status = space.get("trainingjob", "flaky")["status"]
    assert status["restarts"] == 1
    restart_time = datetime.datetime.fromisoformat(status["lastRestartTime"].replace("Z", "+00:00"))
    for pod in space.list("pods", SELECTOR.format("flaky")):
        created = datetime.datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        assert (created - restart_time).total_seconds() >= 2, "the back-off of 3 s was not honoured"

    wait_condition(space, "flaky", "Running")
    finish(space, "flaky-0-a1", 137)
    failed = wait_condition(space, "flaky", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "replica 0 failed with exit code 137" in failed["message"]
    # The failed job's remaining pod is stopped.
    wait_for("the other replica to be stopped", lambda: pod_names(space, "flaky") == ["flaky-0-a1"])


@pytest.mark.usefixtures("operator")
def test_a_changed_shared_input_fails_the_job_naming_the_file(tenant_space: TenantSpace) -> None:
    """The pod of a job with a verified shared folder is admitted (Pod Security restricted, the pod
    guard) with verify-inputs before the sidecar; a refusal by verify-inputs (written here into
    the pod's status as the kubelet would: simulated nodes run no container) fails the job with
    SharedInputChanged at once, naming the file, without a restart."""
    space = tenant_space
    shared = [{"name": "dataset", "mountPath": "/shared/code", "verification": "SignedManifest"}]
    space.apply(job("inputs", space, replicas=1, sharedStorage=shared, failurePolicy={"maxRestarts": 3}))
    [pod] = wait_for("the job's pod", lambda: space.list("pods", SELECTOR.format("inputs")), timeout=30)
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["verify-inputs", "integrity-sidecar"]
    assert init[0]["args"][-1] == "/shared/code"
    # Its claim does not exist here, so the pod stays Pending and no simulated node touches its status.
    message = (
        "SharedInputChanged: shared input files differ from their signed manifest:\n"
        "* /shared/code/pkg/model.py: changed (sha256 0123456789ab…, 10 bytes; signed ba9876543210…, 9 bytes)"
    )
    refusal = {
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [
                {
                    "name": "verify-inputs",
                    "image": init[0]["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
                }
            ],
        }
    }
    space.cluster.kubectl(
        "patch", "pod", pod["metadata"]["name"], "-n", space.namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(refusal),
    )  # fmt: skip
    failed = wait_condition(space, "inputs", "Failed")
    assert failed["reason"] == "SharedInputChanged"
    assert "/shared/code/pkg/model.py: changed" in failed["message"]
    violation = condition(space, "inputs", "IntegrityViolation")
    assert violation is not None
    assert violation["reason"] == "SharedInputChanged"
    assert space.get("trainingjob", "inputs")["status"].get("restarts", 0) == 0


@pytest.mark.usefixtures("operator")
def test_deleting_the_job_deletes_every_child(tenant_space: TenantSpace) -> None:
    space = tenant_space
    space.apply(job("gone", space, replicas=1))
    wait_condition(space, "gone", "Running")
    space.cluster.kubectl("delete", "trainingjob", "gone", "-n", space.namespace)

    def children_left() -> list[str]:
        out = space.cluster.kubectl(
            "get",
            "pods,svc,networkpolicy,pvc,serviceaccount",
            "-n",
            space.namespace,
            "-l",
            SELECTOR.format("gone"),
            "-o",
            "name",
        ).stdout
        return out.split()

    wait_for("the garbage collector to remove every child", lambda: children_left() == [] or None, timeout=60)


def test_the_image_is_pinned_to_the_verified_digest(tenant_space: TenantSpace, signed: SignedImage) -> None:
    space = tenant_space
    space.apply(job("pinned", space, replicas=1))
    spec_image = space.get("trainingjob", "pinned")["spec"]["image"]
    assert spec_image == f"{signed.image}@{signed.digest}"
    status = wait_for(
        "the pinned image in status",
        lambda: space.get("trainingjob", "pinned").get("status", {}).get("image"),  # none yet: wait
    )
    assert status == {"reference": signed.image, "digest": signed.digest, "signer": "release"}
    wait_condition(space, "pinned", "Running")
    pod = space.list("pods", SELECTOR.format("pinned"))[0]
    assert pod["spec"]["containers"][0]["image"] == spec_image


@pytest.mark.usefixtures("operator")  # admits the job; the operator under test only reconciles
def test_operator_killed_mid_reconcile_converges_without_duplicates(
    helm_release: Cluster, tmp_path: Path, signed: SignedImage
) -> None:
    crds = helm_release
    space = make_tenant(crds, prefix="tjr", signed=signed, nominal=0)
    kubeconfig = service_account_kubeconfig(crds, tmp_path, RELEASE_NAMESPACE, "trainguard")
    op = OperatorProcess(
        tmp_path / "operator.log", [space.namespace], kubeconfig, registry=crds.registry, admission=False
    )
    try:
        op.start()
        space.apply(job("big", space, replicas=24, resources={"gpusPerReplica": 0, "cpu": "1"}))
        # Kill the operator while it is creating the gang.
        wait_for("the first pods", lambda: len(pod_names(space, "big")) >= 1, timeout=30, interval=0.01)
        op.kill()
        partial = len(pod_names(space, "big"))
        op.start()
        wait_condition(space, "big", "Running", timeout=60)
        names = pod_names(space, "big")
        assert names == sorted(f"big-{i}-a0" for i in range(24)), names
        assert space.get("trainingjob", "big")["status"]["restarts"] == 0
        assert len(space.list("services", SELECTOR.format("big"))) == 1
        assert len(space.list("pvc", SELECTOR.format("big"))) == 1
        print(f"operator killed with {partial} of 24 pods created")
    finally:
        op.stop()
        crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
        crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)
