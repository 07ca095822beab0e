"""`kubectl trainguard` against the real cluster, run as a tenant member would run it: the installed
`kubectl-trainguard` (and once through kubectl itself), with `--as`/`--as-group`, its human and JSON
output and its exit codes asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.harness import OperatorProcess, SignedImage, TenantSpace, make_tenant
from e2e.cluster.localcluster import Cluster
from e2e.cluster.registry import Registry
from e2e.cluster.waiting import wait_for

pytestmark = pytest.mark.cluster
PLUGIN = Path(sys.executable).parent / "kubectl-trainguard"  # installed with the package


def plugin(*args: str, via_kubectl: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the plugin; KUBECONFIG points at the local cluster (conftest), stdout is no terminal."""
    env = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    argv = ["kubectl", "trainguard", *args] if via_kubectl else [str(PLUGIN), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def ok(*args: str) -> str:
    result = plugin(*args)
    assert result.returncode == 0, f"{args}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def data(*args: str) -> Any:
    return json.loads(ok(*args, "-o", "json"))


def gpu_job(space: TenantSpace, name: str, gpus: int, **spec: Any) -> dict[str, Any]:
    return space.job(name, resources={"gpusPerReplica": gpus}, integrity={"mode": "Off"}, **spec)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


@pytest.fixture
def small(crds: Cluster, operator: OperatorProcess, signed: SignedImage) -> Iterator[TenantSpace]:
    """A tenant of 8 GPUs: one 8-GPU job runs, the next ones wait for its quota."""
    space = make_tenant(crds, signed=signed, nominal=8)
    yield space
    crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
    crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)


def test_status_why_queue_quota_events_and_wait_as_a_tenant_member(
    small: TenantSpace, signed: SignedImage
) -> None:
    space = small
    me = [*space.as_("owner"), "-n", space.namespace]
    owner = space.user("owner")
    space.apply(gpu_job(space, "first", 8, failurePolicy={"maxRestarts": 0}), *me[:-2])

    # --wait: a progress line per change (stderr is no terminal here), then the status; exit 0 running.
    waited = plugin("status", "first", "--wait", "--timeout", "90", *me)
    assert waited.returncode == 0, waited.stderr
    assert "waiting for" in waited.stderr or "state:          Running" in waited.stdout
    assert "state:          Running" in waited.stdout
    assert f"pinned digest:  {signed.digest}" in waited.stdout
    assert "signer:         release" in waited.stdout
    assert f"owner:          {owner}" in waited.stdout
    assert "AllReplicasRunning" in waited.stdout
    status = data("status", "first", *me)
    assert status["state"] == "Running"
    assert status["image"]["digest"] == signed.digest
    assert status["image"]["signer"] == "release"
    assert status["owner"]["user"] == owner
    assert status["replicas"]["ready"] == 1
    assert status["gpus"] == 8
    # kubectl finds the plugin on the PATH.
    through = plugin("status", "first", *me, via_kubectl=True)
    assert through.returncode == 0, through.stderr
    assert "state:          Running" in through.stdout

    # Two more wait for the tenant's quota, in order, with numbers.
    space.apply(gpu_job(space, "second", 8), *me[:-2])
    time.sleep(1.1)  # Kueue orders by creation time, to the second, then by uid
    space.apply(gpu_job(space, "third", 8), *me[:-2])
    wait_for(
        "third at position 2",
        lambda: data("why", "third", *me)["headline"].endswith(
            "position 2 in tenant " + space.tenant + "'s queue)"
        ),
        timeout=60,
    )
    why = plugin("why", "third", *me)
    assert why.returncode == 0, why.stderr
    lines = why.stdout.splitlines()
    where = f"position 2 in tenant {space.tenant}'s queue"
    assert lines[0] == f"{space.namespace}/third is waiting for Kueue (WaitingForQuota, {where})"
    assert f"needs 8 GPUs; tenant {space.tenant} uses 8 of its 8 nominal" in why.stdout
    assert "it starts when 8 more GPUs of the tenant's jobs are released" in why.stdout
    assert lines[-1].startswith("what to do: wait for the tenant's running jobs to finish")
    answer = data("why", "third", *me)
    assert (answer["state"], answer["reason"], answer["exitCode"]) == ("Queued", "WaitingForQuota", 0)

    queue = ok("queue", *me).splitlines()
    assert queue[0].split()[:4] == ["TENANT", "POS", "NAMESPACE", "NAME"]
    assert [line.split()[1:4] for line in queue[1:]] == [
        ["1", space.namespace, "second"],
        ["2", space.namespace, "third"],
    ]
    items = data("queue", "--tenant", space.tenant, *me)["items"]
    assert [(i["name"], i["position"], i["reason"], i["gpus"]) for i in items] == [
        ("second", 1, "WaitingForQuota", 8),
        ("third", 2, "WaitingForQuota", 8),
    ]

    # The namespace's tenant by default; Kueue's own figures.
    wait_for("Kueue to count 2 waiting", lambda: data("quota", *me)["items"][0]["waiting"] == 2, timeout=30)
    quota = ok("quota", *me).splitlines()
    assert quota[0].split()[:6] == ["TENANT", "COHORT", "NOMINAL", "BORROW-LIMIT", "IN-USE", "BORROWED"]
    assert quota[1].split() == [space.tenant, "-", "8", "0", "8", "0", "0", "1", "2"]
    [row] = data("quota", "--tenant", space.tenant, *me)["items"]
    assert (row["nominal"], row["inUse"], row["borrowed"], row["admitted"], row["waiting"]) == (8, 8, 0, 1, 2)

    # --wait gives up with exit 6.
    timed_out = plugin("why", "third", "--wait", "--timeout", "3", *me)
    assert timed_out.returncode == 6, timed_out.stderr
    assert (
        "waiting for " + space.namespace + "/third: Queued (WaitingForQuota, position 2)" in timed_out.stderr
    )
    assert "timed out" in timed_out.stderr

    # The first job fails: why says so (exit 1), and the next one starts.
    pod = space.list("pods", "trainguard.dev/job-name=first")[0]["metadata"]["name"]
    space.cluster.kubectl(
        "annotate", "pod", pod, "-n", space.namespace, "kwok.trainguard.test/exit-code=3", "--overwrite"
    )
    failed = plugin("why", "first", "--wait", "--timeout", "60", *me)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stdout.startswith(f"{space.namespace}/first failed (BackoffLimitExceeded)")
    assert "exit code 3" in failed.stdout
    assert f"kubectl logs -n {space.namespace} -l trainguard.dev/job-name=first -c trainer" in failed.stdout
    assert plugin("status", "first", *me).returncode == 1

    # The audit trail: who created it, Kueue's admission, the failure, oldest first.
    trail = data("events", "first", *me)["items"]
    reasons = [e["reason"] for e in trail]
    assert trail[0]["reason"] == "Created"
    assert trail[0]["who"] == owner
    assert reasons.index("Admitted") < reasons.index("QuotaAdmitted") < reasons.index("BackoffLimitExceeded")
    assert [e["time"] for e in trail] == sorted(e["time"] for e in trail)
    human = ok("events", "first", *me)
    assert human.splitlines()[0].split() == ["TIME", "TYPE", "REASON", "OBJECT", "WHO", "MESSAGE"]
    assert f"created by {owner}" in human


