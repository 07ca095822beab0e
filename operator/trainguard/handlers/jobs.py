"""Thin kopf handlers for TrainingJobs: parse once, ask the pure planner, apply its plan.

Each TrainingJob has one reconcile daemon (kopf starts it when the job appears and stops it
when the job goes), so passes of one job never overlap and nothing else writes its status. A
pass runs when the daemon starts, when what the planner reads of one of the job's pods or of its
Workload changes, when an integrity report arrives, and when the plan asks to look again. A
pass that fails, for any reason, is logged, counted in `trainguard_reconcile_errors_total{reason}`
and retried by kopf with back-off.

A pass writes status first, in one patch, then creates children and pods and deletes pods, so
an operator killed at any point converges on restart.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import kopf

from trainguard import metrics
from trainguard.api.conditions import format_time, parse_time
from trainguard.api.constants import (
    FINALIZER,
    GPU_CEILING_QUOTA,
    GROUP,
    KUEUE_GROUP,
    KUEUE_VERSION,
    LABEL_JOB,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LABEL_TENANT,
    LOCAL_QUEUE,
    MANAGED_BY,
    VERSION,
)
from trainguard.api.models import TrainingJob
from trainguard.context import (
    VERIFIED_FLUSH_SECONDS,
    EnsuredChildren,
    JobKey,
    OperatorContext,
    Tenants,
    context_of,
    find_tenant,
    job_pods_index,
    quota_index,
    tenant_workloads_index,
    tenants_index,
    workloads_index,
)
from trainguard.kube import client as kube
from trainguard.policy.pods import job_uid_of
from trainguard.quota.queueing import (
    QuotaUsage,
    WorkloadView,
    build_workload,
    orphaned_workloads,
    positions,
    workload_name,
)
from trainguard.quota.render import tenant_of_cluster_queue
from trainguard.settings import IO_THREADS
from trainguard.signing.verifier import VerificationFailed
from trainguard.workload.lifecycle import (
    SHARED_INPUT_CHANGED,
    ImageProblem,
    Plan,
    PodView,
    Queue,
    Transition,
    admission_problems,
    name_taken,
    plan,
)

log = logging.getLogger("trainguard.jobs")
# A pass also runs this often when nothing woke it: kopf stops watching a namespace as soon as it
# is being deleted, so a job there hears of neither its own deletion nor its pods'.
RESYNC_SECONDS = 30.0
GONE = -1.0  # a pass's answer when the job is gone or going: its daemon ends


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credentials: the pod's service account, else $KUBECONFIG as it is now. (kopf's
    default would load the kubernetes library's configuration again, replacing the one
    `kube.configure` set with whatever $KUBECONFIG was when the library was imported.)"""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


# Server-side filters of the watches (and their initial lists). kopf's handler filters (`labels=`,
# `field=`) are applied in this process, after the API server sent the event and kopf decoded it:
# without these, every event of every pod and Workload in a shared cluster would reach the
# operator, and its cost would grow with the cluster rather than with trainguard's jobs. Every
# handler of these resources filters on at least as much (tests/unit/test_watch_selectors.py).
# An object that stops matching (a label removed) arrives as DELETED.
JOB_POD_LABELS = (LABEL_JOB, LABEL_JOB_UID)  # every pod `builders.build_pod` makes wears both
WATCH_LABEL_SELECTORS: dict[tuple[str, str, str], str] = {
    ("", "v1", "pods"): ",".join(JOB_POD_LABELS),
    (KUEUE_GROUP, KUEUE_VERSION, "workloads"): f"{LABEL_MANAGED_BY}={MANAGED_BY}",
}
WATCH_FIELD_SELECTORS: dict[tuple[str, str, str], str] = {
    ("", "v1", "resourcequotas"): f"metadata.name={GPU_CEILING_QUOTA}",
    (KUEUE_GROUP, KUEUE_VERSION, "localqueues"): f"metadata.name={LOCAL_QUEUE}",
}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    context_of(memo)  # built once, in the root memo every object's memo copies
    # Every API call (and admission's registry reads) runs in a thread of the default executor:
    # Python's default of cores + 4 threads (6 on 2 cores) queues a burst's Workload creates behind
    # other jobs' Events and children. As many threads as the API client keeps connections.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=IO_THREADS))
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    settings.watching.server_timeout = 60
    settings.persistence.finalizer = FINALIZER  # kept while a job's daemon runs
    settings.persistence.diffbase_storage = NoChangeDiffs()
    filter_watches(settings)


