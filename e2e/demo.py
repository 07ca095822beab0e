"""`make demo`: show trainguard on the local cluster the way a researcher and a platform team see it."""

from __future__ import annotations

import json
import sys

from e2e.cluster.localcluster import Cluster, LocalCluster
from e2e.cluster.waiting import wait_for


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def show(cluster: Cluster, *args: str) -> str:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    result = cluster.kubectl(*args, check=False)
    print((result.stdout + result.stderr).rstrip(), flush=True)
    return result.stdout


def main() -> int:
    cluster = LocalCluster().up()
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    step("Simulated GPU nodes (kwok), 8 x nvidia.com/gpu each")
    show(
        cluster,
        "get",
        "nodes",
        "-o",
        'custom-columns=NAME:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu,READY:.status.conditions[?(@.type=="Ready")].status',
    )
    step("A pod asking for 8 GPUs is placed by kube-scheduler and runs")
    cluster.kubectl("create", "namespace", "demo", check=False)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "eight-gpus", "namespace": "demo"},
        "spec": {
            "containers": [
                {"name": "main", "image": "demo", "resources": {"limits": {"nvidia.com/gpu": "8"}}}
            ]
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(
        "the demo pod to run",
        lambda: (
            cluster.kubectl("get", "pod", "eight-gpus", "-n", "demo", "-o", "jsonpath={.status.phase}").stdout
            == "Running"
        ),
    )
    show(cluster, "get", "pods", "-n", "demo", "-o", "wide")
    return 0


if __name__ == "__main__":
    sys.exit(main())
