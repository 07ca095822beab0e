"""Scheduling benchmark in the shape of Kueue's scheduler-performance baseline
(test/performance/scheduler/configs/baseline in Kueue's repository): Kueue alone against
trainguard's TrainingJobs on the same cluster, one arm after the other.

Shape (full scale): 5 cohorts of 6 tenants (ClusterQueues), each with nominal 20 GPUs and a
borrowing limit of 100, preemption reclaimWithinCohort=Any / withinClusterQueue=LowerPriority.
Per tenant, three job classes created at fixed intervals, all tenants at once:
  small   350 jobs of 1 GPU,  one every 0.1 s, runs 0.2 s, priority 50
  medium  100 jobs of 5 GPUs, one every 0.5 s, runs 0.5 s, priority 100
  large    50 jobs of 20 GPUs (2 pods of 10: a TrainingJob has at most 16 GPUs a replica),
           one every 1.2 s, runs 1 s, priority 200
Arms:
  kueue       suspended batch/v1 Jobs with a queue-name label, a LocalQueue per namespace, the
              ClusterQueues above: Kueue's own Job integration admits and starts them; Kueue's
              Job webhooks (mjob.kb.io, vjob.kb.io) are registered for the arm, as Kueue's chart
              registers them, so each Job create pays its controller's webhook as a TrainingJob
              create pays trainguard's
  trainguard  the same as Tenants and TrainingJobs; the operator (local processes) renders the
              queues, makes each job's Workload and starts its pods once Kueue admits it. As the
              chart runs it (`--topology chart`, the default): admission in its own process
              (`--role admission`) beside the one reconciler; or one process doing both
              (`--topology single`, the local test mode)

Scaling (`--scale s`, for a machine far smaller than Kueue's CI): every job count is multiplied
by s (at least 1 a class), and creation intervals and run times by `--stretch` (default 1/s).
Quotas, cohorts and tenants stay as they are (a 20-GPU job needs them, and Kueue's quota is the
capacity in the baseline), so the GPU-seconds demanded per second against the GPUs there are
stay those of the original; only the number of scheduling decisions shrinks. Pods run on kwok
nodes the benchmark adds (one of 120 GPUs per cohort: the sum of nominal quotas), beside the
cluster's own; each finishes after its run time through the kwok stage tg-pod-run-for
(annotation kwok.trainguard.test/run-seconds).

Measured per arm: wall time (first create to last job finished), mean time to admission per
class (create request sent -> its Workload admitted, as seen by a watch; the targets are judged
on this clock) and to start (create -> the Job unsuspended / the TrainingJob's Queued=False
reason Admitted), the same admission clock started once the create was answered and once the
Workload appeared (how Kueue's own runner measures), GPU usage (admitted GPU-seconds
over the wall time, of the quota and of the nodes' GPUs), admissions per second; for trainguard
also the operator's peak RSS. Writes bench/results/scheduling.json.

Job classes (`--classes small,medium`): only those named. Without the large class there are no
preemptions, so the arms' time to admission compares the same schedule.

Placement (`--placement split`): the control plane (etcd, API server, controller manager,
scheduler) on half of the CPUs, and Kueue, the simulated nodes, the storage driver, the registry,
trainguard's processes and this load generator on the other half, for both arms, as on a cluster
whose controllers run on worker nodes. By default (`shared`) every process may use every CPU, as
on a development machine, where any controller's CPU is taken from the API server's.

Rounds (`--rounds n`): both arms n times on the same cluster, every other round in reverse order,
each round under names of its own. One round's ratios move by tens of percent from run to run on a
small machine; with n > 1 the ratios reported (and judged against the targets) are the medians of
the rounds' ratios, `arms` holds the figures of the round with the median wall-time ratio, and
`every_round` every round's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from bench.load import write_report
from e2e.cluster.harness import (
    RELEASE_NAMESPACE,
    OperatorProcess,
    install_chart,
    make_tenant,
    remove_webhook_configurations,
    service_account_kubeconfig,
    signed_image,
    wait_for_terminating_namespaces,
)
from e2e.cluster.localcluster import (
    ROOT_CRDS,
    Cluster,
    ClusterConfig,
    LocalCluster,
    _node_manifest,
    _read_pids,
)
from e2e.cluster.waiting import wait_for
from trainguard.api.constants import GROUP, KUEUE_GROUP, KUEUE_VERSION, LABEL_JOB, LOCAL_QUEUE, VERSION
from trainguard.quota.render import cluster_queue_name

GPU = "nvidia.com/gpu"
RUN_SECONDS = "kwok.trainguard.test/run-seconds"
BENCH_LABEL = "trainguard.dev/bench"
COHORTS, TENANTS_PER_COHORT = 5, 6
NOMINAL, BORROWING = 20, 100
NODE_GPUS = TENANTS_PER_COHORT * NOMINAL  # one node a cohort: the nodes hold the sum of quotas
CREATORS = 8  # concurrent create requests
TARGETS = {"max_wall_ratio": 1.10, "max_time_to_admission_ratio": 1.10, "operator_peak_rss_mib": 1024}
# The control plane proper: on its own CPUs with `--placement split`, as on its own nodes.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
KUEUE_JOB_WEBHOOKS = "kueue-job-webhooks"


@dataclass(frozen=True)
class JobClass:
    name: str
    count: int  # per tenant
    gpus: int  # per job
    pods: int
    priority: int
    interval_s: float
    runtime_s: float

    def scaled(self, scale: float, stretch: float) -> JobClass:
        return JobClass(
            self.name,
            max(1, round(self.count * scale)),
            self.gpus,
            self.pods,
            self.priority,
            self.interval_s * stretch,
            self.runtime_s * stretch,
        )


BASELINE = (
    JobClass("small", 350, 1, 1, 50, 0.1, 0.2),
    JobClass("medium", 100, 5, 1, 100, 0.5, 0.5),
    JobClass("large", 50, 20, 2, 200, 1.2, 1.0),
)


# --------------------------------------------------------------------------- observation


@dataclass
class JobRecord:
    cls: JobClass
    created: float  # time.monotonic() just before the create request
    answered: float | None = None  # the create request answered (admission webhooks passed)
    queued: float | None = None  # its Workload first seen (where Kueue's own runner starts the clock)
    admitted: float | None = None  # its Workload first seen Admitted
    started: float | None = None  # the controller acted on the admission
    finished: float | None = None
    failed: bool = False
    holding: bool = False  # its Workload holds quota now
    intervals: list[list[float]] = field(default_factory=list)  # [admitted, released] periods


class Recorder:
    """Every job of one arm, keyed by (namespace, name), with the moments the watches saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], JobRecord] = {}

    def add(self, key: tuple[str, str], cls: JobClass) -> None:
        with self.lock:
            self.jobs[key] = JobRecord(cls, time.monotonic())

    def get(self, key: tuple[str, str]) -> JobRecord | None:
        with self.lock:
            return self.jobs.get(key)

    def workload(self, kind: str, key: tuple[str, str] | None, wl: dict[str, Any]) -> None:
        now = time.monotonic()
        rec = self.get(key) if key else None
        if rec is None:
            return
        holds = (
            kind != "DELETED"
            and _condition(wl, "Admitted") == "True"
            and _condition(wl, "Finished") != "True"
        )
        with self.lock:
            rec.queued = rec.queued or now
            if holds and not rec.holding:
                rec.holding = True
                rec.intervals.append([now, now])
                rec.admitted = rec.admitted or now
            elif not holds and rec.holding:
                rec.holding = False
                rec.intervals[-1][1] = now

    def mark(self, key: tuple[str, str], started: bool, finished: bool, failed: bool) -> None:
        now = time.monotonic()
        rec = self.get(key)
        if rec is None:
            return
        with self.lock:
            if started and rec.started is None:
                rec.started = now
            if (finished or failed) and rec.finished is None:
                rec.finished, rec.failed = now, failed

    def unfinished(self) -> int:
        with self.lock:
            return sum(r.finished is None for r in self.jobs.values())