def test_verify_image_refusals_outsiders_and_exit_codes(tenant_space: TenantSpace, tmp_path: Path) -> None:
    space = tenant_space
    me = [*space.as_("owner"), "-n", space.namespace]

    # The signed image: verified by the admission webhooks on a dry run, pinned, nothing created.
    verified = plugin("verify-image", space.image, *me)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[0] == (
        f"verified: {space.image} is signed by release, a signer tenant {space.tenant} trusts"
    )
    result = data("verify-image", space.image, "--tenant", space.tenant, *me)
    assert result["verified"] is True
    assert result["signer"] == "release"
    assert result["pinned"].startswith(space.image + "@sha256:")
    assert result["digest"] in result["pinned"]
    assert space.list("trainingjobs") == []
    assert not [e for e in space.list("events") if e.get("reason") == "AdmissionDenied"]

    # An unsigned image: refused with the same problems `kubectl apply` prints.
    registry = Registry(space.cluster.ports.registry, tmp_path)
    repository = f"plugin/{uuid.uuid4().hex[:8]}"
    registry.push(repository, "v1", "unsigned")
    unsigned = f"{registry.host}/{repository}:v1"
    refused = plugin("verify-image", unsigned, *me)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout.startswith(f"refused: {unsigned} would not be admitted in {space.namespace}")
    applied = space.apply(space.job("sneaky", image=unsigned), *me[:-2], check=False)
    assert applied.returncode != 0
    problems = [line for line in applied.stderr.splitlines() if line.startswith("* ")]
    assert problems
    assert "has no cosign signature" in problems[0]
    assert [line for line in refused.stdout.splitlines() if line.startswith("* ")] == problems
    assert data_rc("verify-image", unsigned, *me) == (False, 1)
    # The job it refused does not exist: why says so, with the refusal (exit 3).
    missing = plugin("why", "sneaky", *me)
    assert missing.returncode == 3, missing.stdout + missing.stderr
    assert f"TrainingJob sneaky does not exist in namespace {space.namespace}: admission refused it" in (
        missing.stdout
    )
    assert problems[0] in missing.stdout
    assert "verify-image" in missing.stdout

    # --tenant naming another tenant than the namespace's: said plainly, usage error.
    wrong = plugin("verify-image", space.image, "--tenant", "someone-else", *me)
    assert wrong.returncode == 2
    assert f"namespace {space.namespace} belongs to tenant {space.tenant}, not someone-else" in wrong.stderr

    # Another team's member: a clear refusal, exit 4, no traceback, whatever the command.
    outsider = ["--as", "researcher-elsewhere", "--as-group", "group-elsewhere", "-n", space.namespace]
    space.apply(space.job("mine"), *me[:-2])
    for args in (
        ["status", "mine"],
        ["why", "mine"],
        ["events", "mine"],
        ["queue"],
        ["verify-image", space.image],
    ):
        refusal = plugin(*args, *outsider)
        no_traceback(refusal)
        assert refusal.returncode == 4, (args, refusal.stdout, refusal.stderr)
        [line] = refusal.stderr.strip().splitlines()
        assert line.startswith("forbidden: "), line
        assert 'User "researcher-elsewhere"' in line
        assert "(as groups group-elsewhere)" in line
        assert "ask " in line
    # Everyone signed in may read the tenants' quotas (the chart's quotaViewer.groups default).
    assert plugin("quota", "--tenant", space.tenant, *outsider).returncode == 0

    # Exit codes of the plugin itself.
    usage = plugin("status")
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
    unreachable = plugin("status", "x", "--kubeconfig", str(tmp_path / "nowhere"))
    no_traceback(unreachable)
    assert unreachable.returncode == 5
    assert unreachable.stderr.startswith("error: ")
    assert plugin("status", "nothing-here", *me).returncode == 3
    assert "exit codes:" in plugin("--help").stdout


def data_rc(*args: str) -> tuple[bool, int]:
    result = plugin(*args, "-o", "json")
    return json.loads(result.stdout)["verified"], result.returncode
