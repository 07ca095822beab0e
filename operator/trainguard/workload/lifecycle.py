"""The pure decision of one reconcile pass: observed job, pods and integrity verdicts in, every
desired action out (status, children, pods to create and delete, events, when to look again).

Level-triggered: the plan depends only on what is in the cluster now, so a restarted operator
computes the same plan and converges without duplicates. Status is a list of conditions, and
this module is its only writer: integrity verdicts are folded in here too.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.api.conditions import Condition, Status, find, format_time, is_true, parse_time, set_condition
from trainguard.api.conditions import ConditionType as C
from trainguard.api.constants import (
    LABEL_ATTEMPT,
    LABEL_REPLICA,
    TRAINER_CONTAINER,
    VERIFY_INPUTS_CONTAINER,
)
from trainguard.api.models import (
    IntegrityMode,
    IntegrityStatus,
    IntegrityVerdict,
    PinnedImage,
    QueueStatus,
    ReplicaCounts,
    Tenant,
    TrainingJob,
    TrainingJobStatus,
)
from trainguard.policy.trainingjob import validate_training_job
from trainguard.quota.queueing import (
    QueueState,
    QuotaUsage,
    WorkloadView,
    build_workload,
    explain,
    preemption_message,
    release_patch,
    workload_name,
)
from trainguard.quota.render import cluster_queue_name
from trainguard.workload.builders import (
    Manifest,
    WorkloadSettings,
    build_children,
    build_integrity_secret,
    build_pods,
)

# The violation kind (condition reason) of a job whose verified shared inputs are not as signed.
SHARED_INPUT_CHANGED = "SharedInputChanged"


@dataclass(frozen=True)
class PodView:
    """What the planner needs to know about one pod of a job."""

    name: str
    replica: int
    attempt: int
    phase: str
    exit_code: int | None = None
    deleting: bool = False
    # Why its verify-inputs init container refused the verified shared folders (its termination
    # message, naming each file that differs); None when it did not.
    inputs_refused: str | None = None

    @classmethod
    def from_manifest(cls, pod: dict[str, Any]) -> PodView:
        meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
        exit_code = None
        for cs in status.get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated and cs.get("name") == TRAINER_CONTAINER:
                exit_code = int(terminated.get("exitCode", 0))
        inputs_refused = None
        for cs in status.get("initContainerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated and cs.get("name") == VERIFY_INPUTS_CONTAINER and terminated.get("exitCode"):
                inputs_refused = str(terminated.get("message") or "").strip() or (
                    f"{VERIFY_INPUTS_CONTAINER} exited with code {terminated['exitCode']}"
                )
        return cls(
            name=meta["name"],
            replica=int(meta.get("labels", {}).get(LABEL_REPLICA, -1)),
            attempt=int(meta.get("labels", {}).get(LABEL_ATTEMPT, -1)),
            phase=status.get("phase", "Pending"),
            exit_code=exit_code,
            deleting=bool(meta.get("deletionTimestamp")),
            inputs_refused=inputs_refused,
        )

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class ImageProblem:
    """Why the job's image could not be verified (reason code, message)."""

    reason: str
    message: str


class Transition(enum.StrEnum):
    """What an event says happened to the job, for metrics (never parsed from event reasons)."""

    ADMITTED = "Admitted"
    NOT_ADMITTED = "NotAdmitted"
    RESTARTED = "Restarted"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INTEGRITY_VIOLATION = "IntegrityViolation"
    PREEMPTED = "Preempted"
    QUOTA_ADMITTED = "QuotaAdmitted"


@dataclass(frozen=True)
class Queue:
    """What the pass knows of the job's place in Kueue: its Workload (None: not made yet), its
    tenant's quota figures, and its position among the tenant's waiting jobs."""

    workload: WorkloadView | None = None
    usage: QuotaUsage | None = None
    position: int | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str
    transition: Transition
    component: str = "trainguard"


