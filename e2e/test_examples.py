"""Every example in examples/ applied as its users would: the platform team as admin, the job
by an impersonated researcher bound only by the Tenant's membership and the chart's RBAC."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from e2e.cluster.harness import ROOT, OperatorProcess, publish_example_image
from e2e.cluster.localcluster import Cluster, bin_dir
from e2e.cluster.waiting import wait_for

EXAMPLES = ROOT / "examples"
RESEARCHER = ["--as=researcher-a", "--as-group=team-a"]
OUTSIDER = ["--as=researcher-b", "--as-group=team-b"]
EXAMPLE_REGISTRY = "127.0.0.1:26386"  # the default local cluster's, which the job example names


def example(cluster: Cluster, name: str) -> str:
    """An example as written, its image in this cluster's registry (another port base moves it)."""
    return (EXAMPLES / name).read_text().replace(EXAMPLE_REGISTRY, cluster.registry)


@pytest.fixture
def team_a(helm_release: Cluster, operator: OperatorProcess, tmp_path: Path) -> Cluster:
    cluster = helm_release
    for team in ("team-a", "team-b"):
        cluster.kubectl("delete", "namespace", team, "--ignore-not-found", "--wait=true", "--timeout=60s")
        cluster.kubectl("delete", "tenant", team, "--ignore-not-found")
        cluster.kubectl("create", "namespace", team)
    publish_example_image(cluster, tmp_path)
    return cluster


def conditions(cluster: Cluster, *as_user: str) -> dict[str, str]:
    out = cluster.kubectl("get", "tj", "llm-finetune", "-n", "team-a", "-o", "json", *as_user).stdout
    return {c["type"]: c["status"] for c in json.loads(out).get("status", {}).get("conditions", [])}


