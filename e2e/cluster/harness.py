"""Running trainguard against the local cluster: the Helm release and the operator process.

Shared by the test fixtures and by `make demo`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster.localcluster import Cluster, bin_dir
from e2e.cluster.waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
RELEASE_NAMESPACE = "trainguard-system"


def install_chart(cluster: Cluster, *values: str) -> None:
    """`helm upgrade --install` the chart as a platform team would, minus the Deployment (no image
    registry here): the operator runs as a local process with the chart's ServiceAccount instead."""
    chart = str(ROOT / "charts" / "trainguard")
    helm = [
        str(bin_dir() / "helm"),
        "upgrade",
        "--install",
        "trainguard",
        chart,
        "--namespace",
        RELEASE_NAMESPACE,
    ]
    helm += ["--create-namespace", "--set", "operator.deploy=false", "--wait"]
    for value in values:
        helm += ["--set", value]
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run(helm, check=True, capture_output=True, text=True, env=env)


class OperatorProcess:
    """The operator as its own process (`trainguard run`), watching the namespaces given."""

    def __init__(self, log_path: Path, namespaces: list[str], kubeconfig: Path | None = None) -> None:
        self.log_path = log_path
        self.namespaces = namespaces
        self.kubeconfig = kubeconfig
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
        env = dict(os.environ)
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
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


def service_account_kubeconfig(cluster: Cluster, folder: Path, namespace: str, account: str) -> Path:
    """A kubeconfig that acts as a ServiceAccount (a short-lived token from the TokenRequest API)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)},
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": account}}],
        "current-context": "local",
    }
    path = folder / f"{account}.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


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