def filter_watches(settings: kopf.OperatorSettings) -> None:
    for (group, version, plural), selector in WATCH_LABEL_SELECTORS.items():
        settings.watching.label_selectors[group, version, plural] = selector
    for (group, version, plural), selector in WATCH_FIELD_SELECTORS.items():
        settings.watching.field_selectors[group, version, plural] = selector


class NoChangeDiffs(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, for an operator with no change handlers: each job has a daemon, and the
    rest are event handlers and indexes, so kopf never compares an object's essence with its last
    handled one. Its default storage still deep-copies every event's body to build that essence,
    a tenth of the reconciler's CPU in the scheduling bench: here the essence is empty.
    (tests/unit/test_admission_role.py checks that no change handler is registered.)"""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


RELEASER = "release_task"  # the background release, kept in the memo to stop it at cleanup


@kopf.on.startup()
async def start_releasing(memo: kopf.Memo, **_: Any) -> None:
    """kopf does not serve a namespace that was already being deleted when it started, so the
    daemon finalizer of a job deleted there while no operator ran would never be removed, and
    the namespace would never go. Such a job has no daemon to stop (its children go with it by
    their owner references): release it. In the background, because removing a finalizer is an
    update that passes the webhooks, which this very process serves only once started."""
    memo[RELEASER] = asyncio.create_task(_release_until_done(context_of(memo)))


@kopf.on.cleanup()
async def stop_releasing(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get(RELEASER)
    if isinstance(task, asyncio.Task):
        task.cancel()


async def _release_until_done(context: OperatorContext, attempts: int = 30) -> None:
    """Each clean-up on its own: one that keeps failing does not hold the other back."""
    await asyncio.gather(
        _until_done(
            context, "releasing jobs of terminating namespaces", _release_jobs_in_terminating_namespaces
        ),
        _until_done(context, "sweeping orphaned Workloads", _sweep_orphaned_workloads),
    )


async def _until_done(
    context: OperatorContext, what: str, step: Callable[[], Awaitable[None]], attempts: int = 30
) -> None:
    for attempt in range(attempts):
        try:
            await step()
            return
        except kube.KubeError as exc:
            metrics.reconcile_failed("api")
            delay = context.settings.retry_delay(attempt)
            log.warning("%s failed (%s); again in %.0f s", what, exc, delay)
            await asyncio.sleep(delay)


async def _release_jobs_in_terminating_namespaces() -> None:
    """Jobs of namespaces being deleted while no operator ran: deleted (the namespace controller's
    own delete may have met the closed webhooks) and released; then the namespace controller is
    nudged, since it backs off for minutes after the refusals it met meanwhile."""
    phases: dict[str, str] = {}
    nudge: set[str] = set()
    for raw in await kube.list_jobs():
        namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
        if namespace not in phases:
            found = await kube.get_namespace(namespace)
            phases[namespace] = ((found or {}).get("status") or {}).get("phase", "")
        if phases[namespace] != "Terminating":
            continue
        if not raw["metadata"].get("deletionTimestamp"):
            await kube.delete_job(namespace, name)
            raw = await kube.get_job(namespace, name) or raw
        await _release(raw)
        nudge.add(namespace)
    now = format_time(datetime.datetime.now(datetime.UTC))
    for namespace in sorted(nudge):
        await kube.annotate_namespace(namespace, {f"{GROUP}/jobs-released": now})


async def _sweep_orphaned_workloads() -> None:
    """Delete trainguard's Workloads whose TrainingJob is gone (its finalizer removed by hand
    while no operator ran, say): nothing else would, and an admitted one holds quota. Workloads
    are listed before jobs, so a Workload listed belongs to a job that existed before the jobs
    were listed: a live job's Workload is never taken for an orphan."""
    workloads = await kube.list_workloads(f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_JOB_UID}")
    live = [job["metadata"]["uid"] for job in await kube.list_jobs()]
    for namespace, name in orphaned_workloads(workloads, live):
        await kube.delete_workload(namespace, name)
        log.info("deleted Workload %s/%s: its TrainingJob no longer exists", namespace, name)