def _condition(obj: dict[str, Any], kind: str, reason: str | None = None) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and (reason is None or cond.get("reason") == reason):
            return str(cond.get("status"))
    return None


class Watcher(threading.Thread):
    """List, then watch, one kind cluster-wide; every object to `handle` as plain dicts."""

    def __init__(
        self, list_fn: Callable[..., Any], handle: Callable[[str, dict[str, Any]], None], **kwargs: Any
    ) -> None:
        super().__init__(daemon=True)
        self.list_fn, self.handle, self.kwargs = list_fn, handle, kwargs
        self.stopping = threading.Event()
        self.errors = 0

    def run(self) -> None:
        version = ""
        while not self.stopping.is_set():
            try:
                if not version:
                    listing = json.loads(self.list_fn(_preload_content=False, **self.kwargs).data)
                    version = listing["metadata"]["resourceVersion"]
                    for item in listing["items"]:
                        self.handle("ADDED", item)
                stream = watch.Watch(return_type="object")
                for event in stream.stream(
                    self.list_fn, resource_version=version, timeout_seconds=5, **self.kwargs
                ):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion") or version
                    self.handle(event["type"], obj)
                    if self.stopping.is_set():
                        stream.stop()
            except ApiException as exc:
                self.errors += 1
                if exc.status == 410:
                    version = ""
                else:
                    time.sleep(0.5)
            except Exception:  # a dropped connection: watch again from the last version
                self.errors += 1
                time.sleep(0.5)

    def stop(self) -> None:
        self.stopping.set()


class RssSampler(threading.Thread):
    """The peak resident memory of one process: VmHWM, and the largest VmRSS sampled."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.max_rss_kib, self.hwm_kib = pid, 0, 0
        self.stopping = threading.Event()

    def read(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                self.max_rss_kib = max(self.max_rss_kib, int(value.split()[0]))
            elif key == "VmHWM":
                self.hwm_kib = max(self.hwm_kib, int(value.split()[0]))

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.read()

    def stop(self) -> None:
        self.read()
        self.stopping.set()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Slot:
    at: float  # seconds after the start
    namespace: str
    cls: JobClass
    index: int

    @property
    def name(self) -> str:
        return f"{self.cls.name}-{self.index}"


def select_classes(names: str) -> tuple[JobClass, ...]:
    """The BASELINE classes named (comma-separated), in BASELINE's order; ValueError otherwise."""
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    known = [c.name for c in BASELINE]
    if not wanted or wanted - set(known):
        raise ValueError(f"{names!r}: name one or more of {known}, comma-separated")
    return tuple(c for c in BASELINE if c.name in wanted)


