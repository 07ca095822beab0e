"""The local control plane behaves like a real GPU cluster: scheduling, RBAC, impersonation."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

from e2e.cluster.localcluster import COMPONENTS, LOOPBACK, Cluster, _read_pids
from e2e.cluster.waiting import wait_for


def gpu_pod(name: str, gpus: int) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.local/trainer:v1",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    }
                ]
            },
        }
    )


def pod(cluster: Cluster, namespace: str, name: str) -> dict:  # type: ignore[type-arg]
    out = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout
    return json.loads(out)  # type: ignore[no-any-return]


def condition(obj: dict, kind: str) -> dict | None:  # type: ignore[type-arg]
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return cond  # type: ignore[no-any-return]
    return None


def test_nodes_offer_eight_gpus_each(cluster: Cluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert len(nodes) == 4
    for node in nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert condition(node, "Ready")["status"] == "True"  # type: ignore[index]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]


def test_pod_with_eight_gpus_runs(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod("eight", 8))
    running = wait_for(
        "the 8-GPU pod to run", lambda: pod(cluster, namespace, "eight")["status"].get("phase") == "Running"
    )
    assert running
    body = pod(cluster, namespace, "eight")
    assert body["spec"]["nodeName"].startswith("gpu-node-")
    # ExtendedResourceToleration added the GPU taint's toleration.
    assert any(t.get("key") == "nvidia.com/gpu" for t in body["spec"]["tolerations"])
    assert body["status"]["podIP"]


def test_pod_with_nine_gpus_stays_pending_with_scheduler_reason(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod("nine", 9))

    def unschedulable() -> dict | None:  # type: ignore[type-arg]
        cond = condition(pod(cluster, namespace, "nine"), "PodScheduled")
        return cond if cond and cond.get("reason") == "Unschedulable" else None

    cond = wait_for("the scheduler to report the 9-GPU pod unschedulable", unschedulable)
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert pod(cluster, namespace, "nine")["status"]["phase"] == "Pending"


def test_simulated_pods_finish_when_a_test_asks(cluster: Cluster, namespace: str) -> None:
    for name in ("ok", "bad"):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_pod(name, 1))
        wait_for(
            f"{name} to run", lambda n=name: pod(cluster, namespace, n)["status"].get("phase") == "Running"
        )
    cluster.kubectl("annotate", "pod", "ok", "-n", namespace, "kwok.trainguard.test/exit-code=0")
    cluster.kubectl("annotate", "pod", "bad", "-n", namespace, "kwok.trainguard.test/exit-code=3")
    wait_for("ok to succeed", lambda: pod(cluster, namespace, "ok")["status"]["phase"] == "Succeeded")
    wait_for("bad to fail", lambda: pod(cluster, namespace, "bad")["status"]["phase"] == "Failed")
    state = pod(cluster, namespace, "bad")["status"]["containerStatuses"][0]["state"]
    assert state["terminated"]["exitCode"] == 3


def test_a_claim_is_provisioned_and_its_volume_reclaimed(cluster: Cluster, namespace: str) -> None:
    """The simulated storage driver binds a claim of the default class to a volume of its own,
    and deletes the volume when the claim goes (reclaim policy Delete)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "out"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(claim))

    def bound() -> dict[str, Any] | None:
        got = json.loads(cluster.kubectl("get", "pvc", "out", "-n", namespace, "-o", "json").stdout)
        return got if got.get("status", {}).get("phase") == "Bound" else None

    volume = wait_for("the claim to be bound", bound, timeout=30)["spec"]["volumeName"]
    pv = json.loads(cluster.kubectl("get", "pv", volume, "-o", "json").stdout)
    assert pv["spec"]["storageClassName"] == "standard"
    assert pv["spec"]["claimRef"]["name"] == "out"
    cluster.kubectl("delete", "pvc", "out", "-n", namespace)
    wait_for(
        "the released volume to be deleted",
        lambda: cluster.kubectl("get", "pv", volume, check=False).returncode != 0,
        timeout=30,
    )


def test_impersonated_researcher_is_bound_by_rbac(cluster: Cluster, namespace: str) -> None:
    as_researcher = ["--as=researcher-a", "--as-group=team-a"]
    denied = cluster.kubectl("get", "pods", "-n", namespace, *as_researcher, check=False)
    assert denied.returncode != 0
    assert 'User "researcher-a" cannot list resource "pods"' in denied.stderr

    cluster.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=get,list", "--resource=pods")
    cluster.kubectl(
        "create", "rolebinding", "team-a-reads", "-n", namespace, "--role=pod-reader", "--group=team-a"
    )
    wait_for(
        "the binding to apply",
        lambda: cluster.kubectl("get", "pods", "-n", namespace, *as_researcher, check=False).returncode == 0,
    )
    # Reading is granted, deleting is not, and another team gets nothing.
    can_delete = cluster.kubectl(
        "auth", "can-i", "delete", "pods", "-n", namespace, *as_researcher, check=False
    )
    assert can_delete.stdout.strip() == "no"
    other = cluster.kubectl(
        "get", "pods", "-n", namespace, "--as=researcher-b", "--as-group=team-b", check=False
    )
    assert other.returncode != 0
    assert "forbidden" in other.stderr.lower()


def test_every_listener_is_on_loopback(cluster: Cluster) -> None:
    pids = set(_read_pids(cluster.state).values())
    assert len(pids) == len(COMPONENTS)
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert ours, out
    for line in ours:
        local = line.split()[3]
        assert local.startswith((f"{LOOPBACK}:", "[::1]:")), (
            f"a control-plane process listens beyond loopback: {line}"
        )
    with socket.create_connection((LOOPBACK, cluster.ports.apiserver), timeout=2):
        pass
