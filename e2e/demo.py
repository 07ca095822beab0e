"""`make demo`: trainguard on the local cluster, the way a platform team and researchers meet it."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.harness import (
    RELEASE_NAMESPACE,
    ROOT,
    OperatorProcess,
    install_chart,
    publish_example_image,
    service_account_kubeconfig,
    wait_for_terminating_namespaces,
)
from e2e.cluster.localcluster import Cluster, LocalCluster
from e2e.cluster.registry import Registry
from e2e.cluster.waiting import wait_for

RESEARCHER = ["--as=researcher-a", "--as-group=team-a"]
TEAMMATE = ["--as=teammate-a", "--as-group=team-a"]
OUTSIDER = ["--as=researcher-b", "--as-group=team-b"]
EXAMPLES = ROOT / "examples"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def show(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    result = cluster.kubectl(*args, check=False, input=stdin)
    print((result.stdout + result.stderr).rstrip(), flush=True)
    return result.stdout


def job_condition(cluster: Cluster, name: str, kind: str) -> dict[str, str] | None:
    out = cluster.kubectl("get", "tj", name, "-n", "team-a", "-o", "json", check=False).stdout
    if not out:
        return None
    conditions = json.loads(out).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), None)


def main() -> int:
    cluster = LocalCluster().up()
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    step("Simulated GPU nodes (kwok): kube-scheduler places pods on them")
    show(
        cluster,
        "get",
        "nodes",
        "-o",
        "custom-columns=NAME:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu,"
        'READY:.status.conditions[?(@.type=="Ready")].status',
    )

    step(
        "Platform team: helm install trainguard (CRDs, RBAC); the operator runs as the chart's ServiceAccount"
    )
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    install_chart(cluster)
    show(
        cluster,
        "get",
        "serviceaccount,clusterrole",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=trainguard",
    )
    workdir = Path(tempfile.mkdtemp(prefix="trainguard-demo-"))
    kubeconfig = service_account_kubeconfig(cluster, workdir, RELEASE_NAMESPACE, "trainguard")
    operator = OperatorProcess(workdir / "operator.log", ["team-*"], kubeconfig, registry=cluster.registry)
    operator.start()
    try:
        step("Platform team: a Tenant for team A, its namespace and its shared (read-only) volumes")
        # A team-a left by an earlier run is deleted now that an operator serves the webhooks.
        cluster.kubectl("delete", "namespace", "team-a", "--ignore-not-found", "--wait=false")
        wait_for_terminating_namespaces(cluster, timeout=300, only=("team-a",))
        cluster.kubectl("create", "namespace", "team-a")
        show(cluster, "apply", "-f", str(EXAMPLES / "tenant-team-a.yaml"))
        show(cluster, "apply", "-f", str(EXAMPLES / "shared-storage-team-a.yaml"))
        wait_for(
            "team A's members to be bound",
            lambda: (
                cluster.kubectl(
                    "auth", "can-i", "create", "tj", "-n", "team-a", *RESEARCHER, check=False
                ).stdout.strip()
                == "yes"
            ),
        )

        step("Team A's release pipeline: push the trainer image and sign it with cosign (demo key)")
        digest = publish_example_image(cluster, workdir)
        print(f"pushed and signed {cluster.registry}/team-a/trainer:v1 = {digest}")
        unsigned = Registry(cluster.ports.registry, workdir).push(
            "team-a/trainer", "debug", "nobody reviewed this"
        )
        print(f"pushed, not signed: {cluster.registry}/team-a/trainer:debug = {unsigned}")

        step("Researcher A: an unsigned image is refused at kubectl apply, with the fix")
        sneaky = _load(EXAMPLES / "trainingjob-llm.yaml")
        sneaky["metadata"]["name"] = "sneaky"
        sneaky["spec"]["image"] = f"{cluster.registry}/team-a/trainer:debug"
        show(cluster, "apply", "-f", "-", *RESEARCHER, stdin=json.dumps(sneaky))

        step("Researcher A: a malformed job is refused by the API server, with the field and the rule")
        bad = json.loads(json.dumps(_load(EXAMPLES / "trainingjob-llm.yaml")))
        bad["metadata"]["name"] = "typo"
        bad["spec"]["replicas"] = -1
        bad["spec"]["integrity"]["mode"] = "Paranoid"
        show(cluster, "apply", "-f", "-", *RESEARCHER, stdin=json.dumps(bad))

        step("Researcher A: a job larger than the tenant can ever hold is refused, with the numbers")
        big = json.loads(json.dumps(_load(EXAMPLES / "trainingjob-llm.yaml")))
        big["metadata"]["name"] = "too-big"
        big["spec"]["replicas"] = 4
        show(cluster, "apply", "-f", "-", *RESEARCHER, stdin=json.dumps(big))

        step("Researcher A: the example job is admitted, pinned to the signed digest, and runs: 2 x 8 GPUs")
        show(cluster, "apply", "-f", str(EXAMPLES / "trainingjob-llm.yaml"), *RESEARCHER)
        show(
            cluster,
            "get",
            "tj",
            "llm-finetune",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.image}{'\\n'}",
            *RESEARCHER,
        )
        wait_for(
            "the job to run",
            lambda: (job_condition(cluster, "llm-finetune", "Running") or {}).get("status") == "True",
        )
        show(cluster, "get", "tj", "-n", "team-a", "-o", "wide", *RESEARCHER)
        show(cluster, "get", "pods,pvc,svc,networkpolicy", "-n", "team-a", "-o", "wide")

        step("Teammate A (same tenant, same access): the job is not theirs to change, delete or enter")
        show(cluster, "get", "tj", "llm-finetune", "-n", "team-a", "-o", "jsonpath={.spec.owner}{'\\n'}")
        show(cluster, "patch", "tj", "llm-finetune", "-n", "team-a", "--type=merge",
             "-p", '{"spec":{"maxRunSeconds":60}}', *TEAMMATE)  # fmt: skip
        show(cluster, "delete", "tj", "llm-finetune", "-n", "team-a", *TEAMMATE)
        show(cluster, *TEAMMATE, "exec", "llm-finetune-0-a0", "-n", "team-a", "-c", "trainer", "--", "true")

        step("Only the operator touches a job's pods; other teams see nothing")
        show(cluster, "delete", "pod", "llm-finetune-0-a0", "-n", "team-a", *RESEARCHER)
        gpu_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "side-job", "namespace": "team-a"},
                   "spec": {"containers": [{"name": "m", "image": f"{cluster.registry}/team-a/trainer:v1",
                                            "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}  # fmt: skip
        cluster.kubectl(
            "create", "rolebinding", "ops", "-n", "team-a", "--clusterrole=edit", "--user=ops-person"
        )
        show(cluster, "apply", "-f", "-", "--as=ops-person", stdin=json.dumps(gpu_pod))
        show(cluster, "get", "tj", "-n", "team-a", *OUTSIDER)

        step("Kueue decides who runs: team A's quota is full, so a second job waits and says why")
        show(cluster, "get", "clusterqueue", "tenant-team-a")
        show(cluster, "get", "localqueue", "-n", "team-a", *RESEARCHER)
        second = json.loads(json.dumps(_load(EXAMPLES / "trainingjob-llm.yaml")))
        second["metadata"]["name"] = "llm-eval"
        second["spec"]["replicas"] = 1
        show(cluster, "apply", "-f", "-", *RESEARCHER, stdin=json.dumps(second))
        wait_for(
            "the second job to wait for quota",
            lambda: (
                (job_condition(cluster, "llm-eval", "Queued") or {}).get("reason", "").startswith("Waiting")
            ),
        )
        show(cluster, "get", "tj", "-n", "team-a", *RESEARCHER)
        show(cluster, "get", "tj", "llm-eval", "-n", "team-a", "-o",
             "jsonpath={.status.conditions[?(@.type=='Queued')].message}{'\\n'}", *RESEARCHER)  # fmt: skip

        step("The first job finishes (its simulated trainers exit 0): Kueue admits the second, which starts")
        for i in range(2):
            cluster.kubectl("annotate", "pod", f"llm-finetune-{i}-a0", "-n", "team-a",
                            "kwok.trainguard.test/exit-code=0", "--overwrite")  # fmt: skip
        wait_for(
            "the second job to run",
            lambda: (job_condition(cluster, "llm-eval", "Running") or {}).get("status") == "True",
            timeout=90,
        )
        show(cluster, "get", "tj", "-n", "team-a", *RESEARCHER)
    finally:
        operator.stop()
    print(f"\nThe cluster keeps running (make cluster-down stops it). Operator log: {operator.log_path}")
    return 0


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


if __name__ == "__main__":
    sys.exit(main())