def kueue_job_webhooks(port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's own batch/v1 Job webhooks as its chart registers them (mjob.kb.io defaults a
    queued Job to suspended, vjob.kb.io validates creates and updates), pointed at the local
    Kueue's webhook server on loopback: every Job create of the Kueue-alone arm pays the round
    trips it pays wherever Kueue runs, as every TrainingJob create pays trainguard's."""

    def webhook(name: str, path: str, operations: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "rules": [
                {
                    "apiGroups": ["batch"],
                    "apiVersions": ["v1"],
                    "operations": operations,
                    "resources": ["jobs"],
                }
            ],
        }

    group = "admissionregistration.k8s.io/v1"
    return [
        {
            "apiVersion": group,
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": KUEUE_JOB_WEBHOOKS},
            "webhooks": [webhook("mjob.kb.io", "/mutate-batch-v1-job", ["CREATE"])],
        },
        {
            "apiVersion": group,
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": KUEUE_JOB_WEBHOOKS},
            "webhooks": [webhook("vjob.kb.io", "/validate-batch-v1-job", ["CREATE", "UPDATE"])],
        },
    ]


def kubectl_apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    """`kubectl apply` of `objects`, as one List."""
    body = {"apiVersion": "v1", "kind": "List", "items": objects}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


@contextlib.contextmanager
def kueue_job_webhooks_registered(cluster: Cluster, *, check_removal: bool = False) -> Iterator[None]:
    """Kueue's own Job webhooks (`kueue_job_webhooks`, trusting the cluster's CA) registered for
    the block, and removed after it (`check_removal`: a failed delete raises)."""
    bundle = base64.b64encode(cluster.ca_file.read_bytes()).decode()
    kubectl_apply(cluster, kueue_job_webhooks(cluster.ports.kueue_webhook, bundle))
    try:
        yield
    finally:
        remove_webhook_configurations(cluster, KUEUE_JOB_WEBHOOKS, check=check_removal)


def queued_batch_job(
    name: str,
    *,
    pods: int,
    gpus_per_pod: int,
    labels: dict[str, str] | None = None,
    pod_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job for Kueue alone: queued on the namespace's LocalQueue, suspended, `pods`
    pods of `gpus_per_pod` GPUs each."""
    per_pod = {GPU: str(gpus_per_pod)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": {"kueue.x-k8s.io/queue-name": LOCAL_QUEUE, **(labels or {})},
        },
        "spec": {
            "suspend": True,  # as Kueue's documentation writes it (its webhook would set it)
            "parallelism": pods,
            "completions": pods,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": dict(pod_annotations or {})},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "bench/trainer:v1",
                            "resources": {"requests": per_pod, "limits": per_pod},
                        }
                    ],
                },
            },
        },
    }


def split_cpus(cpus: set[int]) -> tuple[set[int], set[int]]:
    """(control plane's, everyone else's): the lower half of the CPUs, at least one each."""
    if len(cpus) < 2:
        raise ValueError(f"--placement split needs at least 2 CPUs, this process may use {len(cpus)}")
    ordered = sorted(cpus)
    half = len(ordered) // 2
    return set(ordered[:half]), set(ordered[half:])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus`; threads started later inherit their starter's."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread just ended
            os.sched_setaffinity(int(task.name), cpus)


class Placement:
    """Where the processes run. `shared`: anywhere, as started (the development machine: the
    control plane, Kueue, trainguard and the load generator share every core). `split`: the
    control plane (etcd, API server, controller manager, scheduler) on the lower half of the
    CPUs, everything else (Kueue, kwok, the storage driver, the registry, this process and the
    trainguard processes it starts) on the upper half, as on a cluster whose controllers run
    on worker nodes apart from the control plane's. The same for both arms."""

    def __init__(self, kind: str) -> None:
        """ValueError: `split` on fewer than 2 CPUs."""
        self.kind = kind
        self.all = os.sched_getaffinity(0)
        self.control, self.others = split_cpus(self.all) if kind == "split" else (self.all, self.all)

    def apply(self, cluster: Cluster) -> None:
        if self.kind == "shared":
            return
        for name, pid in _read_pids(cluster.state).items():
            pin(pid, self.control if name in CONTROL_PLANE else self.others)
        pin(os.getpid(), self.others)  # and the operator processes this one starts

    def restore(self, cluster: Cluster) -> None:
        if self.kind == "shared":
            return
        for pid in _read_pids(cluster.state).values():
            pin(pid, self.all)
        pin(os.getpid(), self.all)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "control_plane_cpus": sorted(self.control),
            "other_cpus": sorted(self.others),
        }


def timetable(namespaces: list[str], classes: tuple[JobClass, ...]) -> list[Slot]:
    """Kueue's generator: per queue and class, one job after each interval, all queues at once."""
    slots = [
        Slot((k + 1) * cls.interval_s, ns, cls, k)
        for ns in namespaces
        for cls in classes
        for k in range(cls.count)
    ]
    return sorted(slots, key=lambda s: s.at)


