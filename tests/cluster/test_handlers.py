"""trainguard's kopf handlers run in this process (`kopf.testing.KopfRunner`) against the real
API server, so a test can reach inside: make a pass fail, read the process's own metrics.

The namespaces here are named `kr-*`, which the session's operator process does not watch; it
still serves the admission webhooks (the image is pinned at admission as always).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import kopf.testing
import pytest
from prometheus_client import REGISTRY

from e2e.cluster.harness import RELEASE_NAMESPACE, OperatorProcess, SignedImage, TenantSpace, make_tenant
from e2e.cluster.localcluster import Cluster
from e2e.cluster.waiting import wait_for
from trainguard.kube import client as kube

HANDLERS = ["-m", "trainguard.handlers.jobs", "-m", "trainguard.handlers.tenants"]


@pytest.fixture
def settings_env(crds: Cluster, operator: OperatorProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handlers' settings, as `trainguard run` would read them from its environment, and the
    operator's own identity (the chart's ServiceAccount): only it may make a job's pods."""
    assert operator.kubeconfig is not None
    monkeypatch.setenv("KUBECONFIG", str(operator.kubeconfig))
    monkeypatch.setenv("TRAINGUARD_WEBHOOK_PORT", "0")  # the session's operator admits
    monkeypatch.setenv("TRAINGUARD_INTEGRITY_PORT", "0")
    monkeypatch.setenv("TRAINGUARD_PLAIN_HTTP_REGISTRIES", json.dumps([crds.registry]))
    monkeypatch.setenv("TRAINGUARD_RETRY_BACKOFF_SECONDS", "0.5")
    kube.configure(str(operator.kubeconfig))


def handlers(namespace: str) -> kopf.testing.KopfRunner:
    return kopf.testing.KopfRunner(["run", "--standalone", "--namespace", namespace, *HANDLERS], timeout=60)


@pytest.fixture
def in_process(
    crds: Cluster, operator: OperatorProcess, signed: SignedImage, settings_env: None
) -> Iterator[TenantSpace]:
    """A fresh tenant namespace, reconciled by the handlers running in this process."""
    space = make_tenant(crds, prefix="kr", signed=signed)
    with handlers(space.namespace) as runner:
        yield space
        # While the handlers still run: the daemon stops and kopf releases its finalizer.
        crds.kubectl("delete", "trainingjobs", "--all", "-n", space.namespace, "--timeout=30s")
    assert runner.exception is None, runner.output
    crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
    crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)


def condition(space: TenantSpace, name: str, kind: str) -> dict[str, Any] | None:
    status = space.get("trainingjob", name).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def errors_counted(reason: str) -> float:
    return REGISTRY.get_sample_value("trainguard_reconcile_errors_total", {"reason": reason}) or 0.0


def test_a_pass_that_fails_unexpectedly_is_retried_and_counted(
    in_process: TenantSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = in_process
    real = kube.patch_job_status
    calls: list[str] = []

    async def fails_once(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError("injected: a bug in a reconcile pass")
        return await real(namespace, name, status)

    monkeypatch.setattr(kube, "patch_job_status", fails_once)
    before = errors_counted("RuntimeError")
    space.apply(space.job("retried"))
    running = wait_for(
        "the job to run after the failed pass was retried",
        lambda: (c := condition(space, "retried", "Running")) and c["status"] == "True" and c,
    )
    assert running["reason"] == "AllReplicasRunning"
    assert errors_counted("RuntimeError") == before + 1
    assert len(calls) >= 2, "the status was written by a later pass"


def test_a_job_pod_that_goes_away_wakes_its_job(in_process: TenantSpace) -> None:
    space = in_process
    space.apply(space.job("woken", replicas=2))
    wait_for(
        "the gang to run",
        lambda: (c := condition(space, "woken", "Running")) and c["status"] == "True",
    )
    space.cluster.kubectl("delete", "pod", "woken-1-a0", "-n", space.namespace, "--wait=false")
    wait_for(
        "a gang restart after a replica vanished",
        lambda: (space.get("trainingjob", "woken").get("status") or {}).get("restarts") == 1,
    )
    events = space.cluster.kubectl(
        "get", "events", "-n", space.namespace, "--field-selector", "reason=Restarting"
    ).stdout
    assert "replica 1 disappeared; restarting all replicas (1 of 3)" in events


def test_a_job_deleted_while_no_operator_ran_does_not_hold_its_namespace(
    crds: Cluster, operator: OperatorProcess, signed: SignedImage, settings_env: None
) -> None:
    space = make_tenant(crds, prefix="kr", signed=signed)
    with handlers(space.namespace) as runner:
        space.apply(space.job("orphan"))
        wait_for(
            "the daemon's finalizer on the job",
            lambda: (
                "trainguard.dev/finalizer"
                in space.get("trainingjob", "orphan")["metadata"].get("finalizers", [])
            ),
        )
    assert runner.exception is None, runner.output
    # No operator runs: the namespace waits for the job's finalizer, and kopf will not serve a
    # namespace that is already terminating when it starts.
    crds.kubectl("delete", "namespace", space.namespace, "--wait=false")
    with handlers(space.namespace) as runner:
        wait_for(
            "the namespace to go",
            lambda: crds.kubectl("get", "namespace", space.namespace, check=False).returncode != 0,
            timeout=60,
        )
    assert runner.exception is None, runner.output
    crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)


def test_api_calls_reuse_one_connection_even_when_nobody_reads_the_answer(settings_env: None) -> None:
    """A create's answer is never read (only its status matters): unless the client reads it
    anyway, urllib3 keeps that connection out of the pool, and the next call pays a new TLS
    handshake, on both sides."""
    names = [f"conn-{uuid.uuid4().hex[:8]}" for _ in range(5)]

    async def calls() -> None:
        for name in names:
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": RELEASE_NAMESPACE},
            }
            assert await kube.create(secret)
            await kube.delete_secret(RELEASE_NAMESPACE, name)

    asyncio.run(calls())
    pools = list(kube._api().rest_client.pool_manager.pools._container.values())
    assert [pool.num_connections for pool in pools] == [1]