@dataclass
class Plan:
    status: TrainingJobStatus
    children: list[Manifest] = field(default_factory=list)  # get-or-create, in order, before pods
    create_pods: list[Manifest] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    requeue_after: float | None = None
    events: list[Event] = field(default_factory=list)
    create_workload: Manifest | None = None
    delete_workload: str | None = None  # name of the job's Workload, to give its quota back
    release_workload: Manifest | None = None  # status patch: an evicted Workload's quota back
    reports_stopped: bool = False  # this pass found a replica whose sidecar fell silent
    inputs_refused: bool = False  # this pass failed the job for a changed shared input
    held_workload: str | None = None  # the job's Workload, given back in the pass that ends the job
    # A new job waits for Kueue's first look at its Workload before anything else is written or
    # made (FIRST_LOOK_SECONDS at most): then one status write says where it stands.
    hold: bool = False


class _Status:
    """Accumulates one pass's status changes so they are written in a single patch."""

    def __init__(self, job: TrainingJob, now: datetime.datetime) -> None:
        self.value = job.status.model_copy(update={"observed_generation": job.metadata.generation})
        self.generation = job.metadata.generation
        self.now = format_time(now)

    def condition(self, kind: C, status: Status, reason: str, message: str) -> None:
        conditions = set_condition(
            self.value.conditions,
            kind.value,
            status,
            reason,
            message,
            generation=self.generation,
            now=self.now,
        )
        self.value = self.value.model_copy(update={"conditions": conditions})

    def set(self, **changes: Any) -> None:
        self.value = self.value.model_copy(update=changes)

    def heard(self, heard: Mapping[int, datetime.datetime]) -> None:
        """Keep, per replica, the latest time its sidecar was heard from."""
        if not heard:
            return
        integrity = self.value.integrity or IntegrityStatus()
        last = dict(integrity.last_reports or {})
        for replica, when in heard.items():
            known = last.get(str(replica))
            if known is None or parse_time(known) < when:
                last[str(replica)] = format_time(when)
        if last != (integrity.last_reports or {}):
            self.set(integrity=integrity.model_copy(update={"last_reports": last}))

    def verdicts(self, verdicts: Sequence[IntegrityVerdict]) -> list[Event]:
        """Fold integrity verdicts into status; one event per violation."""
        events: list[Event] = []
        integrity = self.value.integrity or IntegrityStatus()
        for verdict in verdicts:
            if verdict.verified:
                integrity = integrity.model_copy(update={"last_verified_step": verdict.step})
                message = f"all replicas agree on the weights through step {verdict.step}"
                self.condition(C.INTEGRITY_VERIFIED, "True", "Verified", message)
                continue
            message = f"step {verdict.step}, replica {verdict.replica}: {verdict.kind}: {verdict.message}"
            integrity = integrity.model_copy(update={"last_violation": message[:1024]})
            self.condition(C.INTEGRITY_VIOLATION, "True", verdict.kind, message)
            self.condition(C.INTEGRITY_VERIFIED, "False", verdict.kind, message)
            events.append(
                Event(
                    "Warning",
                    "IntegrityViolation",
                    message,
                    Transition.INTEGRITY_VIOLATION,
                    component="trainguard-integrity",
                )
            )
        if verdicts:
            self.set(integrity=integrity)
        return events


def admission_problems(job: TrainingJob, tenant: Tenant | None) -> tuple[str, str] | None:
    """Why the job cannot run at all under its tenant, as (reason, message); None when it can.

    The admission webhook refuses such jobs up front; this is the operator's own check for
    jobs that got in another way (a webhook outage with failurePolicy changed, a tenant edit).
    """
    errors = validate_training_job(job, tenant)
    if not errors:
        return None
    return errors[0].reason, "; ".join(str(e) for e in errors)