async def _release(raw: dict[str, Any]) -> None:
    """Give the quota of a job being deleted back (its Workload has no owner reference, see
    `quota.queueing`) and remove its daemon finalizer (its other children go by owner references)."""
    meta = raw["metadata"]
    await kube.delete_workload(meta["namespace"], workload_name(TrainingJob.model_validate(raw)))
    finalizers = meta.get("finalizers") or []
    if FINALIZER in finalizers:
        kept = [f for f in finalizers if f != FINALIZER]
        await kube.set_job_finalizers(meta["namespace"], meta["name"], kept, meta["resourceVersion"])
        log.info("released %s/%s, which is being deleted", meta["namespace"], meta["name"])


# Indexes and event handlers that only read the event's body are coroutines: kopf runs a plain
# function in a thread of the executor, a hop per event that a burst of jobs pays thousands of times.
@kopf.index("", "v1", "pods", labels=dict.fromkeys(JOB_POD_LABELS, kopf.PRESENT))
async def job_pods(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], PodView] | None:
    """Every pod the operator made for a job, by (namespace, job uid): the planner's view of a
    job's pods. A pod wearing a job's labels without being the job's own is no replica of it."""
    uid = labels[LABEL_JOB_UID]
    if job_uid_of(body) != uid:
        return None
    return {(namespace or "", uid): PodView.from_manifest(dict(body))}


@kopf.index(GROUP, VERSION, "trainingjobs")
async def jobs_by_namespace(name: str, namespace: str | None, **_: Any) -> dict[str, str]:
    """namespace -> its TrainingJobs' names: the pod guard keeps other pods off their children."""
    return {namespace or "": name}


@kopf.index(
    KUEUE_GROUP,
    KUEUE_VERSION,
    "workloads",
    labels={LABEL_JOB_UID: kopf.PRESENT, LABEL_MANAGED_BY: MANAGED_BY},
)
async def job_workloads(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], WorkloadView]:
    """Each job's Kueue Workload, by (namespace, job uid). Only trainguard and Kueue may write
    Workloads in tenant namespaces (RBAC and the Kueue guard), so the labels can be trusted."""
    return {(namespace or "", labels[LABEL_JOB_UID]): WorkloadView.from_manifest(dict(body))}


@kopf.index(
    KUEUE_GROUP, KUEUE_VERSION, "workloads", labels={LABEL_TENANT: kopf.PRESENT, LABEL_MANAGED_BY: MANAGED_BY}
)
async def tenant_workloads(body: kopf.Body, labels: Mapping[str, str], **_: Any) -> dict[str, WorkloadView]:
    """tenant -> its jobs' Workloads: the order of its queue."""
    return {labels[LABEL_TENANT]: WorkloadView.from_manifest(dict(body))}