def generate(slots: list[Slot], recorder: Recorder, create: Callable[[Slot], None]) -> list[float]:
    """Create every job on time; return each create request's latency (seconds)."""
    latencies: list[float] = []

    def one(slot: Slot) -> None:
        recorder.add((slot.namespace, slot.name), slot.cls)
        start = time.monotonic()
        create(slot)
        answered = time.monotonic()
        latencies.append(answered - start)
        record = recorder.get((slot.namespace, slot.name))
        if record is not None:
            record.answered = answered

    start = time.monotonic()
    with ThreadPoolExecutor(CREATORS) as pool:
        futures = []
        for slot in slots:
            delay = start + slot.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, slot))
        for future in futures:
            future.result()
    return latencies


def wait_done(recorder: Recorder, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while recorder.unfinished() and time.monotonic() < deadline:
        time.sleep(0.5)


def summarize(
    recorder: Recorder, classes: tuple[JobClass, ...], quota_gpus: int, node_gpus: int, latencies: list[float]
) -> dict[str, Any]:
    jobs = list(recorder.jobs.values())
    first = min(r.created for r in jobs)
    done = [r.finished for r in jobs if r.finished is not None]
    last = max(done) if done else time.monotonic()
    wall = last - first
    admitted = [r.admitted for r in jobs if r.admitted is not None]
    gpu_seconds = sum(
        r.cls.gpus * (min(end, last) - start) for r in jobs for start, end in r.intervals if start < last
    )

    def mean(values: list[float]) -> float | None:
        return round(statistics.fmean(values), 3) if values else None

    per_class: dict[str, Any] = {}
    for cls in classes:
        mine = [r for r in jobs if r.cls.name == cls.name]
        per_class[cls.name] = {
            "jobs": len(mine),
            "gpus": cls.gpus,
            "mean_time_to_admission_s": mean([r.admitted - r.created for r in mine if r.admitted]),
            "mean_time_to_start_s": mean([r.started - r.created for r in mine if r.started]),
            # The same clock stopped, started later: once the create was answered, and (Kueue's
            # scheduler-performance runner) once the Workload appeared.
            "mean_time_to_admission_from_answer_s": mean(
                [r.admitted - r.answered for r in mine if r.admitted and r.answered]
            ),
            "mean_time_to_admission_from_workload_s": mean(
                [r.admitted - r.queued for r in mine if r.admitted and r.queued]
            ),
            "max_time_to_admission_s": round(
                max((r.admitted - r.created for r in mine if r.admitted), default=0), 3
            ),
        }
    return {
        "jobs": len(jobs),
        "finished": len(done),
        "failed": sum(r.failed for r in jobs),
        "readmissions": sum(max(0, len(r.intervals) - 1) for r in jobs),  # preempted and admitted again
        "wall_s": round(wall, 3),
        "classes": per_class,
        "gpu_usage_of_quota": round(gpu_seconds / (quota_gpus * wall), 4) if wall > 0 else None,
        "gpu_usage_of_node_gpus": round(gpu_seconds / (node_gpus * wall), 4) if wall > 0 else None,
        "admissions_per_second": round(len(admitted) / (max(admitted) - first), 3) if admitted else None,
        "mean_create_latency_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
    }


# --------------------------------------------------------------------------- the cluster


class Bench:
    def __init__(
        self, cluster: Cluster, classes: tuple[JobClass, ...], run: str, topology: str = "chart"
    ) -> None:
        self.cluster, self.classes, self.run, self.topology = cluster, classes, run, topology
        config.load_kube_config(config_file=str(cluster.kubeconfig))
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = 32
        api = client.ApiClient(configuration)
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.tmp = Path(tempfile.mkdtemp(prefix="trainguard-sched-bench-"))
        # The slowest job's whole life, plus room for the queue to drain on a loaded machine.
        span = max(c.count * c.interval_s + c.runtime_s for c in classes)
        self.timeout = 600 + 10 * span

    def add_nodes(self) -> list[str]:
        shape = ClusterConfig(gpus_per_node=NODE_GPUS, cpu_per_node="100000", memory_per_node="100000Gi")
        nodes = []
        for i in range(COHORTS):
            node = cast(dict[str, Any], _node_manifest(i, shape))
            name = f"sched-bench-node-{i}"
            node["metadata"]["name"] = name
            node["metadata"]["labels"]["kubernetes.io/hostname"] = name
            node["metadata"]["labels"][BENCH_LABEL] = "scheduling"
            for resources in node["status"].values():
                resources["pods"] = "5000"
            nodes.append(node)
        kubectl_apply(self.cluster, nodes)
        names = [n["metadata"]["name"] for n in nodes]
        wait_for("the benchmark's kwok nodes to be Ready", lambda: self._nodes_ready(names), timeout=60)
        return names

    def _nodes_ready(self, names: list[str]) -> bool:
        items = json.loads(self.cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = {n["metadata"]["name"] for n in items if _condition(n, "Ready") == "True"}
        return set(names) <= ready

    def node_gpus(self) -> int:
        items = json.loads(self.cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        return sum(int((n.get("status") or {}).get("allocatable", {}).get(GPU, 0)) for n in items)

    def busy_gpu_pods(self) -> list[str]:
        pods = json.loads(self.cluster.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        return [
            f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and any(
                GPU in ((c.get("resources") or {}).get("requests") or {}) for c in p["spec"]["containers"]
            )
        ]

    def wait_gpus_free(self, timeout: float = 120) -> list[str]:
        """Wait until no pod in the cluster holds a GPU; return those that still do after `timeout`
        seconds (pods of others: the benchmark's own are gone with their namespaces)."""
        deadline = time.monotonic() + timeout
        while (busy := self.busy_gpu_pods()) and time.monotonic() < deadline:
            time.sleep(1)
        if busy:
            print(f"warning: {len(busy)} pods outside the benchmark hold GPUs: {busy[:5]}", file=sys.stderr)
        return busy

    def check_run_stage(self) -> None:
        """The cluster's kwok knows tg-pod-run-for (kwok reads its stages when it starts)."""
        ns = f"sched-probe-{self.run}"
        self.cluster.kubectl("create", "namespace", ns)
        wait_for(
            f"the default ServiceAccount in {ns}",
            lambda: (
                self.cluster.kubectl("get", "serviceaccount", "default", "-n", ns, check=False).returncode
                == 0
            ),
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe", "namespace": ns, "annotations": {RUN_SECONDS: "0.5"}},
            "spec": {
                "containers": [{"name": "c", "image": "probe", "resources": {"limits": {GPU: "1"}}}],
                "terminationGracePeriodSeconds": 0,
            },
        }
        kubectl_apply(self.cluster, [pod])
        try:
            wait_for(
                "a pod annotated run-seconds to succeed on its own (if it never does, the cluster's "
                "kwok predates the tg-pod-run-for stage: restart the cluster)",
                lambda: (
                    self.cluster.kubectl(
                        "get", "pod", "probe", "-n", ns, "-o", "jsonpath={.status.phase}"
                    ).stdout
                    == "Succeeded"
                ),
                timeout=30,
            )
        finally:
            self.cluster.kubectl("delete", "namespace", ns, "--wait=false")

    def wait_queues_active(self, names: list[str]) -> None:
        def active() -> bool:
            items = json.loads(self.cluster.kubectl("get", "clusterqueues", "-o", "json").stdout)["items"]
            ok = {q["metadata"]["name"] for q in items if _condition(q, "Active") == "True"}
            return set(names) <= ok

        wait_for("the ClusterQueues to be active", active, timeout=120, interval=1)

    def watch_workloads(
        self, recorder: Recorder, key: Callable[[dict[str, Any]], tuple[str, str] | None]
    ) -> Watcher:
        return Watcher(
            self.custom.list_cluster_custom_object,
            lambda kind, wl: recorder.workload(kind, key(wl), wl),
            group=KUEUE_GROUP,
            version=KUEUE_VERSION,
            plural="workloads",
        )

    def delete_namespaces(self, namespaces: list[str]) -> None:
        self.cluster.kubectl("delete", "namespace", *namespaces, "--wait=false", check=False)
        left = wait_for_terminating_namespaces(self.cluster, timeout=600, only=tuple(namespaces))
        if left:
            raise RuntimeError(f"namespaces still being deleted after 10 minutes: {left}")

    # ----------------------------------------------------------------------- arm: Kueue alone

    def kueue_arm(self, quota_gpus: int, node_gpus: int) -> dict[str, Any]:
        prefix = f"sk-{self.run}"
        flavor = f"{prefix}-gpu"
        namespaces = [f"{prefix}-c{c}-q{q}" for c in range(COHORTS) for q in range(TENANTS_PER_COHORT)]
        objects: list[dict[str, Any]] = [
            {
                "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
                "kind": "ResourceFlavor",
                "metadata": {"name": flavor},
            }
        ]
        objects += [
            {
                "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": f"{prefix}-{cls.name}"},
                "value": cls.priority,
            }
            for cls in self.classes
        ]
        for ns in namespaces:
            cohort = ns.rsplit("-q", 1)[0]
            objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            objects.append(
                {
                    "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
                    "kind": "ClusterQueue",
                    "metadata": {"name": ns},
                    "spec": {
                        "cohortName": cohort,
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                        "queueingStrategy": "BestEffortFIFO",
                        "resourceGroups": [
                            {
                                "coveredResources": [GPU],
                                "flavors": [
                                    {
                                        "name": flavor,
                                        "resources": [
                                            {
                                                "name": GPU,
                                                "nominalQuota": str(NOMINAL),
                                                "borrowingLimit": str(BORROWING),
                                            }
                                        ],
                                    }
                                ],
                            }
                        ],
                        "preemption": {
                            "reclaimWithinCohort": "Any",
                            "withinClusterQueue": "LowerPriority",
                            "borrowWithinCohort": {"policy": "Never"},
                        },
                    },
                }
            )
            objects.append(
                {
                    "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
                    "kind": "LocalQueue",
                    "metadata": {"name": LOCAL_QUEUE, "namespace": ns},
                    "spec": {"clusterQueue": ns},
                }
            )
        kubectl_apply(self.cluster, objects)
        self.wait_queues_active(namespaces)

        recorder = Recorder()
        bench_namespaces = set(namespaces)

        def job_of(wl: dict[str, Any]) -> tuple[str, str] | None:
            ns = wl["metadata"].get("namespace", "")
            owners = [o for o in wl["metadata"].get("ownerReferences") or [] if o.get("kind") == "Job"]
            return (ns, owners[0]["name"]) if ns in bench_namespaces and owners else None

        def job_changed(kind: str, job: dict[str, Any]) -> None:
            meta = job["metadata"]
            recorder.mark(
                (meta.get("namespace", ""), meta["name"]),
                started=job["spec"].get("suspend") is False,
                finished=_condition(job, "Complete") == "True",
                failed=_condition(job, "Failed") == "True",
            )

        watchers = [
            self.watch_workloads(recorder, job_of),
            Watcher(
                self.custom.list_cluster_custom_object,
                job_changed,
                group="batch",
                version="v1",
                plural="jobs",
                label_selector=f"{BENCH_LABEL}={self.run}",
            ),
        ]

        def create(slot: Slot) -> None:
            cls = slot.cls
            body = queued_batch_job(
                slot.name,
                pods=cls.pods,
                gpus_per_pod=cls.gpus // cls.pods,
                labels={"kueue.x-k8s.io/priority-class": f"{prefix}-{cls.name}", BENCH_LABEL: self.run},
                pod_annotations={RUN_SECONDS: f"{cls.runtime_s:g}"},
            )
            self.custom.create_namespaced_custom_object("batch", "v1", slot.namespace, "jobs", body)

        with kueue_job_webhooks_registered(self.cluster):
            result = self._run_arm(namespaces, recorder, watchers, create, quota_gpus, node_gpus)
        self.delete_namespaces(namespaces)
        self.cluster.kubectl(
            "delete", "clusterqueues", *namespaces, "--wait=true", "--timeout=120s", check=False
        )
        self.cluster.kubectl("delete", "resourceflavor", flavor, "--wait=false", check=False)
        self.cluster.kubectl(
            "delete", "workloadpriorityclasses", *[f"{prefix}-{c.name}" for c in self.classes], check=False
        )
        return result

    def _run_arm(
        self,
        namespaces: list[str],
        recorder: Recorder,
        watchers: list[Watcher],
        create: Callable[[Slot], None],
        quota_gpus: int,
        node_gpus: int,
        operator: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        # Every component of the local cluster (the API server, etcd, Kueue, kwok...), and the
        # operator's processes: where each arm's CPU went.
        pids = {**json.loads((self.cluster.state / "pids.json").read_text()), **(operator or {})}
        pids["bench"] = os.getpid()
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for watcher in watchers:
            watcher.start()
        try:
            latencies = generate(timetable(namespaces, self.classes), recorder, create)
            wait_done(recorder, self.timeout)
        finally:
            for watcher in watchers:
                watcher.stop()
        result = summarize(recorder, self.classes, quota_gpus, node_gpus, latencies)
        # CPU the controllers used from the first create to the last job done (this machine: 2 cores).
        used = {name: cpu_seconds(pid) for name, pid in pids.items()}
        result["cpu_seconds"] = {k: round(used[k] - cpu[k], 1) for k in cpu}
        result["watch_errors"] = sum(w.errors for w in watchers)
        if result["finished"] < result["jobs"]:
            print(f"warning: {result['jobs'] - result['finished']} jobs never finished", file=sys.stderr)
        return result

    # ----------------------------------------------------------------------- arm: trainguard

    def trainguard_arm(self, quota_gpus: int, node_gpus: int) -> dict[str, Any]:
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT_CRDS))
        install_chart(self.cluster)
        folder = self.tmp / self.run  # each round its own image, key and credentials
        folder.mkdir(exist_ok=True)
        signed = signed_image(self.cluster, folder, repository="bench/trainer")
        kubeconfig = service_account_kubeconfig(self.cluster, folder, RELEASE_NAMESPACE, "trainguard")
        prefix = f"st-{self.run}"
        # The chart's topology: admission served by its own process(es), one reconciler beside
        # them; or one process doing both (the local/test mode).
        split = self.topology == "chart"
        operator = OperatorProcess(
            folder / "operator.log",
            [f"{prefix}-*"],
            kubeconfig,
            registry=self.cluster.registry,
            admission=not split,
        )
        processes = [operator]
        if split:
            processes.insert(
                0,
                OperatorProcess(
                    folder / "admission.log",
                    [f"{prefix}-*"],
                    kubeconfig,
                    registry=self.cluster.registry,
                    extra_args=("--role", "admission"),
                ),
            )
        for process in processes:
            process.start()
        pids = {"operator": operator.proc.pid} if operator.proc else {}
        if split and processes[0].proc:
            pids["admission"] = processes[0].proc.pid
        assert operator.proc is not None
        rss = RssSampler(operator.proc.pid)
        rss.start()
        admission_rss = RssSampler(pids["admission"]) if "admission" in pids else None
        if admission_rss:
            admission_rss.start()
        spaces = []
        try:
            for c in range(COHORTS):
                for _ in range(TENANTS_PER_COHORT):
                    spaces.append(
                        make_tenant(
                            self.cluster,
                            prefix=f"{prefix}-c{c}",
                            signed=signed,
                            nominal=NOMINAL,
                            borrowing=BORROWING,
                            cohort=f"{prefix}-c{c}",
                        )
                    )
            self.wait_queues_active([cluster_queue_name(s.tenant) for s in spaces])
            by_namespace = {s.namespace: s for s in spaces}
            wait_for(
                "every tenant namespace's LocalQueue",
                lambda: all(
                    self.cluster.kubectl("get", "localqueue", LOCAL_QUEUE, "-n", ns, check=False).returncode
                    == 0
                    for ns in by_namespace
                ),
                timeout=60,
                interval=1,
            )
            recorder = Recorder()

            def job_of(wl: dict[str, Any]) -> tuple[str, str] | None:
                meta = wl["metadata"]
                name = (meta.get("labels") or {}).get(LABEL_JOB)
                return (
                    (meta.get("namespace", ""), name)
                    if meta.get("namespace") in by_namespace and name
                    else None
                )

            def job_changed(kind: str, job: dict[str, Any]) -> None:
                meta = job["metadata"]
                recorder.mark(
                    (meta.get("namespace", ""), meta["name"]),
                    started=_condition(job, "Queued", "Admitted") == "False",
                    finished=_condition(job, "Succeeded") == "True",
                    failed=_condition(job, "Failed") == "True",
                )

            patcher = ThreadPoolExecutor(2)
            patched: set[tuple[str, str]] = set()

            def pod_changed(kind: str, pod: dict[str, Any]) -> None:
                """Until builders.py copies kwok.trainguard.test/* annotations from the job to its
                pods, give each pod its job's run time here."""
                meta = pod["metadata"]
                key = (meta.get("namespace", ""), meta["name"])
                job = recorder.get((key[0], (meta.get("labels") or {}).get(LABEL_JOB, "")))
                if kind == "DELETED" or job is None or RUN_SECONDS in (meta.get("annotations") or {}):
                    return
                if key in patched:
                    return
                patched.add(key)
                patch = {"metadata": {"annotations": {RUN_SECONDS: f"{job.cls.runtime_s:g}"}}}
                patcher.submit(self.core.patch_namespaced_pod, key[1], key[0], patch)

            watchers = [
                self.watch_workloads(recorder, job_of),
                Watcher(
                    self.custom.list_cluster_custom_object,
                    job_changed,
                    group=GROUP,
                    version=VERSION,
                    plural="trainingjobs",
                ),
                Watcher(self.core.list_pod_for_all_namespaces, pod_changed, label_selector=LABEL_JOB),
            ]

            def create(slot: Slot) -> None:
                cls = slot.cls
                body = by_namespace[slot.namespace].job(
                    slot.name,
                    metadata={"annotations": {RUN_SECONDS: f"{cls.runtime_s:g}"}},
                    replicas=cls.pods,
                    resources={"gpusPerReplica": cls.gpus // cls.pods},
                    priority=cls.priority,
                )
                self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, slot.namespace, "trainingjobs", body
                )

            result = self._run_arm(
                list(by_namespace), recorder, watchers, create, quota_gpus, node_gpus, pids
            )
            patcher.shutdown()
            result["pods_annotated_by_bench"] = len(patched)
            rss.stop()
            result["operator_peak_rss_mib"] = round(rss.hwm_kib / 1024, 1)
            result["operator_max_sampled_rss_mib"] = round(rss.max_rss_kib / 1024, 1)
            result["topology"] = self.topology
            if admission_rss:
                admission_rss.stop()
                result["admission_peak_rss_mib"] = round(admission_rss.hwm_kib / 1024, 1)
            # The webhooks fail closed without the operator: its namespaces go while it runs.
            self.delete_namespaces(list(by_namespace))
            self.cluster.kubectl("delete", "tenants", *[s.tenant for s in spaces], "--wait=true", check=False)
        finally:
            rss.stop()
            if admission_rss:
                admission_rss.stop()
            for process in reversed(processes):
                process.stop()
            # The operator's webhook configurations fail closed once it is gone: the next arm (the
            # next round's Kueue arm, deleting its ClusterQueues) must not meet them.
            remove_webhook_configurations(self.cluster)
        return result


def ratios(kueue: dict[str, Any], trainguard: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(b / a, 3) if a and b is not None else None

    out: dict[str, Any] = {"wall": ratio(kueue["wall_s"], trainguard["wall_s"])}
    for figure in (
        "mean_time_to_admission_s",
        "mean_time_to_start_s",
        "mean_time_to_admission_from_answer_s",
        "mean_time_to_admission_from_workload_s",
    ):
        out[figure.removeprefix("mean_").removesuffix("_s")] = {
            name: ratio(kueue["classes"][name][figure], trainguard["classes"][name][figure])
            for name in kueue["classes"]
        }
    return out


def median_ratios(every: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure of `ratios`, the median over the rounds (a round without it left out)."""

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 3) if known else None

    out: dict[str, Any] = {}
    for key, first in every[0].items():
        if isinstance(first, dict):
            out[key] = {name: median([r[key][name] for r in every]) for name in first}
        else:
            out[key] = median([r[key] for r in every])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=0.02, help="job counts x this (default 0.02)")
    parser.add_argument("--stretch", type=float, help="intervals and run times x this (default 1/scale)")
    parser.add_argument("--arms", default="kueue,trainguard", help="which arms, in order (default both)")
    parser.add_argument(
        "--classes",
        default=",".join(c.name for c in BASELINE),
        help="which job classes to create (default all: small,medium,large); leaving out large "
        "leaves out the cohort's preemptions",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the arms this many times, their order reversed every other round; the ratios "
        "reported are the medians over the rounds (default 1)",
    )
    parser.add_argument(
        "--topology",
        choices=["chart", "single"],
        default="chart",
        help="trainguard's processes: chart (the chart's default: an admission process beside one "
        "reconciler) or single (one process doing both, the local test mode)",
    )
    parser.add_argument(
        "--placement",
        choices=["shared", "split"],
        default="shared",
        help="shared (default): every process on every CPU; split: the control plane on half the "
        "CPUs, Kueue, trainguard, the simulated nodes and this process on the other half, as "
        "controllers on worker nodes (the same for both arms)",
    )
    args = parser.parse_args(argv)
    stretch = args.stretch or 1 / args.scale
    try:
        classes = tuple(c.scaled(args.scale, stretch) for c in select_classes(args.classes))
    except ValueError as exc:
        parser.error(f"--classes {exc}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := set(arms) - {"kueue", "trainguard"}:
        parser.error(f"unknown arms {sorted(unknown)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    run = uuid.uuid4().hex[:6]

    try:
        placement = Placement(args.placement)
    except ValueError as exc:
        parser.error(str(exc))

    cluster = LocalCluster().up()
    bench = Bench(cluster, classes, run, args.topology)
    bench.check_run_stage()
    nodes = bench.add_nodes()
    quota_gpus, node_gpus = COHORTS * TENANTS_PER_COHORT * NOMINAL, bench.node_gpus()
    rounds: list[dict[str, Any]] = []
    try:
        placement.apply(cluster)
        for number in range(args.rounds):
            # Every other round in reverse order: neither arm always runs on the fresher cluster.
            order = arms if number % 2 == 0 else arms[::-1]
            # Names of their own per round: the last round's Kueue objects may still be going.
            bench.run = run if args.rounds == 1 else f"{run}r{number + 1}"
            results: dict[str, Any] = {}
            for arm in order:
                busy = bench.wait_gpus_free()
                print(f"scheduling bench: round {number + 1}/{args.rounds}, arm {arm} ...", file=sys.stderr)
                if arm == "kueue":
                    results[arm] = bench.kueue_arm(quota_gpus, node_gpus)
                else:
                    results[arm] = bench.trainguard_arm(quota_gpus, node_gpus)
                results[arm]["pods_of_others_holding_gpus_at_start"] = len(busy)
            rounds.append({"order": order, "arms": results})
    finally:
        placement.restore(cluster)
        cluster.kubectl("delete", "nodes", *nodes, "--wait=false", check=False)

    report: dict[str, Any] = {
        "benchmark": "scheduling (Kueue scheduler-performance baseline shape)",
        "run": run,
        "topology": args.topology,
        "placement": placement.describe(),
        "scale": args.scale,
        "stretch": round(stretch, 4),
        "cpus": os.cpu_count(),
        "shape": {
            "cohorts": COHORTS,
            "tenants_per_cohort": TENANTS_PER_COHORT,
            "nominal_gpus": NOMINAL,
            "borrowing_limit_gpus": BORROWING,
            "classes": {
                c.name: {
                    "jobs_per_tenant": c.count,
                    "gpus": c.gpus,
                    "pods": c.pods,
                    "priority": c.priority,
                    "interval_s": round(c.interval_s, 3),
                    "runtime_s": round(c.runtime_s, 3),
                }
                for c in classes
            },
            "quota_gpus": quota_gpus,
            "node_gpus": node_gpus,
            "bench_nodes": f"{len(nodes)} kwok nodes x {NODE_GPUS} GPUs added by the benchmark",
        },
        "rounds": args.rounds,
        "targets": TARGETS,
    }
    both = "kueue" in arms and "trainguard" in arms
    if both:
        for one in rounds:
            one["ratios"] = ratios(one["arms"]["kueue"], one["arms"]["trainguard"])
        r = median_ratios([one["ratios"] for one in rounds])
        # The arms' own figures: those of the round whose wall-time ratio is the median one.
        middle = sorted(rounds, key=lambda one: one["ratios"]["wall"] or 0.0)[(len(rounds) - 1) // 2]
        report["arms"] = middle["arms"]
        report["ratios_trainguard_to_kueue"] = r
        admission = [v for v in r["time_to_admission"].values() if v is not None]
        peak = max(one["arms"]["trainguard"]["operator_peak_rss_mib"] for one in rounds)
        report["meets_targets"] = {
            "wall": r["wall"] is not None and r["wall"] <= TARGETS["max_wall_ratio"],
            "time_to_admission": bool(admission) and max(admission) <= TARGETS["max_time_to_admission_ratio"],
            "operator_memory": peak < TARGETS["operator_peak_rss_mib"],
        }
    else:
        report["arms"] = rounds[-1]["arms"]
    if args.rounds > 1:
        report["every_round"] = rounds
    write_report("scheduling.json", report)
    complete = all(
        a["finished"] == a["jobs"] and not a["failed"] for one in rounds for a in one["arms"].values()
    )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
