"""Running trainguard against the local cluster: the Helm release and the operator process.

Shared by the test fixtures and by `make demo`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster.localcluster import Cluster, bin_dir
from e2e.cluster.registry import CosignKey, Registry
from e2e.cluster.waiting import answers_ok, die_with_parent, free_port, port_listening, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
RELEASE_NAMESPACE = "trainguard-system"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:trainguard"


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
    # Kueue runs beside the local control plane as a process (localcluster.py), as it runs in
    # clusters that already have it: the chart's Kueue subchart stays off.
    helm += ["--create-namespace", "--set", "operator.deploy=false", "--set", "kueue.enabled=false", "--wait"]
    # The local operator process writes its own webhook configurations (URL, CA it makes), as
    # before the chart could: the chart renders none.
    helm += ["--set", "webhooks.managedBy=operator"]
    for value in values:
        helm += ["--set", value]
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run(helm, check=True, capture_output=True, text=True, env=env)


def remove_webhook_configurations(cluster: Cluster, name: str = "trainguard", *, check: bool = False) -> None:
    """Delete the webhook configurations called `name` (by default those an operator process writes
    for itself). They fail closed once their operator is gone, refusing whatever they cover."""
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        cluster.kubectl("delete", kind, name, "--ignore-not-found", check=check)


class OperatorProcess:
    """The operator as its own process (`trainguard run`), watching the namespaces given."""

    def __init__(
        self,
        log_path: Path,
        namespaces: list[str],
        kubeconfig: Path | None = None,
        *,
        registry: str | None = None,
        admission: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.log_path = log_path
        self.namespaces = namespaces
        self.kubeconfig = kubeconfig
        self.registry = registry
        self.admission = admission
        self.extra_args = extra_args
        self.metrics_port = free_port()
        self.integrity_port = free_port() if admission else 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def integrity_url(self) -> str:
        """Base URL of the operator's integrity endpoint; a job's reports go to <url>/<ns>/<job>."""
        return f"http://127.0.0.1:{self.integrity_port}"

    def metrics(self) -> str:
        """The operator's Prometheus exposition text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when the series does not exist yet)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def start(self) -> None:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "trainguard.cli.main",
            "run",
            "--metrics-port",
            str(self.metrics_port),
            "--liveness",
            f"http://127.0.0.1:{port}/healthz",
        ]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        webhook_port = free_port() if self.admission else 0
        argv += ["--webhook-port", str(webhook_port), "--operator-user", OPERATOR_USER]
        argv += ["--integrity-port", str(self.integrity_port)]
        if self.registry:
            argv += ["--plain-http-registry", self.registry]
        argv += self.extra_args
        log = self.log_path.open("ab")
        env = dict(os.environ)
        env["TRAINGUARD_INTEGRITY_URL"] = self.integrity_url
        # Simulated nodes read these annotations (run time, exit code): jobs pass them to pods.
        env.setdefault("TRAINGUARD_POD_ANNOTATION_PREFIXES", '["kwok.trainguard.test/"]')
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, preexec_fn=die_with_parent
        )
        wait_for("the operator to report healthy", lambda: self._healthy(port), timeout=60)
        if webhook_port:
            wait_for("the admission webhooks to listen", lambda: port_listening("127.0.0.1", webhook_port))

    def _healthy(self, port: int) -> bool:
        assert self.proc is not None
        return answers_ok(f"http://127.0.0.1:{port}/healthz", self.proc, self.log_path, "the operator")

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a node loss or an OOM kill."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


