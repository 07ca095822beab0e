"""The pure reconcile planner: every transition of a TrainingJob, decided without a cluster."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainguard.api.conditions import find, is_true, set_condition
from trainguard.api.models import IntegrityVerdict, PinnedImage, Tenant, TrainingJob
from trainguard.quota.queueing import QueueState, QuotaUsage, WorkloadView
from trainguard.workload import lifecycle
from trainguard.workload.builders import WorkloadSettings
from trainguard.workload.lifecycle import ImageProblem, Plan, PodView, Transition

NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.UTC)
SETTINGS = WorkloadSettings()
IMAGE = PinnedImage(reference="r.io/img:v1", digest="sha256:" + "ab" * 32, signer="release")


KEY = b"k" * 32


def workload(state: str = "Admitted", **extra: Any) -> WorkloadView:
    return WorkloadView(
        name="tj-j-u1",
        namespace="team-a",
        uid="w1",
        tenant="team-a",
        job_uid="u1",
        state=QueueState(state),
        gpus=16,
        flavor="gpu" if state == "Admitted" else None,
        **{"created": "2026-11-26T11:59:00Z", **extra},
    )


ADMITTED = lifecycle.Queue(workload())


def plan(
    *args: Any,
    image: PinnedImage | ImageProblem | None = IMAGE,
    queue: lifecycle.Queue | None = ADMITTED,
    **kwargs: Any,
) -> Plan:
    """The planner, with the job's image verified and its Workload admitted by Kueue unless a
    test says otherwise."""
    return lifecycle.plan(*args, image=image, new_key=KEY, queue=queue, **kwargs)


def make_job(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    body: dict[str, Any] = {
        "metadata": {"name": "j", "namespace": "team-a", "uid": "u1", "generation": 2},
        "spec": {
            "tenant": "team-a",
            "image": "img",
            "replicas": 2,
            "resources": {"gpusPerReplica": 8},
            **spec,
        },
    }
    if status:
        body["status"] = status
    return TrainingJob.model_validate(body)


TENANT = Tenant.model_validate(
    {"metadata": {"name": "team-a"}, "spec": {"namespaces": ["team-a"], "quota": {"nominalGPUs": 16}}}
)


def pods(phases: list[str], attempt: int = 0, exit_code: int | None = None) -> list[PodView]:
    return [PodView(f"j-{i}-a{attempt}", i, attempt, phase, exit_code) for i, phase in enumerate(phases)]


def running_status(**extra: Any) -> dict[str, Any]:
    return {"startTime": "2026-11-26T11:00:00Z", "restarts": 0, **extra}


def test_a_new_job_is_admitted_and_its_whole_gang_created() -> None:
    out = plan(make_job(), TENANT, [], NOW, SETTINGS)
    assert is_true(out.status.conditions, "Admitted")
    kinds = [child["kind"] for child in out.children]
    assert kinds == ["ServiceAccount", "PersistentVolumeClaim", "Service", "NetworkPolicy", "Secret"]
    assert [e.transition for e in out.events] == [Transition.ADMITTED, Transition.QUOTA_ADMITTED]
    assert [p["metadata"]["name"] for p in out.create_pods] == ["j-0-a0", "j-1-a0"]
    assert out.status.start_time == "2026-11-26T12:00:00Z"
    assert out.status.observed_generation == 2
    assert out.status.total_gpus == 16


@pytest.mark.parametrize(
    ("tenant", "namespace", "reason", "fragment"),
    [
        (None, "team-a", "TenantNotFound", "Tenant 'team-a' does not exist"),
        (
            TENANT,
            "elsewhere",
            "NamespaceNotOwned",
            "namespace 'elsewhere' does not belong to tenant 'team-a'",
        ),
    ],
)
def test_jobs_that_cannot_run_say_why(
    tenant: Tenant | None, namespace: str, reason: str, fragment: str
) -> None:
    job = make_job()
    job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": namespace})})
    out = plan(job, tenant, [], NOW, SETTINGS)
    admitted = find(out.status.conditions, "Admitted")
    assert admitted is not None
    assert admitted.status == "False"
    assert admitted.reason == reason
    assert fragment in admitted.message
    assert out.create_pods == []
    assert out.children == []
    assert [e.reason for e in out.events] == [reason]


def test_more_gpus_than_the_tenant_can_ever_hold_is_refused_with_numbers() -> None:
    out = plan(make_job(replicas=3), TENANT, [], NOW, SETTINGS)
    admitted = find(out.status.conditions, "Admitted")
    assert admitted is not None
    assert admitted.reason == "ExceedsTenantQuota"
    assert "= 24 GPUs exceeds" in admitted.message
    assert "(16 nominal + 0 borrowable = 16)" in admitted.message


def test_unknown_shared_storage_is_refused() -> None:
    out = plan(
        make_job(sharedStorage=[{"name": "secret-data", "mountPath": "/d"}]), TENANT, [], NOW, SETTINGS
    )
    admitted = find(out.status.conditions, "Admitted")
    assert admitted is not None
    assert admitted.reason == "UnknownSharedStorage"


def test_all_replicas_running_sets_running() -> None:
    out = plan(make_job(running_status()), TENANT, pods(["Running", "Running"]), NOW, SETTINGS)
    assert is_true(out.status.conditions, "Running")
    assert out.create_pods == []
    assert out.delete_pods == []
    assert out.status.replicas.ready == 2


def test_a_failed_replica_restarts_the_gang_after_back_off() -> None:
    job = make_job(running_status(), failurePolicy={"maxRestarts": 2, "backoffSeconds": 10})
    out = plan(job, TENANT, pods(["Running", "Failed"], exit_code=3), NOW, SETTINGS)
    assert out.status.restarts == 1
    assert sorted(out.delete_pods) == ["j-0-a0", "j-1-a0"]
    assert out.create_pods == []
    running = find(out.status.conditions, "Running")
    assert running is not None
    assert running.reason == "Restarting"
    assert "replica 1 failed with exit code 3" in running.message
    assert out.requeue_after == 10


def test_back_off_is_honoured_before_the_next_attempt() -> None:
    status = running_status(restarts=2, lastRestartTime="2026-11-26T11:59:50Z")
    job = make_job(status, failurePolicy={"maxRestarts": 5, "backoffSeconds": 10})
    waiting = plan(job, TENANT, pods(["Failed"], attempt=1), NOW, SETTINGS)  # old attempt: stale
    assert waiting.create_pods == []
    assert waiting.delete_pods == ["j-0-a1"]
    assert waiting.requeue_after == pytest.approx(10)  # 2nd restart waits 20 s, 10 s have passed
    later = plan(job, TENANT, [], NOW + datetime.timedelta(seconds=11), SETTINGS)
    assert [p["metadata"]["name"] for p in later.create_pods] == ["j-0-a2", "j-1-a2"]


def test_exhausted_restarts_fail_the_job() -> None:
    job = make_job(running_status(restarts=1), failurePolicy={"maxRestarts": 1})
    out = plan(job, TENANT, pods(["Failed", "Running"], attempt=1, exit_code=1), NOW, SETTINGS)
    failed = find(out.status.conditions, "Failed")
    assert failed is not None
    assert failed.status == "True"
    assert failed.reason == "BackoffLimitExceeded"
    assert out.delete_pods == ["j-1-a1"]  # the running one; the failed one stays for its logs


def test_all_succeeded_is_success_and_stays_so() -> None:
    out = plan(make_job(running_status()), TENANT, pods(["Succeeded", "Succeeded"]), NOW, SETTINGS)
    assert is_true(out.status.conditions, "Succeeded")
    assert out.status.completion_time
    again = plan(make_job(out.status.to_api()), TENANT, pods(["Succeeded", "Succeeded"]), NOW, SETTINGS)
    assert again.create_pods == []
    assert again.delete_pods == []
    assert again.events == []


def test_run_time_limit_fails_the_job() -> None:
    job = make_job(running_status(startTime="2026-11-26T11:00:00Z"), maxRunSeconds=600)
    out = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS)
    failed = find(out.status.conditions, "Failed")
    assert failed is not None
    assert failed.reason == "DeadlineExceeded"
    assert sorted(out.delete_pods) == ["j-0-a0", "j-1-a0"]


def test_a_vanished_replica_counts_as_a_failure() -> None:
    out = plan(make_job(running_status(createdAttempt=0)), TENANT, pods(["Running"]), NOW, SETTINGS)
    assert out.status.restarts == 1
    running = find(out.status.conditions, "Running")
    assert running is not None
    assert "replica 1 disappeared" in running.message


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = set_condition([], "Running", "True", "A", "", generation=1, now="t1")
    same = set_condition(first, "Running", "True", "B", "m", generation=2, now="t2")
    flipped = set_condition(same, "Running", "False", "C", "", generation=2, now="t3")
    assert same[0].last_transition_time == "t1"
    assert same[0].reason == "B"
    assert flipped[0].last_transition_time == "t3"


def test_pod_view_reads_the_trainer_exit_code() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "labels": {"trainguard.dev/replica-index": "1", "trainguard.dev/attempt": "4"},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "integrity-sidecar", "state": {"terminated": {"exitCode": 0}}},
                {"name": "trainer", "state": {"terminated": {"exitCode": 137}}},
            ],
        },
    }
    assert PodView.from_manifest(pod) == PodView("p", 1, 4, "Failed", 137)


@given(
    phases=st.lists(st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]), min_size=0, max_size=4),
    restarts=st.integers(0, 4),
)
def test_never_more_than_one_gang_and_never_duplicate_pods(phases: list[str], restarts: int) -> None:
    job = make_job(running_status(restarts=restarts), replicas=4, resources={"gpusPerReplica": 4})
    observed = pods(phases, attempt=restarts)
    out = plan(job, TENANT, observed, NOW, SETTINGS)
    created = {p["metadata"]["name"] for p in out.create_pods}
    assert len(created) == len(out.create_pods)
    assert not created & {p.name for p in observed}, "an existing pod is never created twice"
    if observed and "Failed" not in phases:
        assert len(observed) + len(created) == 4, "a gang cut short is topped up to exactly its size"


def test_a_gang_cut_short_by_an_operator_restart_is_topped_up() -> None:
    out = plan(make_job(running_status()), TENANT, pods(["Running"]), NOW, SETTINGS)
    assert [p["metadata"]["name"] for p in out.create_pods] == ["j-1-a0"]
    assert out.status.restarts == 0


def test_no_pod_runs_before_its_image_is_verified() -> None:
    unverified = plan(make_job(), TENANT, [], NOW, SETTINGS, image=None)
    admitted = find(unverified.status.conditions, "Admitted")
    assert admitted is not None
    assert admitted.reason == "ImageNotVerified"
    assert unverified.create_pods == []
    refused = plan(
        make_job(), TENANT, [], NOW, SETTINGS, image=ImageProblem("Unsigned", "r.io/img has no signature")
    )
    admitted = find(refused.status.conditions, "Admitted")
    assert admitted is not None
    assert admitted.reason == "Unsigned"
    assert "spec.image: r.io/img has no signature" in admitted.message
    verified = plan(make_job(), TENANT, [], NOW, SETTINGS)
    assert verified.status.image == IMAGE
    assert len(verified.create_pods) == 2


def verdict(**fields: Any) -> IntegrityVerdict:
    return IntegrityVerdict.model_validate(fields)


def test_verified_steps_reach_status_as_a_condition_and_the_last_step() -> None:
    job = make_job(running_status(), integrity={"mode": "Enforce"})
    out = plan(
        job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS,
        verdicts=[verdict(verified=True, step=3), verdict(verified=True, step=4)],
    )  # fmt: skip
    verified = find(out.status.conditions, "IntegrityVerified")
    assert verified is not None
    assert (verified.status, verified.reason) == ("True", "Verified")
    assert "through step 4" in verified.message
    assert out.status.integrity is not None
    assert out.status.integrity.last_verified_step == 4
    assert "IntegrityViolation" not in [e.reason for e in out.events]


def test_a_violation_in_enforce_mode_stops_the_job_in_the_same_pass_and_counts_as_a_failure() -> None:
    job = make_job(running_status(), integrity={"mode": "Enforce"})
    bad = verdict(verified=False, step=7, replica=1, kind="ModifiedBetweenSteps", message="1.weight")
    out = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS, verdicts=[bad])
    violation = find(out.status.conditions, "IntegrityViolation")
    assert violation is not None
    assert violation.reason == "ModifiedBetweenSteps"
    assert violation.message == "step 7, replica 1: ModifiedBetweenSteps: 1.weight"
    failed = find(out.status.conditions, "Failed")
    assert failed is not None
    assert failed.reason == "IntegrityViolation"
    assert sorted(out.delete_pods) == ["j-0-a0", "j-1-a0"]
    assert [(e.reason, e.transition) for e in out.events] == [
        ("IntegrityViolation", Transition.INTEGRITY_VIOLATION),
        ("Admitted", Transition.ADMITTED),
        ("QuotaAdmitted", Transition.QUOTA_ADMITTED),
        ("IntegrityViolation", Transition.FAILED),
    ]


def test_a_violation_in_audit_mode_is_recorded_and_the_job_runs_on() -> None:
    job = make_job(running_status(), integrity={"mode": "Audit"})
    bad = verdict(verified=False, step=2, replica=0, kind="ReplicaDivergence", message="m")
    out = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS, verdicts=[bad])
    assert is_true(out.status.conditions, "IntegrityViolation")
    assert not is_true(out.status.conditions, "Failed")
    assert out.delete_pods == []


def test_a_job_with_integrity_needs_a_fresh_key() -> None:
    with pytest.raises(ValueError, match="fresh key"):
        lifecycle.plan(make_job(), TENANT, [], NOW, SETTINGS, IMAGE, new_key=b"")
    off = make_job(integrity={"mode": "Off"})
    out = lifecycle.plan(off, TENANT, [], NOW, SETTINGS, IMAGE)
    assert "Secret" not in [child["kind"] for child in out.children]


# --------------------------------------------------------------------------- Kueue


def test_a_job_without_a_workload_gets_one_and_no_pod() -> None:
    out = plan(make_job(), TENANT, [], NOW, SETTINGS, queue=None)
    assert out.create_pods == []
    assert out.create_workload is not None
    assert out.create_workload["spec"]["podSets"][0]["count"] == 2
    assert out.create_workload["spec"]["queueName"] == "trainguard"
    queued = find(out.status.conditions, "Queued")
    assert queued is not None
    assert queued.status == "True"
    assert out.status.queue is not None
    assert out.status.queue.workload == out.create_workload["metadata"]["name"]


def test_a_waiting_job_says_why_with_numbers_and_its_position() -> None:
    usage = QuotaUsage(tenant="team-a", nominal=16, borrowing_limit=0, cohort=None, reserved=16, borrowed=0)
    queue = lifecycle.Queue(workload("Pending", message="insufficient quota"), usage, position=2)
    out = plan(make_job(), TENANT, [], NOW, SETTINGS, queue=queue)
    queued = find(out.status.conditions, "Queued")
    assert queued is not None
    assert queued.status == "True"
    assert queued.reason == "WaitingForQuota"
    assert "uses 16 of its 16 nominal" in queued.message
    assert "needs 16 GPUs" in queued.message
    assert "position 2" in queued.message
    assert out.status.queue is not None
    assert out.status.queue.position == 2
    assert out.create_pods == []
    assert out.create_workload is None


def test_pods_of_a_job_kueue_has_not_admitted_are_deleted() -> None:
    queue = lifecycle.Queue(workload("Pending"))
    out = plan(make_job(running_status()), TENANT, pods(["Running", "Running"]), NOW, SETTINGS, queue=queue)
    assert sorted(out.delete_pods) == ["j-0-a0", "j-1-a0"]


UNSEEN = lifecycle.Queue(workload("Unseen", created="2026-11-26T11:59:59Z"))  # made a moment ago


def created_ago(seconds: float) -> TrainingJob:
    job = make_job()
    stamp = (NOW - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return job.model_copy(update={"metadata": job.metadata.model_copy(update={"creation_timestamp": stamp})})


@pytest.mark.parametrize("queue", [lifecycle.Queue(), UNSEEN])
def test_a_new_job_waits_for_kueues_first_look_before_writing_or_making_anything(
    queue: lifecycle.Queue,
) -> None:
    """Its Workload is made (or exists), nothing else: no status, no event, no child, and a pass
    again when Kueue has looked or the moment is over."""
    out = plan(created_ago(1), TENANT, [], NOW, SETTINGS, queue=queue)
    assert out.hold
    assert (out.children, out.create_pods, out.events) == ([], [], [])
    assert out.status.conditions == []
    assert (out.create_workload is None) == (queue.workload is not None)
    assert out.requeue_after == pytest.approx(lifecycle.FIRST_LOOK_SECONDS - 1)


@pytest.mark.parametrize(
    ("age", "queue", "reason"),
    [
        (lifecycle.FIRST_LOOK_SECONDS + 1, UNSEEN, "Submitted"),
        (0.5, lifecycle.Queue(workload("Pending", message="insufficient quota")), "WaitingForKueue"),
    ],
)
def test_the_first_write_comes_once_kueue_looked_or_the_moment_passed(
    age: float, queue: lifecycle.Queue, reason: str
) -> None:
    out = plan(created_ago(age), TENANT, [], NOW, SETTINGS, queue=queue)
    assert not out.hold
    queued = find(out.status.conditions, "Queued")
    assert queued is not None
    assert queued.reason == reason
    assert [e.transition for e in out.events] == [Transition.ADMITTED]
    assert out.children[0]["kind"] == "ServiceAccount"


def test_an_admitted_new_job_is_written_and_started_in_one_pass() -> None:
    out = plan(created_ago(1), TENANT, [], NOW, SETTINGS)
    assert not out.hold
    assert [e.transition for e in out.events] == [Transition.ADMITTED, Transition.QUOTA_ADMITTED]
    assert len(out.create_pods) == 2


def test_a_silent_kueue_is_named() -> None:
    queue = lifecycle.Queue(workload("Unseen"))
    out = plan(make_job(), TENANT, [], NOW, SETTINGS, queue=queue)
    queued = find(out.status.conditions, "Queued")
    assert queued is not None
    assert queued.reason == "KueueUnavailable"
    assert "60 s" in queued.message
    assert "Kueue is running" in queued.message


def test_preemption_stops_the_pods_counts_once_and_gives_the_quota_back_when_they_are_gone() -> None:
    message = (
        "Preempted to accommodate a workload (UID: x, JobUID: y) due to reclamation within the cohort; "
        "preemptor path: /research/tenant-team-b; preemptee path: /research/tenant-team-a"
    )
    evicted = workload(
        "Evicted",
        evicted_reason="Preempted",
        evicted_at="2026-11-26T11:59:30Z",
        preempted_by="team-b",
        message=message,
    )
    job = make_job(running_status())
    out = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS, queue=lifecycle.Queue(evicted))
    assert sorted(out.delete_pods) == ["j-0-a0", "j-1-a0"]
    assert out.status.preemptions == 1
    assert [e.transition for e in out.events][-1:] == [Transition.PREEMPTED]
    assert "team-b" in out.events[-1].message
    assert out.release_workload is None  # pods still there
    # Next pass: the pods are going (attempt 0 is now stale); counted once, not released yet.
    again = plan(
        make_job(out.status.to_api()),
        TENANT,
        pods(["Running", "Running"]),
        NOW,
        SETTINGS,
        queue=lifecycle.Queue(evicted),
    )
    assert again.status.preemptions == 1
    assert again.events == []
    assert again.release_workload is None
    # Pods gone: the quota is handed back, and Kueue queues the job again.
    gone = plan(make_job(again.status.to_api()), TENANT, [], NOW, SETTINGS, queue=lifecycle.Queue(evicted))
    assert gone.release_workload is not None
    assert gone.release_workload["status"]["admission"] is None
    # Admitted again: a new attempt's pods.
    back = plan(make_job(gone.status.to_api()), TENANT, [], NOW, SETTINGS)
    assert [p["metadata"]["name"] for p in back.create_pods] == ["j-0-a1", "j-1-a1"]
    preempted = find(back.status.conditions, "Preempted")
    assert preempted is not None
    assert preempted.status == "False"


def test_admitted_pods_go_to_the_flavors_nodes() -> None:
    settings = WorkloadSettings(gpu_flavors={"gpu": {"nvidia.com/gpu.product": "H100"}})
    out = plan(make_job(), TENANT, [], NOW, settings)
    assert all(p["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "H100" for p in out.create_pods)
    assert out.status.queue is not None
    assert out.status.queue.flavor == "gpu"


def test_a_finished_job_gives_its_quota_back() -> None:
    succeeded = {
        "type": "Succeeded",
        "status": "True",
        "reason": "x",
        "lastTransitionTime": "2026-11-26T11:30:00Z",
    }
    status = running_status(conditions=[succeeded])
    out = plan(make_job(status), TENANT, pods(["Succeeded", "Succeeded"]), NOW, SETTINGS)
    assert out.delete_workload == "tj-j-u1"
    # In the very pass that sees the job end, not one resync later: the next job waits for it.
    ends = plan(make_job(running_status()), TENANT, pods(["Succeeded", "Succeeded"]), NOW, SETTINGS)
    assert is_true(ends.status.conditions, "Succeeded")
    assert ends.delete_workload == "tj-j-u1"
    job = make_job(running_status(), integrity={"mode": "Enforce"})
    bad = verdict(verified=False, step=7, replica=1, kind="ModifiedBetweenSteps", message="m")
    stopped = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS, verdicts=[bad])
    assert is_true(stopped.status.conditions, "Failed")
    assert stopped.delete_workload == "tj-j-u1"


def running_since(minutes: float, **integrity: Any) -> dict[str, Any]:
    since = (NOW - datetime.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
    running = {"type": "Running", "status": "True", "reason": "AllReplicasRunning", "message": "m",
               "lastTransitionTime": since}  # fmt: skip
    return running_status(conditions=[running], **({"integrity": integrity} if integrity else {}))


def test_silence_from_a_replicas_sidecar_is_a_violation_and_enforce_stops_the_job() -> None:
    job = make_job(running_since(31), integrity={"mode": "Enforce"})  # default gap: 1,800 s
    heard = {0: NOW - datetime.timedelta(seconds=20)}  # replica 0 reports; replica 1 never did
    out = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS, heard=heard)
    violation = find(out.status.conditions, "IntegrityViolation")
    assert violation is not None
    assert violation.reason == "ReportsStopped"
    assert "no signed integrity report from replica 1's sidecar for more than " in violation.message
    assert "reportGapSeconds=1800 (none since the replicas started 1860 s ago)" in violation.message
    assert out.reports_stopped
    failed = find(out.status.conditions, "Failed")
    assert failed is not None
    assert failed.reason == "IntegrityViolation"
    assert sorted(out.delete_pods) == ["j-0-a0", "j-1-a0"]
    assert out.status.integrity is not None
    assert out.status.integrity.last_reports == {"0": "2026-11-26T11:59:40Z"}


def test_reports_within_the_gap_keep_the_job_running_and_the_next_look_is_at_the_deadline() -> None:
    last = {"0": "2026-11-26T11:58:00Z", "1": "2026-11-26T11:59:00Z"}
    job = make_job(
        running_since(60, lastReports=last), integrity={"mode": "Enforce", "reportGapSeconds": 300}
    )
    out = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS)
    assert not is_true(out.status.conditions, "IntegrityViolation")
    assert out.requeue_after == 180.0  # replica 0 was heard 120 s ago: 300 - 120
    # A report heard now moves replica 0's deadline; status keeps the latest time per replica.
    out = plan(job, TENANT, pods(["Running", "Running"]), NOW, SETTINGS, heard={0: NOW})
    assert out.status.integrity is not None
    assert out.status.integrity.last_reports == {"0": "2026-11-26T12:00:00Z", "1": "2026-11-26T11:59:00Z"}
    assert out.requeue_after == 240.0
    # Five minutes of silence later, in Audit: the condition, an Event, and the job runs on.
    audit = make_job(running_since(60, lastReports=last), integrity={"mode": "Audit", "reportGapSeconds": 60})
    out = plan(audit, TENANT, pods(["Running", "Running"]), NOW, SETTINGS)
    violation = find(out.status.conditions, "IntegrityViolation")
    assert violation is not None
    assert (violation.reason, "replica 0" in violation.message) == ("ReportsStopped", True)
    assert "its last report was 120 s ago" in violation.message
    assert not is_true(out.status.conditions, "Failed")
    assert [e.reason for e in out.events if e.reason == "IntegrityViolation"] == ["IntegrityViolation"]
    # Said once: the next pass adds no second Event.
    again = plan(audit.model_copy(update={"status": out.status}), TENANT, pods(["Running", "Running"]), NOW,
                 SETTINGS)  # fmt: skip
    assert [e.reason for e in again.events if e.reason == "IntegrityViolation"] == []


def test_a_job_without_integrity_or_not_yet_running_expects_no_reports() -> None:
    off = make_job(running_since(600), integrity={"mode": "Off"})
    assert not is_true(plan(off, TENANT, pods(["Running", "Running"]), NOW, SETTINGS).status.conditions,
                       "IntegrityViolation")  # fmt: skip
    starting = make_job(running_since(600), integrity={"mode": "Enforce"})
    out = plan(starting, TENANT, pods(["Running", "Pending"]), NOW, SETTINGS)
    assert not is_true(out.status.conditions, "IntegrityViolation")


REFUSAL = (
    "SharedInputChanged: shared input files differ from their signed manifest:\n* /code/pkg/model.py: changed"
)


def refused_pod(replica: int, message: str = "") -> dict[str, Any]:
    """A pod whose verify-inputs init container failed: the trainer never started."""
    terminated: dict[str, Any] = {"exitCode": 1}
    if message:
        terminated["message"] = message
    return {
        "metadata": {
            "name": f"j-{replica}-a0",
            "labels": {"trainguard.dev/replica-index": str(replica), "trainguard.dev/attempt": "0"},
        },
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [{"name": "verify-inputs", "state": {"terminated": terminated}}],
            "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "PodInitializing"}}}],
        },
    }


def test_pod_view_reads_why_the_shared_inputs_were_refused() -> None:
    message = REFUSAL
    assert PodView.from_manifest(refused_pod(1, message)).inputs_refused == message
    assert PodView.from_manifest(refused_pod(1)).inputs_refused == "verify-inputs exited with code 1"
    assert PodView.from_manifest(refused_pod(1)).exit_code is None


def test_a_changed_shared_input_fails_the_job_at_once_naming_the_file() -> None:
    job = make_job(running_status(), failurePolicy={"maxRestarts": 3})
    message = REFUSAL
    current = [PodView.from_manifest(refused_pod(0, message)), *pods(["Running", "Running"])[1:]]
    out = plan(job, TENANT, current, NOW, SETTINGS)
    assert out.status.restarts == 0  # the same files would be read again: no restart
    failed = find(out.status.conditions, "Failed")
    violation = find(out.status.conditions, "IntegrityViolation")
    assert failed is not None
    assert violation is not None
    assert (failed.status, failed.reason) == ("True", "SharedInputChanged")
    assert (violation.status, violation.reason) == ("True", "SharedInputChanged")
    assert "/code/pkg/model.py: changed" in failed.message
    assert "replica 0" in failed.message
    assert out.delete_pods == ["j-1-a0"]  # the refused pod stays for its termination message
    assert [e.reason for e in out.events][-1:] == ["SharedInputChanged"]
    assert out.inputs_refused  # counted once in trainguard_integrity_violations_total
    again = plan(
        make_job(out.status.to_api(), failurePolicy={"maxRestarts": 3}), TENANT, current[:1], NOW, SETTINGS
    )
    assert not again.inputs_refused
    assert again.events == []
    assert again.create_pods == []