def plan(
    job: TrainingJob,
    tenant: Tenant | None,
    pods: list[PodView],
    now: datetime.datetime,
    settings: WorkloadSettings,
    image: PinnedImage | ImageProblem | None = None,
    *,
    verdicts: Sequence[IntegrityVerdict] = (),
    new_key: bytes = b"",
    queue: Queue | None = None,
    heard: Mapping[int, datetime.datetime] | None = None,
) -> Plan:
    """`image` is the verification of the job's image: needed (once) before any pod exists.
    `verdicts` are integrity verdicts not yet in status; `new_key` is fresh randomness for the
    job's integrity key, used only if its Secret does not exist yet. `queue` is the job's place
    in Kueue: no pod is created before Kueue admits its Workload. `heard` is when each replica's
    sidecar last sent a signed report, as the operator received it (kept in status from here)."""
    if job.spec.integrity.mode != IntegrityMode.OFF and len(new_key) < 32:
        raise ValueError("a job with integrity checks needs a fresh key of at least 32 random bytes")
    st = _Status(job, now)
    st.set(total_gpus=job.spec.total_gpus)
    integrity_events = st.verdicts(verdicts)
    st.heard(heard or {})
    conds = st.value.conditions
    restarts, attempt = job.status.restarts, job.attempt
    current = [p for p in pods if p.attempt == attempt and not p.deleting]
    stale = [p.name for p in pods if p.attempt != attempt and not p.deleting]
    st.set(replicas=_counts(current))
    out = Plan(status=st.value, delete_pods=stale, events=integrity_events)
    queue = queue or Queue()
    workload = queue.workload
    out.held_workload = workload.name if workload else None

    if is_true(conds, C.SUCCEEDED) or is_true(conds, C.FAILED):
        # Terminal: stop anything still running, keep finished pods for their logs, and give
        # the quota back.
        out.delete_pods += [p.name for p in current if not p.finished]
        out.delete_workload = workload.name if workload else None
        out.status = st.value
        return out

    problem = admission_problems(job, tenant)
    if problem is None and job.status.image is None:
        if isinstance(image, ImageProblem):
            problem = (image.reason, f"spec.image: {image.message}")
        elif image is None:
            problem = ("ImageNotVerified", "spec.image: the image has not been verified yet")
        else:
            st.set(image=image)
    if problem is not None:
        reason, message = problem
        st.condition(C.ADMITTED, "False", reason, message)
        if not is_true(conds, C.ADMITTED):
            out.events.append(Event("Warning", reason, message, Transition.NOT_ADMITTED))
        out.delete_pods += [p.name for p in current]
        out.delete_workload = workload.name if workload else None
        out.status, out.requeue_after = st.value, 30.0
        return out
    assert tenant is not None
    admitted = f"admitted under tenant {tenant.metadata.name}"
    if not is_true(conds, C.ADMITTED):
        out.events.append(Event("Normal", "Admitted", admitted, Transition.ADMITTED))
    st.condition(C.ADMITTED, "True", "Admitted", admitted)
    out.children = build_children(job, settings)
    if job.spec.integrity.mode != IntegrityMode.OFF:
        out.children.append(build_integrity_secret(job, new_key, settings))

    if workload is None or workload.state is not QueueState.ADMITTED:
        _wait_for_kueue(job, st, out, pods, current, queue, now)
        return out
    flavor = workload.flavor or tenant.spec.quota.flavor
    st.set(
        queue=(st.value.queue or QueueStatus()).model_copy(
            update={
                "position": None,
                "reason": None,
                "flavor": flavor,
                "workload": workload.name,
                "cluster_queue": cluster_queue_name(tenant.metadata.name),
            }
        )
    )
    quota_admitted = (
        f"Kueue admitted the job's {job.spec.total_gpus} GPUs to tenant {tenant.metadata.name}'s "
        f"queue {cluster_queue_name(tenant.metadata.name)} (flavor {flavor})"
    )
    if not _is_false(conds, C.QUEUED, "Admitted"):
        out.events.append(Event("Normal", "QuotaAdmitted", quota_admitted, Transition.QUOTA_ADMITTED))
    st.condition(C.QUEUED, "False", "Admitted", quota_admitted)
    if is_true(conds, C.PREEMPTED):
        st.condition(C.PREEMPTED, "False", "Readmitted", "Kueue admitted the job again")
    node_labels = dict(settings.gpu_flavors.get(flavor, {}))

    violation = find(conds, C.INTEGRITY_VIOLATION.value)
    if (
        violation is not None
        and violation.status == "True"
        and job.spec.integrity.mode == IntegrityMode.ENFORCE
    ):
        _fail(st, out, current, "IntegrityViolation", f"stopped in Enforce mode: {violation.message}", now)
        return out

    # Wall-clock limit from the first start.
    if job.status.start_time:
        deadline = parse_time(job.status.start_time) + datetime.timedelta(seconds=job.spec.max_run_seconds)
        if now >= deadline:
            msg = f"the job ran longer than spec.maxRunSeconds={job.spec.max_run_seconds}"
            _fail(st, out, current, "DeadlineExceeded", msg, now)
            return out
        out.requeue_after = (deadline - now).total_seconds()

    failed = sorted((p for p in current if p.phase == "Failed"), key=lambda p: p.replica)
    present = {p.replica for p in current}
    missing = sorted(set(range(job.spec.replicas)) - present)
    if not missing:
        st.set(created_attempt=attempt)
    # A gang seen complete that lost a pod lost a replica; a gang never seen complete was cut
    # short by an operator restart mid-creation and is topped up below.
    vanished = missing if current and job.status.created_attempt == attempt else []
    refused = next((p for p in failed if p.inputs_refused), None)
    if refused is not None:
        # Restarting would read the same files: the job fails until the folder or its manifest is fixed.
        msg = (
            f"replica {refused.replica}: a verified shared folder differs from its signed manifest, so "
            f"the trainer never started; fix the folder (or sign its new manifest) and create the job "
            f"again. {refused.inputs_refused}"
        )[:4096]
        st.condition(C.INTEGRITY_VIOLATION, "True", SHARED_INPUT_CHANGED, msg)
        _fail(st, out, current, SHARED_INPUT_CHANGED, msg, now)
        out.inputs_refused = True
        return out
    if failed or vanished:
        what = (
            f"replica {failed[0].replica} failed with exit code {failed[0].exit_code}"
            if failed
            else f"replica {vanished[0]} disappeared"
        )
        policy = job.spec.failure_policy
        if restarts < policy.max_restarts:
            backoff = policy.backoff_for(restarts + 1)
            msg = (
                f"{what}; restarting all replicas ({restarts + 1} of {policy.max_restarts}) "
                f"after {backoff:.0f} s"
            )
            st.set(restarts=restarts + 1, last_restart_time=format_time(now), replicas=ReplicaCounts())
            st.condition(C.RUNNING, "False", "Restarting", msg)
            out.events.append(Event("Warning", "Restarting", msg, Transition.RESTARTED))
            out.delete_pods += [p.name for p in current]
            out.requeue_after = max(backoff, 0.5)
        else:
            msg = f"{what}; spec.failurePolicy.maxRestarts={policy.max_restarts} is exhausted"
            _fail(st, out, current, "BackoffLimitExceeded", msg, now)
        out.status = st.value
        return out

    if current and len(current) == job.spec.replicas and all(p.phase == "Succeeded" for p in current):
        msg = f"all {job.spec.replicas} replicas succeeded"
        st.condition(C.RUNNING, "False", "Completed", msg)
        st.condition(C.SUCCEEDED, "True", "AllReplicasSucceeded", msg)
        st.set(completion_time=format_time(now))
        out.events.append(Event("Normal", "Succeeded", msg, Transition.SUCCEEDED))
        out.delete_workload = out.held_workload  # the quota goes back in the pass that ends the job
        out.status = st.value
        return out

    if not current:
        if restarts and job.status.last_restart_time:
            ready_at = parse_time(job.status.last_restart_time) + datetime.timedelta(
                seconds=job.spec.failure_policy.backoff_for(restarts)
            )
            if now < ready_at:
                wait = (ready_at - now).total_seconds()
                st.condition(
                    C.RUNNING, "False", "BackingOff", f"restart {restarts} waits {wait:.0f} s of back-off"
                )
                out.status, out.requeue_after = st.value, wait
                return out
        out.create_pods = _placed(build_pods(job, tenant, attempt, settings), node_labels)
        if not job.status.start_time:
            st.set(start_time=format_time(now))
            out.requeue_after = float(job.spec.max_run_seconds)
        st.condition(
            C.RUNNING, "False", "Starting", f"creating {job.spec.replicas} replicas (attempt {attempt})"
        )
        out.status = st.value
        return out

    if missing:
        everything = _placed(build_pods(job, tenant, attempt, settings), node_labels)
        out.create_pods = [pod for i, pod in enumerate(everything) if i in missing]
        st.condition(
            C.RUNNING, "False", "Starting", f"creating {len(missing)} missing replicas (attempt {attempt})"
        )
        out.status = st.value
        return out

    running = sum(p.phase == "Running" for p in current)
    if running == job.spec.replicas:
        st.condition(C.RUNNING, "True", "AllReplicasRunning", f"all {running} replicas are running")
        if job.spec.integrity.mode != IntegrityMode.OFF and _expect_reports(
            job, st, out, current, conds, now
        ):
            return out  # stopped in Enforce mode
    else:
        st.condition(C.RUNNING, "False", "Starting", f"{running} of {job.spec.replicas} replicas running")
    out.status = st.value
    return out


