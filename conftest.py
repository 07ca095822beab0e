"""Shared pytest wiring: the session's local cluster, a fresh namespace per test, markers.

Tests under `tests/cluster/` and `e2e/` are marked `cluster` automatically. The `cluster`
fixture starts the local control plane when it is not running; if it cannot, the test run
fails loudly (it never skips). Only `gpu` tests may skip, when no CUDA device is present.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.localcluster import Cluster, ClusterError, LocalCluster, bin_dir
from e2e.cluster.waiting import wait_for

ROOT = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # Point every client (kubectl, kopf, the kubernetes library, which reads KUBECONFIG at import)
    # at the local cluster, never at a real one a developer may have configured.
    os.environ["KUBECONFIG"] = str(LocalCluster().kubeconfig)
    os.environ["PATH"] = f"{bin_dir()}{os.pathsep}{os.environ['PATH']}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        if rel.startswith(("tests/cluster/", "e2e/")):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    try:
        handle = LocalCluster().up()
    except ClusterError as exc:
        pytest.fail(f"the local cluster did not start, so cluster tests cannot run:\n{exc}", pytrace=False)
    assert os.environ["KUBECONFIG"] == str(handle.kubeconfig)
    return handle


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --------------------------------------------------------------------------- trainguard on the cluster


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The canonical CRDs from crds/, installed and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/trainingjobs.trainguard.dev",
        "crd/tenants.trainguard.dev",
    )
    return cluster


class OperatorProcess:
    """The operator as its own process (`trainguard run`), watching the namespaces given."""

    def __init__(self, log_path: Path, namespaces: list[str]) -> None:
        self.log_path = log_path
        self.namespaces = namespaces
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "trainguard.cli.main",
            "run",
            "--metrics-port",
            "0",
            "--liveness",
            f"http://127.0.0.1:{port}/healthz",
        ]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for("the operator to report healthy", lambda: self._healthy(port), timeout=60)

    def _healthy(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a node loss or an OOM kill."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def operator(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The session's operator, watching the namespaces of `tenant_namespace` and the examples."""
    op = OperatorProcess(tmp_path_factory.mktemp("operator") / "operator.log", ["tj-*", "team-*"])
    op.start()
    yield op
    op.stop()


@dataclass(frozen=True)
class TenantSpace:
    tenant: str
    namespace: str
    cluster: Cluster

    def apply(
        self, manifest: dict[str, Any], *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(
            "apply", "-n", self.namespace, *extra, "-f", "-", input=json.dumps(manifest), check=check
        )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def list(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", self.namespace, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.cluster.kubectl(*args).stdout)["items"]
        return items


def make_tenant(cluster: Cluster, prefix: str = "tj", **quota: int) -> TenantSpace:
    suffix = uuid.uuid4().hex[:8]
    ns, tenant = f"{prefix}-{suffix}", f"tenant-{suffix}"
    cluster.kubectl("create", "namespace", ns)
    body = {
        "apiVersion": "trainguard.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": tenant},
        "spec": {
            "namespaces": [ns],
            "members": {"users": [f"researcher-{suffix}"], "groups": [f"group-{suffix}"]},
            "quota": {"nominalGPUs": quota.get("nominal", 32)},
            "sharedStorage": [{"name": "dataset", "kind": "Dataset", "claimName": "dataset"}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    return TenantSpace(tenant, ns, cluster)


@pytest.fixture
def tenant_space(crds: Cluster) -> Iterator[TenantSpace]:
    """A fresh namespace owned by a fresh Tenant (32 nominal GPUs, one shared dataset)."""
    space = make_tenant(crds)
    yield space
    crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
    crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)