@kopf.index(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def tenant_quota(name: str, body: kopf.Body, **_: Any) -> dict[str, QuotaUsage] | None:
    """tenant -> its ClusterQueue's figures (quota, use, borrowing), as Kueue reports them."""
    tenant = tenant_of_cluster_queue(name)
    return {tenant: QuotaUsage.from_cluster_queue(dict(body))} if tenant else None


@kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def quota_changed(name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
    """Per-tenant quota figures for Prometheus, from Kueue's status of the tenant's queue."""
    tenant = tenant_of_cluster_queue(name)
    if not tenant:
        return
    if type == "DELETED":
        metrics.forget_tenant(tenant)
        return
    usage = QuotaUsage.from_cluster_queue(dict(body))
    metrics.quota_figures(
        tenant, usage.nominal, usage.borrowing_limit, usage.reserved, usage.borrowed, usage.pending
    )


@kopf.on.event(
    KUEUE_GROUP, KUEUE_VERSION, "workloads", labels={LABEL_JOB: kopf.PRESENT, LABEL_MANAGED_BY: MANAGED_BY}
)
@kopf.on.event("", "v1", "pods", labels=dict.fromkeys(JOB_POD_LABELS, kopf.PRESENT))
async def child_changed(
    body: kopf.Body,
    uid: str,
    type: str | None,
    labels: Mapping[str, str],
    namespace: str | None,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A pod or the Workload of a job changed: wake the job when what its planner reads of it
    changed (a condition the kubelet or Kueue adds alone wakes nobody)."""
    if not namespace:
        return
    context = context_of(memo)
    if type == "DELETED":
        context.views.forget(uid)
    else:
        view = PodView if body.get("kind") == "Pod" else WorkloadView
        if not context.views.changed(uid, view.from_manifest(dict(body))):
            return
    context.wakeups.wake((namespace, labels[LABEL_JOB]))


@kopf.daemon(GROUP, VERSION, "trainingjobs", id="reconcile", cancellation_timeout=10.0)
async def reconcile_job(
    namespace: str | None,
    name: str,
    uid: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    context = context_of(memo)
    delay: float | None = None
    job_pods, tenants = job_pods_index(kwargs), tenants_index(kwargs)
    queues = Queues(workloads_index(kwargs), tenant_workloads_index(kwargs), quota_index(kwargs))
    assert namespace, "a TrainingJob is namespaced"
    key = (namespace, name)
    wake = context.wakeups.event(key)
    try:
        while not stopped:
            wake.clear()
            pods = list(job_pods.get((namespace, uid), ()))
            try:
                with metrics.RECONCILE_SECONDS.time():
                    delay = await reconcile(context, key, body, pods, tenants, queues)
            except Exception as exc:
                retry(memo, exc, context)
            memo["failures"] = 0
            if delay is GONE:
                return
            if context.integrity.has_pending(key):
                delay = min(delay if delay is not None else VERIFIED_FLUSH_SECONDS, VERIFIED_FLUSH_SECONDS)
            await _sleep(wake, stopped, min(delay if delay is not None else RESYNC_SECONDS, RESYNC_SECONDS))
    finally:
        await context.events.flush(key)
        if stopped or delay is GONE:
            context.wakeups.forget(key)
            context.integrity.forget(key)
            context.children.forget(uid)
            context.jobs.forget(key)


def retry(memo: kopf.Memo, exc: Exception, context: OperatorContext) -> NoReturn:
    """Count a failed pass and hand it to kopf, which runs the daemon again after the delay."""
    failures = int(memo.get("failures", 0))
    memo["failures"] = failures + 1
    reason = "api" if isinstance(exc, kube.KubeError) else type(exc).__name__
    metrics.reconcile_failed(reason)
    delay = context.settings.retry_delay(failures)
    raise kopf.TemporaryError(
        f"reconcile pass failed ({reason}): {exc}; retrying in {delay:.0f} s", delay=delay
    )


async def _sleep(wake: asyncio.Event, stopped: kopf.DaemonStopped, delay: float | None) -> None:
    """Until woken, stopped, or `delay` seconds (None: until woken or stopped)."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Queues:
    """The job's place in Kueue, from the operator's indexes of Workloads and ClusterQueues."""

    def __init__(self, workloads: Any, by_tenant: Any, quota: Any) -> None:
        self.workloads, self.by_tenant, self.quota = workloads, by_tenant, quota

    def of(self, job: TrainingJob) -> Queue:
        found = next(iter(self.workloads.get((job.namespace, job.metadata.uid), ())), None)
        usage = next(iter(self.quota.get(job.spec.tenant, ())), None)
        if usage is not None and usage.cohort:
            usage = usage.with_peers(u for us in self.quota.values() for u in us)
        position = None
        if found is not None:
            position = positions(self.by_tenant.get(job.spec.tenant, ())).get(found.uid)
        return Queue(found, usage, position)


async def reconcile(
    context: OperatorContext,
    key: JobKey,
    body: kopf.Body,
    pods: list[PodView],
    tenants: Tenants,
    queues: Queues,
) -> float | None:
    """One pass: read, plan, apply. Returns when to look again (None: when something changes)."""
    namespace, name = key
    raw = context.jobs.pick(key, copy.deepcopy(dict(body)))
    if raw is None:
        raw = await kube.get_job(namespace, name)
    if raw is None:
        return GONE
    if raw["metadata"].get("deletionTimestamp"):
        await _release(raw)
        return GONE
    job = TrainingJob.model_validate(raw)
    tenant = await find_tenant(tenants, job.spec.tenant)
    image: Any = None
    queued = False  # this pass created the job's Workload already
    if tenant is not None and job.status.image is None:
        queue = queues.of(job)
        if not job.status.conditions and queue.workload is None and admission_problems(job, tenant) is None:
            # A new job queues at once, while its image is verified once more: Kueue decides in
            # parallel; the planner drops the Workload again should the image not verify.
            await kube.create_object(build_workload(job))
            queued = True
        try:
            image = await context.images.verify_pinned(job.spec.image, tenant, job.namespace)
        except VerificationFailed as failure:
            image = ImageProblem(failure.reason, str(failure))
    verdicts = context.integrity.take(key)
    try:
        decided = plan(
            job,
            tenant,
            pods,
            datetime.datetime.now(datetime.UTC),
            context.settings.workload(),
            image,
            verdicts=verdicts,
            new_key=os.urandom(32),
            queue=queues.of(job),
            heard=context.integrity.last_heard(key),
        )
        # First the Workload: Kueue decides while the rest is written and made (unless this pass
        # made it above: the index has not seen it yet).
        if decided.create_workload is not None and not queued:
            await kube.create_object(decided.create_workload)
        if decided.hold:
            # New, and Kueue has not looked at its Workload yet: nothing written, posted or made
            # until it has (the Workload's change wakes this job) or a moment has passed.
            context.integrity.give_back(key, verdicts)
            return decided.requeue_after
        if decided.reports_stopped:
            metrics.integrity_violation(job.spec.tenant, "ReportsStopped")
        if decided.inputs_refused:
            metrics.integrity_violation(job.spec.tenant, SHARED_INPUT_CHANGED)
        if decided.status.to_api() != raw.get("status"):
            await _write(context, raw, job, decided)
        else:
            _post_events(context, raw, job, decided)
    except BaseException:
        context.integrity.give_back(key, verdicts)
        raise
    await asyncio.gather(*(kube.delete_pod(namespace, pod) for pod in decided.delete_pods))
    if decided.release_workload is not None and decided.status.queue and decided.status.queue.workload:
        await kube.patch_workload_status(namespace, decided.status.queue.workload, decided.release_workload)
    taken = await _ensure_children(context.children, decided.children, job)
    if decided.create_pods and not taken:
        taken = await _create_gang(context.children, namespace, decided.create_pods, job)
    if taken:
        now = job.model_copy(update={"status": decided.status})
        await _write(context, raw, job, name_taken(now, taken, datetime.datetime.now(datetime.UTC)))
        return None
    if decided.delete_workload:
        await kube.delete_workload(namespace, decided.delete_workload)
    return decided.requeue_after


async def _ensure_children(
    ensured: EnsuredChildren, children: list[dict[str, Any]], job: TrainingJob
) -> list[str]:
    """Get-or-create each child not seen lately, all at once; returns those whose names others
    hold."""

    async def ensure(child: dict[str, Any]) -> str | None:
        if ensured.known(job.metadata.uid, child):
            return None
        if await kube.create(child) or await _owned(child, job):
            ensured.add(job.metadata.uid, child)
            return None
        return f"{child['kind']} {child['metadata']['name']}"

    return [taken for taken in await asyncio.gather(*map(ensure, children)) if taken]


async def _owned(child: dict[str, Any], job: TrainingJob) -> bool:
    """An existing child counts only when this job controls it (an owner reference is not enough
    for a namespaced object anyone could have made; the controller uid must be the job's)."""
    meta = child["metadata"]
    if meta["namespace"] != job.namespace:
        return True  # kept in the operator's own namespace (the job's key), where no tenant writes
    return await kube.controller_uid(child["kind"], meta["namespace"], meta["name"]) == job.metadata.uid


async def _write(context: OperatorContext, raw: dict[str, Any], job: TrainingJob, decided: Plan) -> None:
    """The pass's one status patch, then its events (counted by their transitions)."""
    written = await kube.patch_job_status(
        job.namespace, job.name, _merge_patch(raw.get("status") or {}, decided.status.to_api())
    )
    context.jobs.wrote((job.namespace, job.name), written)
    _post_events(context, raw, job, decided)


def _merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` as a JSON merge patch over `old`: a field `new` no longer has is sent as null, so it
    is removed (a waiting job's queue position, once Kueue admits it)."""
    patch: dict[str, Any] = dict(new)
    for key, value in old.items():
        if key not in new:
            patch[key] = None
        elif isinstance(value, dict) and isinstance(new[key], dict):
            patch[key] = _merge_patch(value, new[key])
    return patch


def _post_events(context: OperatorContext, raw: dict[str, Any], job: TrainingJob, decided: Plan) -> None:
    """Count the pass's transitions now; post its Events behind the job's earlier ones."""
    if decided.events:
        context.events.post((job.namespace, job.name), _post_all(raw, decided.events))
    for event in decided.events:
        metrics.job_transition(job.spec.tenant, event.transition, event.reason)
        # The audit line beside the Event: which job of whose, of which tenant, what and why
        # (JSON keys with --log-format json). Preemptions and integrity verdicts are among them.
        owner = job.spec.owner.user if job.spec.owner else ""
        log.log(
            logging.WARNING if event.type == "Warning" else logging.INFO,
            "job %s/%s of %s (tenant %s): %s: %s",
            job.namespace,
            job.name,
            owner or "?",
            job.spec.tenant,
            event.reason,
            event.message,
            extra={
                "event": event.reason,
                "transition": event.transition.value,
                "namespace": job.namespace,
                "objectName": job.name,
                "owner": owner,
                "tenant": job.spec.tenant,
                "detail": event.message,
            },
        )
        if event.transition is Transition.QUOTA_ADMITTED and not job.status.preemptions:
            created = job.metadata.creation_timestamp
            if created:
                waited = datetime.datetime.now(datetime.UTC) - parse_time(created)
                metrics.QUOTA_ADMISSION_WAIT.labels(tenant=job.spec.tenant).observe(waited.total_seconds())


async def _post_all(raw: dict[str, Any], events: list[Any]) -> None:
    for event in events:
        await kube.post_event(raw, event.type, event.reason, event.message, component=event.component)


async def _create_gang(
    ensured: EnsuredChildren, namespace: str, pods: list[dict[str, Any]], job: TrainingJob
) -> list[str]:
    """All pods of an attempt or none, created at once: on a failure, remove the ones created.
    Returns the pods whose names another object holds (then none of the gang is left).

    A pod this process created is not created again while the pods index has not shown it yet
    (Kubernetes controllers' "expectations"): a second create of an existing pod is charged to
    the namespace's ResourceQuota before the API server answers "already exists", and the quota
    controller gives the charge back only at its next full count, minutes later, so the
    tenant's ceiling would look full meanwhile."""

    async def create(pod: dict[str, Any]) -> bool | None:
        """True: created; None: ours already; False: another object holds the name."""
        if ensured.known(job.metadata.uid, pod):
            return None
        try:
            if await kube.create(pod):
                ensured.add(job.metadata.uid, pod)
                return True
        except kube.KubeError as exc:
            # A pod that exists already is refused by the tenant's ResourceQuota (admission
            # counts the request again) before the API server could answer "already exists".
            if exc.status != 403:
                raise
            if not await _owned(pod, job):
                raise
            return None
        return None if await _owned(pod, job) else False

    outcomes = await asyncio.gather(*map(create, pods), return_exceptions=True)
    failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
    taken = [f"Pod {pod['metadata']['name']}" for pod, o in zip(pods, outcomes, strict=True) if o is False]
    if failed is not None or taken:
        created = [pod for pod, o in zip(pods, outcomes, strict=True) if o is True]
        for pod in created:
            ensured.discard(job.metadata.uid, pod)
        await asyncio.gather(*(kube.delete_pod(namespace, pod["metadata"]["name"]) for pod in created))
    if failed is not None:
        raise failed
    return taken