# How long a new job's first status write and children wait for Kueue's first look at its
# Workload (Kueue decides within a scheduling cycle or two). Meanwhile the operator writes
# nothing that Kueue's decision would compete with for the API server, and a job admitted at
# once gets one status write instead of two. Longer, and the first status is written anyway.
FIRST_LOOK_SECONDS = 2.0


def _first_look_pending(job: TrainingJob, reason: str, now: datetime.datetime) -> float | None:
    """Seconds left to hold a new job's first write for Kueue's first look; None: write now."""
    if reason != "Submitted" or job.status.conditions or not job.metadata.creation_timestamp:
        return None
    age = (now - parse_time(job.metadata.creation_timestamp)).total_seconds()
    return FIRST_LOOK_SECONDS - age if 0 <= age < FIRST_LOOK_SECONDS else None


def _wait_for_kueue(
    job: TrainingJob,
    st: _Status,
    out: Plan,
    pods: list[PodView],
    current: list[PodView],
    queue: Queue,
    now: datetime.datetime,
) -> None:
    """The job has no admitted Workload: make one, or wait for Kueue, or give an evicted one's
    quota back once its pods are gone. No pod of the job runs meanwhile."""
    workload = queue.workload
    out.delete_pods += [p.name for p in current]
    queue_status = (st.value.queue or QueueStatus()).model_copy(
        update={
            "workload": workload.name if workload else workload_name(job),
            "cluster_queue": cluster_queue_name(job.spec.tenant),
            "flavor": None,
        }
    )
    if workload is None:
        out.create_workload = build_workload(job)
    if workload is not None and workload.state is QueueState.EVICTED:
        message = preemption_message(workload)
        if workload.evicted_at != queue_status.last_eviction:
            st.set(preemptions=job.status.preemptions + 1, replicas=ReplicaCounts())
            queue_status = queue_status.model_copy(update={"last_eviction": workload.evicted_at})
            reason = "Preempted" if workload.evicted_reason == "Preempted" else "Evicted"
            out.events.append(Event("Warning", reason, message, Transition.PREEMPTED))
            st.condition(C.PREEMPTED, "True", workload.evicted_reason or "Evicted", message)
        st.condition(C.RUNNING, "False", "Preempted", message)
        st.condition(C.QUEUED, "True", "Preempted", message)
        st.set(queue=queue_status.model_copy(update={"position": None, "reason": message[:1024]}))
        if not pods:
            out.release_workload = release_patch(workload, now)
        out.status, out.requeue_after = st.value, 2.0
        return
    reason, message = explain(workload, queue.usage, job.spec.total_gpus, now, queue.position)
    hold = _first_look_pending(job, reason, now)
    if hold is not None and not pods:
        out.hold, out.children, out.events, out.requeue_after = True, [], [], max(hold, 0.05)
        return
    st.condition(C.QUEUED, "True", reason, message)
    st.condition(C.RUNNING, "False", "Queued", "waiting for Kueue to admit the job")
    st.set(queue=queue_status.model_copy(update={"position": queue.position, "reason": message[:1024]}))
    out.status, out.requeue_after = st.value, 10.0


