"""Every Prometheus series trainguard exports: one prefix, `_total` counters, low-cardinality labels.

Labels are tenant and reason only, never job or pod names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from trainguard.workload.lifecycle import Transition

RECONCILE_SECONDS = Histogram(
    "trainguard_reconcile_duration_seconds",
    "Time of one TrainingJob reconcile pass.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEADER = Gauge(
    "trainguard_leader",
    "1 while this process holds the reconciler Lease (or runs without leader election), else 0.",
)
LEADER_TRANSITIONS = Counter(
    "trainguard_leader_acquired_total", "Times this process took the reconciler Lease."
)
RECONCILE_ERRORS = Counter("trainguard_reconcile_errors_total", "Reconcile passes that failed.", ["reason"])
JOB_RESTARTS = Counter("trainguard_job_restarts_total", "Gang restarts after a failed replica.", ["tenant"])
JOBS_FINISHED = Counter(
    "trainguard_jobs_finished_total", "Jobs that reached a terminal condition.", ["tenant", "outcome"]
)
JOBS_NOT_ADMITTED = Counter(
    "trainguard_jobs_not_admitted_total", "Jobs the operator refused to run.", ["tenant", "reason"]
)


QUOTA_PREEMPTIONS = Counter(
    "trainguard_quota_preemptions_total", "Jobs Kueue evicted to give quota back (preemption).", ["tenant"]
)
QUOTA_ADMISSION_WAIT = Histogram(
    "trainguard_quota_admission_wait_seconds",
    "Time from a job's creation to Kueue's first admission of it.",
    ["tenant"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)
QUOTA_GPUS = Gauge(
    "trainguard_quota_gpus",
    "A tenant's GPUs in Kueue: nominal quota, borrowing limit, admitted (reserved) and borrowed.",
    ["tenant", "kind"],
)
QUOTA_JOBS_WAITING = Gauge("trainguard_quota_jobs_waiting", "A tenant's jobs waiting in Kueue.", ["tenant"])
KUEUE_DRIFT_REVERTED = Counter(
    "trainguard_kueue_drift_reverted_total",
    "Kueue objects or GPU ResourceQuotas changed by hand and put back from their Tenant.",
    ["kind"],
)


def quota_figures(
    tenant: str, nominal: int, borrowing: int, reserved: int, borrowed: int, waiting: int
) -> None:
    for kind, value in (
        ("nominal", nominal),
        ("borrowing_limit", borrowing),
        ("admitted", reserved),
        ("borrowed", borrowed),
    ):
        QUOTA_GPUS.labels(tenant=tenant, kind=kind).set(value)
    QUOTA_JOBS_WAITING.labels(tenant=tenant).set(waiting)
    # The histogram's series exist at zero before the tenant's first admission, so that rate() sees it.
    QUOTA_ADMISSION_WAIT.labels(tenant=tenant)


def forget_tenant(tenant: str) -> None:
    """Drop a deleted tenant's series."""
    for labels in [(tenant, kind) for kind in ("nominal", "borrowing_limit", "admitted", "borrowed")]:
        with contextlib.suppress(KeyError):
            QUOTA_GPUS.remove(*labels)
    with contextlib.suppress(KeyError):
        QUOTA_JOBS_WAITING.remove(tenant)
    with contextlib.suppress(KeyError):
        QUOTA_ADMISSION_WAIT.remove(tenant)
    for state in JOB_STATES:
        with contextlib.suppress(KeyError):
            JOBS.remove(tenant, state)


# The states `trainguard.api.conditions.job_state` names: every one is exported, zeros included, so
# that a state's series exists before its first job (alerts and dashboards need no `or vector(0)`).
JOB_STATES = (
    "Pending",
    "NotAdmitted",
    "Admitted",
    "Queued",
    "Preempted",
    "Running",
    "IntegrityViolation",
    "Succeeded",
    "Failed",
)
JOBS = Gauge(
    "trainguard_jobs", "A tenant's TrainingJobs by state (their first True condition).", ["tenant", "state"]
)


def jobs_by_state(tenant: str, counts: Mapping[str, int]) -> None:
    for state in JOB_STATES:
        JOBS.labels(tenant=tenant, state=state).set(counts.get(state, 0))


def job_transition(tenant: str, transition: Transition, reason: str) -> None:
    """Count what a reconcile pass decided happened to a job."""
    if transition is Transition.PREEMPTED:
        QUOTA_PREEMPTIONS.labels(tenant=tenant).inc()
    elif transition is Transition.RESTARTED:
        JOB_RESTARTS.labels(tenant=tenant).inc()
    elif transition in (Transition.SUCCEEDED, Transition.FAILED):
        JOBS_FINISHED.labels(tenant=tenant, outcome=transition.value).inc()
    elif transition is Transition.NOT_ADMITTED:
        JOBS_NOT_ADMITTED.labels(tenant=tenant, reason=reason).inc()