def test_examples_run_for_a_researcher_and_stay_out_of_reach_of_others(team_a: Cluster) -> None:
    cluster = team_a
    examples = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert examples == [
        "shared-storage-team-a.yaml",
        "tenant-team-a.yaml",
        "tenant-team-b.yaml",
        "trainingjob-llm.yaml",
    ]
    cluster.kubectl("apply", "-f", str(EXAMPLES / "tenant-team-a.yaml"))
    cluster.kubectl("apply", "-f", str(EXAMPLES / "shared-storage-team-a.yaml"))
    cluster.kubectl("apply", "-f", str(EXAMPLES / "tenant-team-b.yaml"))

    # The operator binds the tenant's members; until then the researcher may not create jobs.
    wait_for(
        "researcher-a to be allowed to create TrainingJobs",
        lambda: (
            cluster.kubectl(
                "auth", "can-i", "create", "trainingjobs", "-n", "team-a", *RESEARCHER, check=False
            ).stdout.strip()
            == "yes"
        ),
    )
    created = cluster.kubectl("apply", "-f", "-", *RESEARCHER, input=example(cluster, "trainingjob-llm.yaml"))
    assert "trainingjob.trainguard.dev/llm-finetune created" in created.stdout
    wait_for(
        "the example job to run",
        lambda: conditions(cluster, *RESEARCHER).get("Running") == "True",
        timeout=60,
    )

    pods = cluster.kubectl("get", "pods", "-n", "team-a", "-o", "name", *RESEARCHER).stdout.split()
    assert pods == ["pod/llm-finetune-0-a0", "pod/llm-finetune-1-a0"]
    # Pods belong to the operator: a member reads them but cannot delete or exec into them.
    for verb in ("delete", "create"):
        answer = cluster.kubectl("auth", "can-i", verb, "pods", "-n", "team-a", *RESEARCHER, check=False)
        assert answer.stdout.strip() == "no"
    denied = cluster.kubectl("delete", "pod", "llm-finetune-0-a0", "-n", "team-a", *RESEARCHER, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr

    # Another team (a member of tenant team-b, with its own namespace) sees nothing of team A's
    # and changes nothing; team A's signature does not count in team B.
    wait_for(
        "researcher-b to be allowed to create TrainingJobs in team-b",
        lambda: (
            cluster.kubectl(
                "auth", "can-i", "create", "trainingjobs", "-n", "team-b", *OUTSIDER, check=False
            ).stdout.strip()
            == "yes"
        ),
    )
    job = yaml.safe_load(example(cluster, "trainingjob-llm.yaml"))
    job["metadata"]["namespace"] = "team-b"
    job["spec"].update(tenant="team-b", replicas=1, sharedStorage=[])
    foreign = cluster.kubectl("apply", "-f", "-", *OUTSIDER, input=json.dumps(job), check=False)
    assert foreign.returncode != 0
    assert "trusted signers: team-b-release" in foreign.stderr
    other = cluster.kubectl("get", "tj", "-n", "team-a", *OUTSIDER, check=False)
    assert other.returncode != 0
    assert 'User "researcher-b" cannot list resource "trainingjobs"' in other.stderr
    other_delete = cluster.kubectl("delete", "tj", "llm-finetune", "-n", "team-a", *OUTSIDER, check=False)
    assert other_delete.returncode != 0

    for team in ("team-a", "team-b"):
        cluster.kubectl("delete", "namespace", team, "--wait=false")
        cluster.kubectl("delete", "tenant", team, "--wait=false")


def test_chart_renders_a_hardened_operator_deployment(cluster: Cluster, tmp_path: Path) -> None:
    out = cluster.kubectl("version", "-o", "json")
    version = json.loads(out.stdout)["serverVersion"]["gitVersion"]
    helm = [str(bin_dir() / "helm"), "template", "t", str(ROOT / "charts" / "trainguard")]
    helm += [
        "-n",
        "trainguard-system",
        "--kube-version",
        version,
        "--set",
        "operator.watchNamespaces={team-*}",
    ]
    # With the Kueue subchart (the default): its objects render, its CRDs among them.
    with_kueue = subprocess.run([*helm, "--output-dir", str(tmp_path / "with-kueue")], check=True,
                                capture_output=True, text=True)  # fmt: skip
    assert with_kueue.returncode == 0
    assert (tmp_path / "with-kueue" / "trainguard" / "charts" / "kueue" / "templates" / "crd").is_dir()
    # The server-side dry run below checks trainguard's own objects (this cluster runs its Kueue).
    # (Its webhook configurations get their own name: the session operator's own live beside them.)
    helm += ["--set", "kueue.enabled=false", "--set", "webhooks.configurationName=trainguard-dry-run"]
    own = tmp_path / "own"
    subprocess.run([*helm, "--output-dir", str(own)], check=True, capture_output=True, text=True)
    assert not (own / "trainguard" / "charts").exists()
    rendered = (own / "trainguard" / "templates" / "deployment.yaml").read_text()
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "--namespace=team-*" in container["args"]
    assert container["image"] == "ghcr.io/trainguard/operator:0.1.0"
    # Only tenant namespaces reach the integrity endpoint; the webhooks are open to the API server.
    policy = yaml.safe_load((own / "trainguard" / "templates" / "networkpolicy.yaml").read_text())
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert rules[8082] == [{"namespaceSelector": {"matchExpressions": [
        {"key": "trainguard.dev/tenant", "operator": "Exists"}]}}]  # fmt: skip
    assert rules[9443] is None
    # values.schema.json: a misspelled value fails the install, naming it, instead of being ignored.
    typo = subprocess.run(
        [*helm, "--set", "operator.webhookPrt=9444"], capture_output=True, text=True, check=False
    )
    assert typo.returncode != 0
    assert "additional properties 'webhookPrt' not allowed" in typo.stderr
    # The server-side dry run accepts every rendered object.
    dry = cluster.kubectl(
        "apply", "--dry-run=server", "-n", "trainguard-system", "-R", "-f", str(own), check=False
    )
    assert dry.returncode == 0, dry.stderr
