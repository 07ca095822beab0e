"""The chart as a platform team installs it (`webhooks.managedBy=chart`): `helm install`, `upgrade`
and `uninstall` against the real API server, and the operator's two roles run locally with the
chart's ServiceAccount and the chart's certificate.

No image can be built or pulled here, so the Deployments' pods never run trainguard (kwok only
plays them); the webhooks point at `webhooks.url` instead, where this test serves them with the
same flags the admission Deployment passes.

The module's name puts it first in the suite: it uninstalls the release (and with it the
ServiceAccount whose token the session's operator runs with), then puts the session's release back.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.harness import (
    OPERATOR_USER,
    RELEASE_NAMESPACE,
    ROOT,
    install_chart,
    remove_webhook_configurations,
    service_account_kubeconfig,
)
from e2e.cluster.localcluster import Cluster, bin_dir
from e2e.cluster.waiting import die_with_parent, free_port, port_listening, wait_for
from trainguard.api.constants import FINALIZER

CONFIGURATION = "trainguard-chart-test"  # beside the session operator's own "trainguard" ones
SECRET = "trainguard-webhook-tls"


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    argv = [str(bin_dir() / "helm"), *args, "--namespace", RELEASE_NAMESPACE]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def install(cluster: Cluster, port: int, *values: str) -> None:
    chart = str(ROOT / "charts" / "trainguard")
    argv = ["upgrade", "--install", "trainguard", chart, "--create-namespace"]
    for value in (
        "kueue.enabled=false",
        f"webhooks.url=https://127.0.0.1:{port}",
        f"webhooks.configurationName={CONFIGURATION}",
        *values,
    ):
        argv += ["--set", value]
    helm(cluster, *argv)


def get(cluster: Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


def exists(cluster: Cluster, *args: str) -> bool:
    return cluster.kubectl("get", *args, check=False).returncode == 0


class Trainguard:
    """`trainguard run` as the chart's Deployments run it, as a local process."""

    def __init__(self, log: Path, kubeconfig: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.health = free_port()
        argv = [sys.executable, "-m", "trainguard.cli.main", "run", "--metrics-port", "0"]
        argv += ["--liveness", f"http://127.0.0.1:{self.health}/healthz", *args]
        self.log = log
        self.proc = subprocess.Popen(
            argv,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})},
            preexec_fn=die_with_parent,
        )

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"trainguard exited:\n{self.log.read_text()[-4000:]}")
        return port_listening("127.0.0.1", self.health)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Trainguard]]:
    processes: list[Trainguard] = []
    yield processes
    for process in processes:
        process.stop()


def drop_stale_configurations(cluster: Cluster) -> None:
    """Configurations an operator wrote for itself outlive it (they fail closed), and the API server
    calls them first: drop those whose operator is gone (a session operator that runs keeps its)."""
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        found = cluster.kubectl("get", kind, "trainguard", "-o", "json", check=False)
        if found.returncode != 0:
            continue
        urls = [h["clientConfig"].get("url", "") for h in json.loads(found.stdout)["webhooks"]]
        ports = {int(u.split(":")[2].split("/")[0]) for u in urls if u.startswith("https://127.0.0.1:")}
        if ports and not any(port_listening("127.0.0.1", port) for port in ports):
            cluster.kubectl("delete", kind, "trainguard", check=False)


def _job(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "trainguard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "tenant": "no-such-tenant",
            "image": "registry.example/none:1",
            "replicas": 1,
            "resources": {"gpusPerReplica": 1},
        },
    }


