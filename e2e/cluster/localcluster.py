"""A real local Kubernetes control plane on loopback, with simulated GPU nodes.

    python -m e2e.cluster.localcluster up      # start (idempotent), print `export KUBECONFIG=...`
    python -m e2e.cluster.localcluster down    # stop every process it started
    python -m e2e.cluster.localcluster status  # exit 0 when healthy
    python -m e2e.cluster.localcluster env     # print the export line only

It runs etcd, kube-apiserver (secure port, RBAC, admission webhooks, ResourceQuota,
service-account keys), kube-controller-manager, kube-scheduler and kwok, all built from Go
modules by `e2e/cluster/build.sh`. Every listener binds 127.0.0.1. State (certificates,
logs, pids, etcd data, kubeconfig) lives outside the repository, by default in
`${XDG_CACHE_HOME:-~/.cache}/trainguard/cluster`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from e2e.cluster import pki

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ROOT_CRDS = REPO / "crds"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "provisioner",
    "registry",
    "kueue",
)
LOOPBACK = "127.0.0.1"
KUEUE_USER = "system:serviceaccount:kueue-system:kueue-controller-manager"
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def cache_root() -> Path:
    explicit = os.environ.get("TRAINGUARD_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainguard"


def state_dir() -> Path:
    explicit = os.environ.get("TRAINGUARD_CLUSTER_DIR")
    return Path(explicit) if explicit else cache_root() / "cluster"


def bin_dir() -> Path:
    return cache_root() / "bin"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    registry: int
    kueue_health: int
    kueue_metrics: int
    kueue_webhook: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        return cls(*range(base, base + 10))

    def all(self) -> list[int]:
        return list(asdict(self).values())


@dataclass
class ClusterConfig:
    nodes: int = 4
    gpus_per_node: int = 8
    cpu_per_node: str = "96"
    memory_per_node: str = "1024Gi"
    # Below the kernel's ephemeral range (32768+), so no outgoing connection can hold one.
    port_base: int = 26380

    @classmethod
    def from_env(cls) -> ClusterConfig:
        return cls(
            nodes=int(os.environ.get("TRAINGUARD_NODES", "4")),
            gpus_per_node=int(os.environ.get("TRAINGUARD_GPUS_PER_NODE", "8")),
            port_base=int(os.environ.get("TRAINGUARD_CLUSTER_PORT_BASE", "26380")),
        )


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says which step and where the log is."""


@dataclass(frozen=True)
class Cluster:
    """A running cluster as tests and tools see it."""

    state: Path
    kubeconfig: Path
    server: str
    ca_file: Path
    ports: Ports

    @property
    def registry(self) -> str:
        """host:port of the cluster's plain-HTTP image registry on loopback."""
        return f"{LOOPBACK}:{self.ports.registry}"

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir() / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            check=check,
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )


# --------------------------------------------------------------------------- processes


