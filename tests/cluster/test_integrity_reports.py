"""Sidecars and a real PyTorch loop as local processes, reporting to the operator on the real
control plane: verified steps and violations reach the TrainingJob's status; Enforce stops it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from e2e.cluster.harness import OperatorProcess, TenantSpace
from e2e.cluster.integrity import SidecarProcess
from e2e.cluster.integrity_keys import job_pods, key_url, pod_token
from e2e.cluster.waiting import wait_for
from trainguard.integrity.reports import sign_report
from trainguard.trainer import IntegrityGuard, IntegrityViolation


def job(space: TenantSpace, name: str) -> dict[str, Any]:
    return space.job(name, replicas=2, integrity={"mode": "Enforce"})


def conditions(space: TenantSpace, name: str) -> dict[str, dict[str, Any]]:
    status = space.get("trainingjob", name).get("status", {})
    return {c["type"]: c for c in status.get("conditions", [])}


class TwoReplicas:
    """Two data-parallel replicas of one job: a sidecar process each (getting the job's key from
    the operator with its pod's token, as in the pod, and reporting to the operator) and identical
    tiny models trained in this process."""

    def __init__(self, folder: Path, space: TenantSpace, name: str, operator: OperatorProcess) -> None:
        pods = job_pods(space, name, 2)
        uid = space.get("trainingjob", name)["metadata"]["uid"]
        report_url = f"{operator.integrity_url}/{space.namespace}/{name}"
        asks = key_url(operator.integrity_url, space, name)
        self.sidecars = [
            SidecarProcess(
                folder / f"r{r}",
                replica=r,
                report_url=report_url,
                key_url=asks,
                token=pod_token(space, name, pod),
                job_uid=uid,
            ).start()
            for r, pod in enumerate(pods)
        ]
        torch.manual_seed(0)
        self.nets = [torch.nn.Linear(8, 8) for _ in (0, 1)]
        self.nets[1].load_state_dict(self.nets[0].state_dict())
        self.guards = [IntegrityGuard(self.nets[r], socket_path=self.sidecars[r].socket) for r in (0, 1)]
        self.optimizers = [torch.optim.SGD(n.parameters(), lr=0.1) for n in self.nets]

    def train(
        self, steps: range, drift: tuple[int, int] | None = None, replicas: tuple[int, ...] = (0, 1)
    ) -> None:
        """Train the replicas; with `drift` = (replica, step), that replica gets other data from then on."""
        for step in steps:
            for r in replicas:
                self.guards[r].begin(step)
                self.optimizers[r].zero_grad()
                scale = 2.0 if drift is not None and r == drift[0] and step >= drift[1] else 1.0
                self.nets[r](torch.ones(2, 8) * scale).sum().backward()
                self.optimizers[r].step()
                self.guards[r].end(step)

    def stop(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop()


def test_verified_steps_and_a_violation_reach_the_job_and_enforce_stops_it(
    tenant_space: TenantSpace, operator: OperatorProcess, tmp_path: Path
) -> None:
    space = tenant_space
    space.apply(job(space, "guarded"))
    wait_for(
        "the job to run", lambda: conditions(space, "guarded").get("Running", {}).get("status") == "True"
    )
    replicas = TwoReplicas(tmp_path, space, "guarded", operator)
    try:
        replicas.train(range(3))
        verified = wait_for(
            "a verified step in status",
            lambda: (
                (space.get("trainingjob", "guarded")["status"].get("integrity") or {}).get("lastVerifiedStep")
                is not None
            ),
        )
        assert verified
        assert conditions(space, "guarded")["IntegrityVerified"]["status"] == "True"
        # A genuine signed report, sent again (a replay from the shared folder's report stream),
        # is refused: it named its place in its sidecar's sequence under the signature.
        replayed = replicas.sidecars[0].reports_path.read_text().splitlines()[-1]
        request = urllib.request.Request(  # noqa: S310 - the operator on loopback
            f"{operator.integrity_url}/{space.namespace}/guarded", data=replayed.encode(), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)  # noqa: S310 - the operator on loopback
        assert caught.value.code == 409
        assert "replayed or out of order" in caught.value.read().decode()

        # A third process changes replica 1's weights between steps 2 and 3.
        tamper = (
            "import mmap, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR); m = mmap.mmap(fd, 0); m[8] ^= 0x80\n"
        )
        subprocess.run(
            [sys.executable, "-c", tamper, str(replicas.guards[1].buffer_path)], check=True, timeout=30
        )
        replicas.guards[0].begin(3)
        with pytest.raises(IntegrityViolation):
            replicas.guards[1].begin(3)

        violation = wait_for(
            "IntegrityViolation in status", lambda: conditions(space, "guarded").get("IntegrityViolation")
        )
        assert violation["status"] == "True"
        assert violation["reason"] == "ModifiedBetweenSteps"
        assert "step 3, replica 1: ModifiedBetweenSteps" in violation["message"]
        failed = wait_for("Enforce to stop the job", lambda: conditions(space, "guarded").get("Failed"))
        assert failed["reason"] == "IntegrityViolation"
        wait_for(
            "the job's pods to be stopped",
            lambda: space.list("pods", "trainguard.dev/job-name=guarded") == [] or None,
        )
        events = space.cluster.kubectl(
            "get", "events", "-n", space.namespace, "--field-selector", "reason=IntegrityViolation"
        ).stdout
        assert "replica 1" in events
        assert (
            operator.metric(
                "trainguard_integrity_violations_total", kind="ModifiedBetweenSteps", tenant=space.tenant
            )
            >= 1
        )
    finally:
        replicas.stop()


def test_a_report_not_signed_with_the_jobs_key_is_refused(
    tenant_space: TenantSpace, operator: OperatorProcess
) -> None:
    space = tenant_space
    space.apply(job(space, "forged"))
    job_pods(space, "forged", 2)  # the job runs, its key exists
    uid = space.get("trainingjob", "forged")["metadata"]["uid"]
    forged = sign_report(
        b"\x00" * 32,
        {"job": uid, "attempt": 0, "boot": "0" * 16, "seq": 1,
         "replica": 0, "kind": "Violation", "step": 1, "violation": "X", "message": "x", "time": 0.0},
    )  # fmt: skip
    request = urllib.request.Request(  # noqa: S310 - the operator on loopback
        f"{operator.integrity_url}/{space.namespace}/forged", data=json.dumps(forged).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 - the operator on loopback
    assert caught.value.code == 403
    assert "IntegrityViolation" not in conditions(space, "forged")


def test_replicas_that_disagree_are_named_in_the_jobs_status(
    tenant_space: TenantSpace, operator: OperatorProcess, tmp_path: Path
) -> None:
    space = tenant_space
    space.apply(job(space, "split"))
    replicas = TwoReplicas(tmp_path, space, "split", operator)
    try:
        replicas.train(range(2), drift=(1, 1))
        violation = wait_for(
            "the divergence in status", lambda: conditions(space, "split").get("IntegrityViolation")
        )
        assert violation["reason"] == "ReplicaDivergence"
        assert "step 1, replica 1: ReplicaDivergence" in violation["message"]
        assert (space.get("trainingjob", "split")["status"]["integrity"]).get("lastVerifiedStep") == 0
    finally:
        replicas.stop()


def test_a_sidecar_that_falls_silent_is_a_violation_and_enforce_stops_the_job(
    tenant_space: TenantSpace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Silence is an alarm: both replicas report for a few steps, then replica 1's sidecar dies
    (killed, or cut off by a network policy): once spec.integrity.reportGapSeconds pass without a
    signed report from it, the job has IntegrityViolation (ReportsStopped) naming replica 1 and
    Enforce stops it."""
    space = tenant_space
    space.apply(space.job("quiet", replicas=2, integrity={"mode": "Enforce", "reportGapSeconds": 15}))
    wait_for("the job to run", lambda: conditions(space, "quiet").get("Running", {}).get("status") == "True")
    replicas = TwoReplicas(tmp_path, space, "quiet", operator)
    try:
        replicas.train(range(3))
        wait_for(
            "both replicas' reports in status",
            lambda: (
                set(
                    (space.get("trainingjob", "quiet")["status"].get("integrity") or {}).get("lastReports")
                    or {}
                )
                == {"0", "1"}
            ),
        )
        assert "IntegrityViolation" not in conditions(space, "quiet")
        replicas.sidecars[1].stop()
        for step in range(3, 60):  # replica 0 keeps training and reporting
            if "IntegrityViolation" in conditions(space, "quiet"):
                break
            replicas.train(range(step, step + 1), replicas=(0,))
            time.sleep(1)
        violation = wait_for("ReportsStopped", lambda: conditions(space, "quiet").get("IntegrityViolation"))
        assert violation["reason"] == "ReportsStopped"
        assert "replica 1's sidecar" in violation["message"]
        assert "reportGapSeconds=15" in violation["message"]
        failed = wait_for("Enforce to stop the job", lambda: conditions(space, "quiet").get("Failed"))
        assert failed["reason"] == "IntegrityViolation"
        wait_for(
            "the job's pods to be stopped",
            lambda: space.list("pods", "trainguard.dev/job-name=quiet") == [] or None,
        )
        assert (
            operator.metric(
                "trainguard_integrity_violations_total", kind="ReportsStopped", tenant=space.tenant
            )
            >= 1
        )
    finally:
        replicas.stop()