def _is_false(conds: list[Condition], kind: C, reason: str) -> bool:
    found = find(conds, kind.value)
    return found is not None and found.status == "False" and found.reason == reason


def _placed(pods: list[Manifest], node_labels: dict[str, str]) -> list[Manifest]:
    """Pods on the nodes of the flavor Kueue admitted the job to."""
    if node_labels:
        for pod in pods:
            pod["spec"]["nodeSelector"] = {**pod["spec"].get("nodeSelector", {}), **node_labels}
    return pods


def _expect_reports(
    job: TrainingJob,
    st: _Status,
    out: Plan,
    current: list[PodView],
    conds: list[Condition],
    now: datetime.datetime,
) -> bool:
    """Silence is an alarm: each running replica's sidecar must report within
    `spec.integrity.reportGapSeconds` of the replicas starting or of its last report, or the job
    gets IntegrityViolation (ReportsStopped); Enforce stops it. A sidecar that cannot reach the
    operator (a NetworkPolicy, a killed sidecar, a trainer that never calls the guard) cannot
    hide violations this way."""
    gap = datetime.timedelta(seconds=job.spec.integrity.report_gap_seconds)
    running = find(conds, C.RUNNING.value)
    since = parse_time(running.last_transition_time) if running and running.status == "True" else now
    last = (st.value.integrity or IntegrityStatus()).last_reports or {}
    deadlines = {
        r: max([since, *([parse_time(last[str(r)])] if str(r) in last else [])]) + gap
        for r in range(job.spec.replicas)
    }
    replica, deadline = min(deadlines.items(), key=lambda item: (item[1], item[0]))
    violation = find(st.value.conditions, C.INTEGRITY_VIOLATION.value)
    if violation is not None and violation.status == "True" and violation.reason == "ReportsStopped":
        return False  # said once
    if now < deadline:
        wait = (deadline - now).total_seconds()
        out.requeue_after = wait if out.requeue_after is None else min(out.requeue_after, wait)
        return False
    silent = (now - deadline + gap).total_seconds()
    heard_of = (
        f"its last report was {silent:.0f} s ago"
        if str(replica) in last
        else (f"none since the replicas started {silent:.0f} s ago")
    )
    message = (
        f"no signed integrity report from replica {replica}'s sidecar for more than "
        f"spec.integrity.reportGapSeconds={job.spec.integrity.report_gap_seconds} ({heard_of}): the sidecar "
        "stopped, cannot reach the operator, or the trainer does not call the integrity guard"
    )
    verdict = IntegrityVerdict(
        verified=False, step=None, replica=replica, kind="ReportsStopped", message=message
    )
    out.events += st.verdicts([verdict])
    out.reports_stopped = True
    if job.spec.integrity.mode == IntegrityMode.ENFORCE:
        _fail(st, out, current, "IntegrityViolation", f"stopped in Enforce mode: {message}", now)
        return True
    return False