def apiserver_counter(cluster: Cluster, metric: str, /, **labels: str) -> int:
    """The sum of the API server's counter `metric` over its series with `labels` (from /metrics):
    how many requests it served, or how many times it called a webhook, whoever made them."""
    total = 0.0
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith(metric + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return int(total)


def wait_for_terminating_namespaces(
    cluster: Cluster, timeout: float, only: tuple[str, ...] = ()
) -> list[str]:
    """Wait until no namespace (of `only`, when given) is being deleted, at most `timeout`
    seconds; return those still being deleted."""
    deadline = time.monotonic() + timeout
    while True:
        items = json.loads(cluster.kubectl("get", "namespaces", "-o", "json").stdout)["items"]
        left = [
            n["metadata"]["name"]
            for n in items
            if (n.get("status") or {}).get("phase") == "Terminating"
            and (not only or n["metadata"]["name"] in only)
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


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
    image: str = ""  # an image signed by a key the tenant trusts

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

    def job(
        self,
        name: str = "j",
        *,
        image: str | None = None,
        metadata: dict[str, Any] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """A TrainingJob of this tenant: its signed image, one replica of one GPU, unless `spec`
        (camelCase fields, as in the manifest) says otherwise."""
        return {
            "apiVersion": "trainguard.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, **(metadata or {})},
            "spec": {
                "tenant": self.tenant,
                "image": image or self.image,
                "replicas": 1,
                "resources": {"gpusPerReplica": 1},
                **spec,
            },
        }

    def user(self, who: str) -> str:
        """The tenant's people: `owner` (a member who creates jobs), `teammate` (another member),
        `admin` (a tenant admin)."""
        suffix = self.tenant.removeprefix("tenant-")
        return {
            "owner": f"researcher-{suffix}",
            "teammate": f"teammate-{suffix}",
            "admin": f"admin-{suffix}",
        }[who]

    def as_(self, who: str) -> list[str]:
        """kubectl flags to act as one of the tenant's people, once their role binding exists."""
        flags = ["--as", self.user(who)]
        if who in ("owner", "teammate"):
            flags += ["--as-group", f"group-{self.tenant.removeprefix('tenant-')}"]
        wait_for(
            f"{who}'s role binding in {self.namespace}",
            lambda: (
                self.cluster.kubectl(
                    "auth", "can-i", "create", "tj", "-n", self.namespace, *flags, check=False
                ).stdout.strip()
                == "yes"
            ),
        )
        return flags

    def list(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", self.namespace, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.cluster.kubectl(*args).stdout)["items"]
        return items


def make_tenant(
    cluster: Cluster,
    prefix: str = "tj",
    signed: SignedImage | None = None,
    *,
    nominal: int = 32,
    borrowing: int = 0,
    cohort: str | None = None,
) -> TenantSpace:
    suffix = uuid.uuid4().hex[:8]
    ns, tenant = f"{prefix}-{suffix}", f"tenant-{suffix}"
    cluster.kubectl("create", "namespace", ns)
    body = {
        "apiVersion": "trainguard.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": tenant},
        "spec": {
            "namespaces": [ns],
            "members": {
                "users": [f"researcher-{suffix}", f"teammate-{suffix}"],
                "groups": [f"group-{suffix}"],
            },
            "admins": {"users": [f"admin-{suffix}"]},
            "quota": {
                "nominalGPUs": nominal,
                **({"cohort": cohort, "borrowingLimitGPUs": borrowing} if cohort else {}),
            },
            "sharedStorage": [{"name": "dataset", "kind": "Dataset", "claimName": "dataset"}],
            "trustedSigners": [{"name": "release", "publicKey": signed.public_key}] if signed else [],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    return TenantSpace(tenant, ns, cluster, signed.image if signed else "")


@dataclass(frozen=True)
class SignedImage:
    image: str  # by tag, as a researcher writes it
    digest: str
    public_key: str  # PEM of the key that signed it
    key: CosignKey


def signed_image(
    cluster: Cluster, folder: Path, repository: str = "tests/trainer", layout: str = "classic"
) -> SignedImage:
    """Push an image to the cluster's registry and sign it with a fresh key."""
    registry = Registry(cluster.ports.registry, folder)
    digest = registry.push(repository, "v1", f"{repository} {uuid.uuid4().hex}")
    key = CosignKey.generate(folder / "keys", "release")
    key.sign(f"{registry.host}/{repository}@{digest}", layout)
    return SignedImage(f"{registry.host}/{repository}:v1", digest, key.public.read_text(), key)


EXAMPLE_KEY = ROOT / "examples" / "signing" / "team-a-release.key"


def publish_example_image(cluster: Cluster, folder: Path) -> str:
    """Push the examples' trainer image to the cluster's registry, signed with the demo key."""
    registry = Registry(cluster.ports.registry, folder)
    digest = registry.push("team-a/trainer", "v1", "the example trainer")
    key = CosignKey(EXAMPLE_KEY, EXAMPLE_KEY.with_suffix(".pub"))
    key.sign(f"{registry.host}/team-a/trainer@{digest}", "bundle")
    return digest