def reconcile_failed(reason: str) -> None:
    """`reason`: "api" for an API server error, else the exception's type name (a bug, retried)."""
    RECONCILE_ERRORS.labels(reason=reason).inc()


ADMISSION_DENIED = Counter(
    "trainguard_admission_denied_total", "Admission requests refused, one count per reason.", ["reason"]
)


def admission_denied(reason: str) -> None:
    ADMISSION_DENIED.labels(reason=reason).inc()


ADMISSION_REVIEWS = Counter(
    "trainguard_admission_reviews_total",
    "Admission reviews answered, by resource (plural), operation and outcome (allowed, denied, error).",
    ["resource", "operation", "outcome"],
)
ADMISSION_SECONDS = Histogram(
    "trainguard_admission_duration_seconds",
    "Time the operator took to answer one admission review (the API server waits for it).",
    ["resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def admission_review(resource: str, operation: str, outcome: str, seconds: float) -> None:
    ADMISSION_REVIEWS.labels(resource=resource, operation=operation, outcome=outcome).inc()
    ADMISSION_SECONDS.labels(resource=resource).observe(seconds)


IMAGE_VERIFICATIONS = Counter(
    "trainguard_image_verifications_total",
    "Image signature verifications, by outcome (Verified, or the refusal's reason).",
    ["outcome"],
)
IMAGE_VERIFY_SECONDS = Histogram(
    "trainguard_image_verification_duration_seconds",
    "Time of one image verification; cache=hit when a cached verdict answered without the registry.",
    ["cache"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


for _cache in ("hit", "miss"):  # both exist from the start: the hit ratio's rate() sees the first hit
    IMAGE_VERIFY_SECONDS.labels(cache=_cache)


def image_verification(outcome: str, cached: bool, seconds: float) -> None:
    IMAGE_VERIFICATIONS.labels(outcome=outcome).inc()
    IMAGE_VERIFY_SECONDS.labels(cache="hit" if cached else "miss").observe(seconds)


POD_CONNECTS = Counter(
    "trainguard_pod_connect_total",
    "exec, attach and port-forward requests into TrainingJob pods (who asked is in the Event).",
    ["action", "decision", "reason"],
)


def pod_connect(action: str, decision: str, reason: str) -> None:
    POD_CONNECTS.labels(action=action, decision=decision, reason=reason).inc()


INTEGRITY_VIOLATIONS = Counter(
    "trainguard_integrity_violations_total", "Integrity violations reported by sidecars.", ["tenant", "kind"]
)
INTEGRITY_VERIFIED_STEPS = Counter(
    "trainguard_integrity_verified_steps_total",
    "Training steps whose weights all replicas agreed on.",
    ["tenant"],
)


def integrity_violation(tenant: str, kind: str) -> None:
    INTEGRITY_VIOLATIONS.labels(tenant=tenant, kind=kind).inc()


def integrity_verified(tenant: str) -> None:
    INTEGRITY_VERIFIED_STEPS.labels(tenant=tenant).inc()


INTEGRITY_REPORTS = Counter(
    "trainguard_integrity_reports_total",
    "Signed reports the operator accepted from sidecars, by kind (StepEnd, Verified, Violation, ...).",
    ["tenant", "kind"],
)
INTEGRITY_REPORT_GAP = Histogram(
    "trainguard_integrity_report_gap_seconds",
    "Time between two reports of the same replica: how close a job comes to its reportGapSeconds.",
    ["tenant"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
)
INTEGRITY_FINGERPRINT_SECONDS = Histogram(
    "trainguard_integrity_fingerprint_duration_seconds",
    "Time a sidecar took to fingerprint a replica's weights at the end of a step (as it reports).",
    ["tenant"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def integrity_report(
    tenant: str, kind: str, gap_seconds: float | None, fingerprint_seconds: float | None
) -> None:
    INTEGRITY_REPORTS.labels(tenant=tenant, kind=kind).inc()
    if gap_seconds is not None:
        INTEGRITY_REPORT_GAP.labels(tenant=tenant).observe(gap_seconds)
    if fingerprint_seconds is not None:
        INTEGRITY_FINGERPRINT_SECONDS.labels(tenant=tenant).observe(fingerprint_seconds)


INTEGRITY_KEY_REQUESTS = Counter(
    "trainguard_integrity_key_requests_total",
    "Sidecars' requests for their job's integrity key, by outcome (delivered, or why it was refused).",
    ["outcome"],
)


def integrity_key_request(outcome: str) -> None:
    INTEGRITY_KEY_REQUESTS.labels(outcome=outcome).inc()