def _pid_alive(pid: int, binary: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    # Zombies have an empty cmdline; a reused pid runs another program. Python components
    # (the provisioner) are recognised by their module name among the arguments.
    return Path(argv[0]).name == binary or any(arg.endswith(f".{binary}") for arg in argv[1:])


def _lingers(pid: int) -> bool:
    """A process that is gone in name (a zombie leader) but whose threads still run."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    threads = next((line.split()[1] for line in status.splitlines() if line.startswith("Threads:")), "0")
    return int(threads) > 1


def _read_pids(state: Path) -> dict[str, int]:
    path = state / "pids.json"
    if not path.exists():
        return {}
    data: dict[str, int] = json.loads(path.read_text())
    return data


def _write_pids(state: Path, pids: dict[str, int]) -> None:
    (state / "pids.json").write_text(json.dumps(pids, indent=1))


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


# The distribution registry logs every request (its access log) and, since v3, exports OpenTelemetry
# traces to localhost:4318 by default, logging an error per export: neither helps here, and both
# cost CPU on every image read the admission webhooks make.
REGISTRY_QUIET: dict[str, Any] = {"log": {"level": "warn", "accesslog": {"disabled": True}}}
REGISTRY_ENV = {"OTEL_TRACES_EXPORTER": "none"}


def _spawn(
    state: Path, name: str, argv: list[str], pids: dict[str, int], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = (state / "logs" / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, **env} if env else None,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the launcher; `down` stops it by pid
        close_fds=True,
    )
    pids[name] = proc.pid
    _write_pids(state, pids)
    return proc


def _wait(
    what: str,
    check: object,
    timeout: float,
    log: Path | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `check` until true; fail early when `proc`, the component being waited for, has exited."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            last_error = f"the process exited with code {proc.returncode}"
            break
        try:
            if check():
                return
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    tail = ""
    if log and log.exists():
        tail = (
            "\n--- last lines of "
            + log.name
            + " ---\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        )
    raise ClusterError(f"{what} was not ready after {timeout:.0f} s ({last_error or 'no answer'}).{tail}")


# --------------------------------------------------------------------------- config files


def _kubeconfig(path: Path, server: str, ca: Path, client: pki.KeyPair, user: str) -> None:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "trainguard-local",
                        "cluster": {"server": server, "certificate-authority": str(ca)},
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
                    }
                ],
                "contexts": [
                    {"name": "trainguard-local", "context": {"cluster": "trainguard-local", "user": user}}
                ],
                "current-context": "trainguard-local",
            },
            indent=1,
        )
    )
    path.chmod(0o600)


def _node_manifest(index: int, cfg: ClusterConfig) -> dict[str, object]:
    name = f"gpu-node-{index}"
    resources = {
        "cpu": cfg.cpu_per_node,
        "memory": cfg.memory_per_node,
        "pods": "110",
        GPU_RESOURCE: str(cfg.gpus_per_node),
        "ephemeral-storage": "1Ti",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "topology.kubernetes.io/zone": f"zone-{index % 2}",
            },
        },
        "spec": {
            # GPU nodes carry the taint GPU clusters use; the ExtendedResourceToleration
            # admission plugin adds the toleration to pods that request GPUs.
            "taints": [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}],
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


# --------------------------------------------------------------------------- the cluster


class LocalCluster:
    def __init__(self, cfg: ClusterConfig | None = None, state: Path | None = None) -> None:
        self.cfg = cfg or ClusterConfig.from_env()
        self.state = state or state_dir()
        self.ports = Ports.from_base(self.cfg.port_base)
        self.pki_dir = self.state / "pki"
        self.bin = bin_dir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # paths
    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    def handle(self) -> Cluster:
        return Cluster(self.state, self.kubeconfig, self.server, self.pki_dir / "ca.crt", self.ports)

    # health
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def _apiserver_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.server}/readyz", context=self._ssl_context(), timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)

    @staticmethod
    def _component_healthy(port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of a loopback-only component
        with urllib.request.urlopen(f"https://{LOOPBACK}:{port}/healthz", context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)

    def healthy(self) -> bool:
        pids = _read_pids(self.state)
        if set(pids) != set(COMPONENTS) or not all(_pid_alive(pid, name) for name, pid in pids.items()):
            return False
        try:
            return (
                self._apiserver_ready()
                and self._component_healthy(self.ports.controller_manager)
                and self._component_healthy(self.ports.scheduler)
                and self._kueue_ready()
            )
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    # lifecycle
    def up(self) -> Cluster:
        """Start the cluster unless a healthy one is running; return its handle."""
        if self.healthy():
            return self.handle()
        self.down(quiet=True)
        started = time.monotonic()
        self._check_binaries()
        busy = [p for p in self.ports.all() if _port_open(p)]
        if busy:
            raise ClusterError(
                f"ports {busy} on {LOOPBACK} are taken by another program; "
                "stop it or set TRAINGUARD_CLUSTER_PORT_BASE to a free range of ten ports"
            )
        for sub in ("logs", "etcd"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
            (self.state / sub).mkdir(parents=True)
        self._ensure_pki()
        pids: dict[str, int] = {}
        self._start_etcd(pids)
        self._start_apiserver(pids)
        self._start_controllers(pids)
        self._start_registry(pids)
        self._create_nodes()
        self._wait_ready()
        self._start_kueue(pids)
        (self.state / "startup-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        return self.handle()

    def down(self, quiet: bool = False) -> None:
        """Stop every process this launcher started; leave no port listening."""
        pids = _read_pids(self.state)
        order = list(reversed(COMPONENTS))
        for name in order:
            pid = pids.get(name)
            if pid and _pid_alive(pid, name):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name in order:
            pid = pids.get(name)
            while pid and (_pid_alive(pid, name) or _lingers(pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid and (_pid_alive(pid, name) or _lingers(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        # A Go process whose main thread has exited shows an empty command line while its other
        # threads still hold its ports (Kueue, shutting down): wait for the ports themselves.
        deadline = time.monotonic() + 10
        while any(_port_open(p) for p in self.ports.all()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.state.exists():
            _write_pids(self.state, {})
        still = [p for p in self.ports.all() if _port_open(p)]
        if still and not quiet:
            raise ClusterError(f"ports {still} still listen after stopping the cluster")

    # steps
    def _check_binaries(self) -> None:
        needed = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kubectl",
            "registry",
            "kueue",
        ]
        missing = [b for b in needed if not (self.bin / b).exists()]
        if missing:
            raise ClusterError(
                f"missing binaries {missing} in {self.bin}: run `make build` (e2e/cluster/build.sh) first"
            )

    def _ensure_pki(self) -> None:
        d = self.pki_dir
        ca = pki.ensure_ca(d, "ca")
        pki.ensure_leaf(
            d,
            "apiserver",
            ca,
            common_name="kube-apiserver",
            server_names=(
                LOOPBACK,
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ),
        )
        pki.ensure_leaf(
            d, "admin", ca, common_name="trainguard-admin", organization="system:masters", client=True
        )
        pki.ensure_leaf(
            d, "controller-manager", ca, common_name="system:kube-controller-manager", client=True
        )
        pki.ensure_leaf(d, "scheduler", ca, common_name="system:kube-scheduler", client=True)
        # kwok plays every kubelet: it writes node and pod status cluster-wide.
        pki.ensure_leaf(d, "kwok", ca, common_name="kwok", organization="system:masters", client=True)
        # Kueue acts as the identity the chart's Kueue has (its ServiceAccount's user name), so the
        # operator's default settings name it; its rights here are a cluster admin's.
        pki.ensure_leaf(d, "kueue", ca, common_name=KUEUE_USER, organization="system:masters", client=True)
        pki.ensure_leaf(d, "kueue-serving", ca, common_name="kueue", server_names=(LOOPBACK, "localhost"))
        pki.ensure_service_account_keys(d)
        for user in ("admin", "controller-manager", "scheduler", "kwok", "kueue"):
            _kubeconfig(
                self.state / f"{user}.kubeconfig" if user != "admin" else self.kubeconfig,
                self.server,
                d / "ca.crt",
                pki.KeyPair(d / f"{user}.crt", d / f"{user}.key"),
                user,
            )

    def _start_etcd(self, pids: dict[str, int]) -> None:
        p = self.ports
        proc = _spawn(
            self.state,
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=trainguard-local",
                f"--data-dir={self.state / 'etcd'}",
                f"--listen-client-urls=http://{LOOPBACK}:{p.etcd_client}",
                f"--advertise-client-urls=http://{LOOPBACK}:{p.etcd_client}",
                f"--listen-peer-urls=http://{LOOPBACK}:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://{LOOPBACK}:{p.etcd_peer}",
                f"--initial-cluster=trainguard-local=http://{LOOPBACK}:{p.etcd_peer}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync=true",  # a throwaway test cluster: speed over durability
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
            pids,
        )
        _wait("etcd", lambda: _port_open(p.etcd_client), 30, self.state / "logs" / "etcd.log", proc)

    def _start_apiserver(self, pids: dict[str, int]) -> None:
        d, p = self.pki_dir, self.ports
        admission = ",".join(
            [
                "NamespaceLifecycle",
                "LimitRanger",
                "ServiceAccount",
                "PodSecurity",
                "Priority",
                "DefaultTolerationSeconds",
                "ExtendedResourceToleration",
                # TaintNodesByCondition is left out: its not-ready taint is lifted by the node
                # lifecycle controller, which simulated nodes do not need.
                "DefaultStorageClass",
                "StorageObjectInUseProtection",
                "PersistentVolumeClaimResize",
                "RuntimeClass",
                "MutatingAdmissionWebhook",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionWebhook",
                "ResourceQuota",
            ]
        )
        proc = _spawn(
            self.state,
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://{LOOPBACK}:{p.etcd_client}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={p.apiserver}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=RBAC",
                f"--enable-admission-plugins={admission}",
                "--disable-admission-plugins=TaintNodesByCondition",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",  # loopback is not a valid endpoint address
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            pids,
        )
        _wait("kube-apiserver", self._apiserver_ready, 90, self.state / "logs" / "kube-apiserver.log", proc)

    def _start_controllers(self, pids: dict[str, int]) -> None:
        d, p, s = self.pki_dir, self.ports, self.state
        kcm_cfg = str(s / "controller-manager.kubeconfig")
        self.procs["kube-controller-manager"] = _spawn(
            s,
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={kcm_cfg}",
                f"--authentication-kubeconfig={kcm_cfg}",
                f"--authorization-kubeconfig={kcm_cfg}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={p.controller_manager}",
                f"--cert-dir={s / 'controller-manager-certs'}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                "--use-service-account-credentials=true",
                # Simulated nodes have no kubelet heartbeat contract and no cloud.
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            pids,
        )
        sched_cfg = str(s / "scheduler.kubeconfig")
        self.procs["kube-scheduler"] = _spawn(
            s,
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={sched_cfg}",
                f"--authentication-kubeconfig={sched_cfg}",
                f"--authorization-kubeconfig={sched_cfg}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={p.scheduler}",
                f"--cert-dir={s / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            pids,
        )
        self.procs["provisioner"] = _spawn(
            s, "provisioner", [sys.executable, "-m", "e2e.cluster.provisioner", str(self.kubeconfig)], pids
        )
        self.procs["kwok"] = _spawn(
            s,
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={s / 'kwok.kubeconfig'}",
                f"--config={HERE / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--cidr=10.244.0.1/16",
                "--node-ip=127.0.0.1",  # nodes are simulated: anything dialling a "kubelet" stays on loopback
                f"--server-address={LOOPBACK}:{p.kwok}",
                "--node-lease-duration-seconds=0",
            ],
            pids,
        )

    def stop_kueue(self) -> None:
        """Stop Kueue alone (tests of what trainguard does while Kueue is down)."""
        pids = _read_pids(self.state)
        pid = pids.get("kueue")
        if pid and _pid_alive(pid, "kueue"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _pid_alive(pid, "kueue") and time.monotonic() < deadline:
                time.sleep(0.1)

    def start_kueue(self) -> None:
        """Start Kueue again after `stop_kueue` (idempotent when it runs)."""
        pids = _read_pids(self.state)
        if pids.get("kueue") and _pid_alive(pids["kueue"], "kueue"):
            return
        self._start_kueue(pids)

    def _kueue_ready(self) -> bool:
        url = f"http://{LOOPBACK}:{self.ports.kueue_health}/readyz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    def _start_kueue(self, pids: dict[str, int]) -> None:
        """Kueue's CRDs (from the module Kueue was built from), its namespace, then the manager.

        With internal certificate management off, Kueue reads its metrics certificate from a fixed
        /etc/kueue/metrics/certs. It runs in a mount namespace of its own where /etc is an overlay
        holding that folder, so the machine's /etc is never written."""
        cluster, s, p = self.handle(), self.state, self.ports
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.bin / "kueue-crds"))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "-f", str(self.bin / "kueue-crds")
        )
        cluster.kubectl("create", "namespace", "kueue-system", check=False)
        serving = s / "kueue-serving"
        overlay = s / "kueue-etc"
        certs = overlay / "upper" / "kueue" / "metrics" / "certs"
        for folder in (serving, certs, overlay / "work"):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        for folder in (serving, certs):
            shutil.copy(self.pki_dir / "kueue-serving.crt", folder / "tls.crt")
            shutil.copy(self.pki_dir / "kueue-serving.key", folder / "tls.key")
        config = s / "kueue-config.yaml"
        config.write_text(
            (HERE / "kueue-config.yaml")
            .read_text()
            .format(
                health_port=p.kueue_health,
                metrics_port=p.kueue_metrics,
                webhook_port=p.kueue_webhook,
                cert_dir=serving,
            )
        )
        script = (
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={overlay / 'upper'},"
            f"workdir={overlay / 'work'} /etc && exec {self.bin / 'kueue'} --config={config} "
            "--zap-log-level=info"
        )
        env_kubeconfig = s / "kueue.kubeconfig"
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            cwd=REPO,
            env={**os.environ, "KUBECONFIG": str(env_kubeconfig)},
            stdout=(s / "logs" / "kueue.log").open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        pids["kueue"] = proc.pid
        _write_pids(s, pids)
        self.procs["kueue"] = proc
        _wait("Kueue", self._kueue_ready, 90, s / "logs" / "kueue.log", proc)

    @property
    def registry_host(self) -> str:
        return f"{LOOPBACK}:{self.ports.registry}"

    def _start_registry(self, pids: dict[str, int]) -> None:
        """The distribution registry, plain HTTP on loopback, kept on disk across restarts."""
        config = self.state / "registry.yml"
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    **REGISTRY_QUIET,
                    "storage": {"filesystem": {"rootdirectory": str(self.state / "registry-data")}},
                    "http": {"addr": self.registry_host, "debug": {"addr": ""}},
                }
            )
        )
        self.procs["registry"] = _spawn(
            self.state, "registry", [str(self.bin / "registry"), "serve", str(config)], pids, REGISTRY_ENV
        )

    def _create_nodes(self) -> None:
        cluster = self.handle()
        docs = "\n---\n".join(json.dumps(_node_manifest(i, self.cfg)) for i in range(self.cfg.nodes))
        cluster.kubectl("apply", "-f", "-", input=docs)

    def _wait_ready(self) -> None:
        cluster, logs = self.handle(), self.state / "logs"

        def nodes_ready() -> bool:
            out = cluster.kubectl(
                "get",
                "nodes",
                "-o",
                'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
                check=False,
            ).stdout.split()
            return len(out) == self.cfg.nodes and all(s == "True" for s in out)

        def default_sa() -> bool:
            return (
                cluster.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode
                == 0
            )

        kcm, sched, kwok = (self.procs.get(n) for n in ("kube-controller-manager", "kube-scheduler", "kwok"))
        _wait(
            "kube-controller-manager",
            lambda: self._component_healthy(self.ports.controller_manager),
            60,
            logs / "kube-controller-manager.log",
            kcm,
        )
        _wait(
            "kube-scheduler",
            lambda: self._component_healthy(self.ports.scheduler),
            60,
            logs / "kube-scheduler.log",
            sched,
        )
        _wait("simulated GPU nodes (kwok)", nodes_ready, 60, logs / "kwok.log", kwok)
        _wait(
            "the image registry",
            lambda: _port_open(self.ports.registry),
            30,
            logs / "registry.log",
            self.procs.get("registry"),
        )
        _wait("the default service account", default_sa, 60, logs / "kube-controller-manager.log", kcm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--nodes", type=int, help="simulated GPU nodes (default 4, or $TRAINGUARD_NODES)")
    parser.add_argument("--gpus-per-node", type=int, help="nvidia.com/gpu per node (default 8)")
    args = parser.parse_args(argv)
    cfg = ClusterConfig.from_env()
    if args.nodes:
        cfg.nodes = args.nodes
    if args.gpus_per_node:
        cfg.gpus_per_node = args.gpus_per_node
    lc = LocalCluster(cfg)
    export = f"export KUBECONFIG={lc.kubeconfig}"
    try:
        if args.command == "up":
            was_healthy = lc.healthy()
            start = time.monotonic()
            lc.up()
            took = time.monotonic() - start
            how = "already running" if was_healthy else f"started in {took:.1f} s"
            print(
                f"trainguard local cluster {how}: "
                f"{cfg.nodes} simulated nodes x {cfg.gpus_per_node} {GPU_RESOURCE}",
                file=sys.stderr,
            )
            print(export)
        elif args.command == "down":
            lc.down()
            print("trainguard local cluster stopped", file=sys.stderr)
        elif args.command == "status":
            ok = lc.healthy()
            print("healthy" if ok else "not running", file=sys.stderr)
            return 0 if ok else 1
        else:
            print(export)
    except ClusterError as exc:
        print(f"localcluster {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