def test_helm_install_upgrade_uninstall_with_chart_webhooks(
    crds: Cluster, tmp_path: Path, running: list[Trainguard]
) -> None:
    cluster, port = crds, free_port()
    namespace = f"chart-test-{uuid.uuid4().hex[:6]}"
    flavor = f"chart-test-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    drop_stale_configurations(cluster)
    # A job the reconciler holds (its finalizer), made while no webhook runs: the admission-only
    # process watches it into its indexes and must leave the finalizer alone.
    held = {**_job(namespace), "metadata": {"name": "held", "finalizers": [FINALIZER]}}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(held))
    try:
        install(cluster, port)

        # --- installed: both Deployments, the budget, the TLS Secret, the configurations.
        webhook = get(cluster, "deployment", "trainguard-webhook", "-n", RELEASE_NAMESPACE)
        assert webhook["spec"]["replicas"] == 2
        assert exists(cluster, "deployment", "trainguard-operator", "-n", RELEASE_NAMESPACE)
        assert get(cluster, "pdb", "trainguard-webhook", "-n", RELEASE_NAMESPACE)["spec"]["minAvailable"] == 1
        secret = get(cluster, "secret", SECRET, "-n", RELEASE_NAMESPACE)
        validating = get(cluster, "validatingwebhookconfiguration", CONFIGURATION)
        mutating = get(cluster, "mutatingwebhookconfiguration", CONFIGURATION)
        for hook in validating["webhooks"] + mutating["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
            assert hook["clientConfig"]["url"].startswith(f"https://127.0.0.1:{port}/")
            assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Fail", 5)

        # Nobody serves yet: the API server refuses (fail closed), it does not admit.
        refused = cluster.kubectl("create", "-f", "-", input=json.dumps(_job(namespace)), check=False)
        assert refused.returncode != 0
        assert "failed calling webhook" in refused.stderr, refused.stderr

        # --- the chart's two roles, with its ServiceAccount and its certificate.
        kubeconfig = service_account_kubeconfig(cluster, tmp_path, RELEASE_NAMESPACE, "trainguard")
        certs = tmp_path / "webhook-tls"
        certs.mkdir()
        for key in ("tls.crt", "tls.key"):
            (certs / key).write_bytes(base64.b64decode(secret["data"][key]))
        running.append(
            Trainguard(
                tmp_path / "admission.log",
                kubeconfig,
                "--role=admission",
                "--webhooks=chart",
                "--verbose",  # kopf logs each finalizer it adds or removes at DEBUG
                "--log-format=json",  # the chart's default
                f"--webhook-port={port}",
                f"--webhook-cert-dir={certs}",
                "--integrity-port=0",
                f"--operator-user={OPERATOR_USER}",
                f"--namespace={namespace}",
            )
        )
        running.append(
            Trainguard(
                tmp_path / "operator.log",
                kubeconfig,
                "--webhook-port=0",
                "--integrity-port=0",
                f"--namespace={namespace}",
                env={"TRAINGUARD_GPU_FLAVORS": json.dumps({flavor: {}})},
            )
        )
        wait_for("both processes to report healthy", lambda: all(p.alive() for p in running), timeout=60)
        wait_for("the admission server", lambda: port_listening("127.0.0.1", port), timeout=30)

        # The API server reaches the admission process through the chart's configuration and CA.
        denied = cluster.kubectl("create", "-f", "-", input=json.dumps(_job(namespace)), check=False)
        assert denied.returncode != 0
        assert '.trainguard.dev" denied the request' in denied.stderr, denied.stderr
        assert "no-such-tenant" in denied.stderr
        # The reconciling process works with the chart's RBAC (it renders the configured flavors).
        wait_for("the reconciler's ResourceFlavor", lambda: exists(cluster, "resourceflavor", flavor))
        for log in ("operator.log", "admission.log"):  # RBAC's refusals read "is forbidden: User ..."
            assert "is forbidden: User" not in (tmp_path / log).read_text(), log

        job = get(cluster, "trainingjob", "held", "-n", namespace)
        assert job["metadata"]["finalizers"] == [FINALIZER], "the reconciler's finalizer stays"
        admission_log = (tmp_path / "admission.log").read_text()
        assert "Indexer 'jobs_by_namespace' succeeded" in admission_log, "the admission process saw the job"
        assert "Indexer 'job_pods'" not in admission_log, "and keeps only the indexes admission reads"
        assert "the finalizer" not in admission_log, "nor tried to add or remove one"
        # Every decision is one JSON line naming who, what, which tenant and why.
        lines = [json.loads(line) for line in admission_log.splitlines() if line.startswith("{")]
        decisions = [d for d in lines if d.get("decision") == "denied" and d.get("namespace") == namespace]
        assert decisions, "no denial logged"
        assert decisions[0]["user"] == "trainguard-admin"
        assert (decisions[0]["operation"], decisions[0]["resource"]) == ("CREATE", "trainingjobs")
        assert (decisions[0]["objectName"], decisions[0]["tenant"]) == ("probe", "no-such-tenant")
        assert decisions[0]["reasons"], decisions[0]
        assert decisions[0]["severity"] == "warn"

        # --- upgrade: new settings applied, the same certificate kept.
        install(cluster, port, "webhooks.timeoutSeconds=3", "webhooks.replicaCount=3")
        after = get(cluster, "secret", SECRET, "-n", RELEASE_NAMESPACE)
        assert after["data"] == secret["data"], "certificates do not rotate with each upgrade"
        validating = get(cluster, "validatingwebhookconfiguration", CONFIGURATION)
        assert {h["timeoutSeconds"] for h in validating["webhooks"]} == {3}
        assert (
            get(cluster, "deployment", "trainguard-webhook", "-n", RELEASE_NAMESPACE)["spec"]["replicas"] == 3
        )
        denied = cluster.kubectl("create", "-f", "-", input=json.dumps(_job(namespace)), check=False)
        assert '.trainguard.dev" denied the request' in denied.stderr, denied.stderr

        # --- uninstall: the release's objects go; Helm keeps the CRDs (and with them every job).
        helm(cluster, "uninstall", "trainguard", "--wait")
        for kind, name, scoped in (
            ("validatingwebhookconfiguration", CONFIGURATION, False),
            ("mutatingwebhookconfiguration", CONFIGURATION, False),
            ("deployment", "trainguard-webhook", True),
            ("deployment", "trainguard-operator", True),
            ("pdb", "trainguard-webhook", True),
            ("secret", SECRET, True),
            ("clusterrole", "trainguard-operator", False),
        ):
            where = ("-n", RELEASE_NAMESPACE) if scoped else ()
            wait_for(f"{kind} {name} to go", lambda k=kind, n=name, w=where: not exists(cluster, k, n, *w))
        assert exists(cluster, "crd", "trainingjobs.trainguard.dev")
        assert get(cluster, "trainingjob", "held", "-n", namespace)["metadata"]["finalizers"] == [FINALIZER]
    finally:
        for process in running:
            process.stop()
        unheld = ["--type=merge", "-p", json.dumps({"metadata": {"finalizers": None}})]
        cluster.kubectl("patch", "trainingjob", "held", "-n", namespace, *unheld, check=False)
        cluster.kubectl("delete", "resourceflavor", flavor, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        # Back to the release every other test expects (operator-managed webhooks, no Deployment).
        remove_webhook_configurations(cluster, CONFIGURATION)
        install_chart(cluster)