def _fail(
    st: _Status, out: Plan, current: list[PodView], reason: str, message: str, now: datetime.datetime
) -> None:
    st.condition(C.RUNNING, "False", reason, message)
    st.condition(C.FAILED, "True", reason, message)
    st.set(completion_time=format_time(now))
    out.events.append(Event("Warning", reason, message, Transition.FAILED))
    out.delete_pods += [p.name for p in current if not p.finished]
    out.delete_workload = out.held_workload
    out.status = st.value
    out.requeue_after = None


def _counts(pods: list[PodView]) -> ReplicaCounts:
    return ReplicaCounts(
        active=sum(not p.finished for p in pods),
        ready=sum(p.phase == "Running" for p in pods),
        succeeded=sum(p.phase == "Succeeded" for p in pods),
        failed=sum(p.phase == "Failed" for p in pods),
    )


def name_taken(job: TrainingJob, objects: list[str], now: datetime.datetime) -> Plan:
    """The job's children's names are held by objects that are not the job's: it fails, and none
    of them is used (a foreign Secret as its key, a foreign claim as its output)."""
    st = _Status(job, now)
    out = Plan(status=st.value)
    if is_true(job.status.conditions, C.FAILED):
        return out
    message = (
        f"{', '.join(objects)} already exist{'s' if len(objects) == 1 else ''} and belong"
        f"{'s' if len(objects) == 1 else ''} to no part of this job; trainguard never adopts objects it "
        "did not make: delete them, or create the job under another name"
    )
    _fail(st, out, [], "ChildNameTaken", message, now)
    return out
