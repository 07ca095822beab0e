"""Thin kopf handlers for TrainingJobs: parse once, ask the pure planner, apply its plan.

Each TrainingJob has one reconcile daemon (kopf starts it when the job appears and stops it
when the job goes), so passes of one job never overlap and nothing else writes its status. A
pass runs when the daemon starts, when one of the job's pods changes, when an integrity report
arrives, and when the plan asks to look again. A pass that fails, for any reason, is logged,
counted in `trainguard_reconcile_errors_total{reason}` and retried by kopf with back-off.

A pass writes status first, in one patch, then creates children and pods and deletes pods, so
an operator killed at any point converges on restart.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any, NoReturn

import kopf

from trainguard import metrics
from trainguard.api.constants import FINALIZER, GROUP, LABEL_JOB, LABEL_JOB_UID, VERSION
from trainguard.api.models import TrainingJob
from trainguard.context import (
    VERIFIED_FLUSH_SECONDS,
    JobKey,
    OperatorContext,
    Tenants,
    context_of,
    find_tenant,
    job_pods_index,
    tenants_index,
)
from trainguard.kube import client as kube
from trainguard.signing.verifier import VerificationFailed
from trainguard.workload.lifecycle import ImageProblem, PodView, plan

log = logging.getLogger("trainguard.jobs")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    context_of(memo)  # built once, in the root memo every object's memo copies
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    settings.watching.server_timeout = 60
    settings.persistence.finalizer = FINALIZER  # kept while a job's daemon runs


@kopf.on.startup()
async def release_jobs_in_terminating_namespaces(**_: Any) -> None:
    """kopf does not serve a namespace that was already being deleted when it started, so the
    daemon finalizer of a job deleted there while no operator ran would never be removed, and
    the namespace would never go. Such a job has no daemon to stop (its children go with it by
    their owner references): release it."""
    for raw in await kube.list_jobs():
        meta = raw["metadata"]
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp") and FINALIZER in finalizers:
            namespace = await kube.get_namespace(meta["namespace"])
            if namespace is not None and (namespace.get("status") or {}).get("phase") == "Terminating":
                kept = [f for f in finalizers if f != FINALIZER]
                await kube.set_job_finalizers(meta["namespace"], meta["name"], kept, meta["resourceVersion"])
                log.info("released %s/%s, deleted while no operator ran", meta["namespace"], meta["name"])


@kopf.index("", "v1", "pods", labels={LABEL_JOB_UID: kopf.PRESENT})
def job_pods(
    body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], PodView]:
    """Every job pod, by (namespace, job uid): the planner's view of a job's pods."""
    return {(namespace or "", labels[LABEL_JOB_UID]): PodView.from_manifest(dict(body))}


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_changed(labels: Mapping[str, str], namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    if namespace:
        context_of(memo).wakeups.wake((namespace, labels[LABEL_JOB]))


@kopf.daemon(GROUP, VERSION, "trainingjobs", id="reconcile", cancellation_timeout=10.0)
async def reconcile_job(
    namespace: str | None,
    name: str,
    uid: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    context = context_of(memo)
    job_pods, tenants = job_pods_index(kwargs), tenants_index(kwargs)
    assert namespace, "a TrainingJob is namespaced"
    key = (namespace, name)
    wake = context.wakeups.event(key)
    try:
        while not stopped:
            wake.clear()
            pods = list(job_pods.get((namespace, uid), ()))
            try:
                with metrics.RECONCILE_SECONDS.time():
                    delay = await reconcile(context, key, pods, tenants)
            except Exception as exc:
                retry(memo, exc, context)
            memo["failures"] = 0
            if context.integrity.has_pending(key):
                delay = min(delay if delay is not None else VERIFIED_FLUSH_SECONDS, VERIFIED_FLUSH_SECONDS)
            await _sleep(wake, stopped, delay)
    finally:
        if stopped:
            context.wakeups.forget(key)
            context.integrity.forget(key)


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


async def reconcile(
    context: OperatorContext,
    key: JobKey,
    pods: list[PodView],
    tenants: Tenants,
) -> float | None:
    """One pass: read, plan, apply. Returns when to look again (None: when something changes)."""
    namespace, name = key
    raw = await kube.get_job(namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return None
    job = TrainingJob.model_validate(raw)
    tenant = await find_tenant(tenants, job.spec.tenant)
    image: Any = None
    if tenant is not None and job.status.image is None:
        try:
            image = await context.images.verify_pinned(job.spec.image, tenant)
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
        )
        new_status = decided.status.to_api()
        if new_status != raw.get("status"):
            await kube.patch_job_status(namespace, name, new_status)
    except BaseException:
        context.integrity.give_back(key, verdicts)
        raise
    for event in decided.events:
        await kube.post_event(raw, event.type, event.reason, event.message, component=event.component)
        metrics.job_transition(job.spec.tenant, event.transition, event.reason)
    for pod in decided.delete_pods:
        await kube.delete_pod(namespace, pod)
    for child in decided.children:
        await kube.create(child)  # an existing child (409) is kept as it is, its key too
    if decided.create_pods:
        await _create_gang(namespace, decided.create_pods)
    return decided.requeue_after


async def _create_gang(namespace: str, pods: list[dict[str, Any]]) -> None:
    """All pods of an attempt or none: on a failure, remove the ones already created."""
    created: list[str] = []
    try:
        for pod in pods:
            if await kube.create(pod):
                created.append(pod["metadata"]["name"])
    except Exception:
        for pod_name in created:
            await kube.delete_pod(namespace, pod_name)
        raise
