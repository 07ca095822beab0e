"""Thin kopf handlers for TrainingJobs: parse once, ask the pure planner, apply its plan.

Every watch event of a job or of one of its pods triggers one reconcile pass of that job; passes
of one job never overlap. A pass writes status first, in one patch, then creates and deletes
children, so an operator killed at any point converges on restart.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from trainguard import metrics
from trainguard.api.conditions import ConditionType
from trainguard.api.models import GROUP, VERSION, IntegrityMode, PinnedImage, Tenant, TrainingJob
from trainguard.handlers import verification
from trainguard.kube import client as kube
from trainguard.signing.verifier import VerificationFailed
from trainguard.workload.builders import (
    LABEL_JOB,
    WorkloadSettings,
    build_children,
    build_integrity_secret,
    job_selector,
)
from trainguard.workload.lifecycle import ImageProblem, PodView, plan

log = logging.getLogger("trainguard.jobs")

SETTINGS = WorkloadSettings(
    sidecar_image=os.environ.get("TRAINGUARD_SIDECAR_IMAGE", WorkloadSettings.sidecar_image),
    report_url=os.environ.get("TRAINGUARD_INTEGRITY_URL", WorkloadSettings.report_url),
)
_locks: dict[tuple[str, str], asyncio.Lock] = {}
_requeues: dict[tuple[str, str], asyncio.TimerHandle] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our own Events are posted explicitly
    settings.watching.server_timeout = 60
    settings.persistence.finalizer = f"{GROUP}/finalizer"


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def job_changed(type: str, name: str, namespace: str | None, **_: Any) -> None:
    if type != "DELETED" and namespace:
        await reconcile(namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_changed(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    if namespace:
        await reconcile(namespace, labels[LABEL_JOB])


def _schedule(key: tuple[str, str], delay: float | None) -> None:
    old = _requeues.pop(key, None)
    if old is not None:
        old.cancel()
    if delay is None:
        return
    loop = asyncio.get_running_loop()
    _requeues[key] = loop.call_later(delay, lambda: asyncio.ensure_future(reconcile(*key)))


def job_lock(namespace: str, name: str) -> asyncio.Lock:
    """Serialises everything that writes one job's status (reconcile passes, integrity reports)."""
    return _locks.setdefault((namespace, name), asyncio.Lock())


async def reconcile(namespace: str, name: str) -> None:
    key = (namespace, name)
    async with job_lock(namespace, name):
        with metrics.RECONCILE_SECONDS.time():
            try:
                delay = await _reconcile_once(namespace, name)
            except kube.KubeError as exc:
                metrics.reconcile_failed("api")
                log.warning("reconcile of %s/%s failed, retrying: %s", namespace, name, exc)
                delay = 2.0
        _schedule(key, delay)


async def _reconcile_once(namespace: str, name: str) -> float | None:
    raw = await kube.get_job(namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        _locks.pop((namespace, name), None)
        return None
    job = TrainingJob.model_validate(raw)
    tenant_raw = await kube.get_tenant(job.spec.tenant)
    tenant = Tenant.model_validate(tenant_raw) if tenant_raw else None
    pods = [PodView.from_manifest(p) for p in await kube.list_pods(namespace, job_selector(job))]
    image = await _verify(job, tenant) if tenant is not None and job.status.image is None else None
    now = datetime.datetime.now(datetime.UTC)
    decided = plan(job, tenant, pods, now, SETTINGS, image)

    new_status = decided.status.to_api()
    if new_status != raw.get("status"):
        await kube.patch_job_status(namespace, name, new_status)
    for event in decided.events:
        await kube.post_event(raw, event.type, event.reason, event.message)
        _count(job, event.reason)
    for pod in decided.delete_pods:
        await kube.delete_pod(namespace, pod)
    if decided.ensure_children:
        for child in build_children(job, SETTINGS):
            await kube.create(child)
        if job.spec.integrity.mode != IntegrityMode.OFF:
            # A fresh random key; an existing Secret (409) keeps its key.
            await kube.create(build_integrity_secret(job, os.urandom(32)))
    if decided.create_pods:
        await _create_gang(namespace, decided.create_pods)
    return decided.requeue_after


async def _verify(job: TrainingJob, tenant: Tenant) -> PinnedImage | ImageProblem:
    """Verify the pinned image once more before the first pod: no way around admission."""
    image = job.spec.image
    if "@" not in image:
        return ImageProblem("NotPinned", f"{image} was not pinned to a digest at admission")
    try:
        verified = await verification.verify_image(image, tenant)
    except VerificationFailed as failure:
        return ImageProblem(failure.reason, str(failure))
    except ValueError as exc:
        return ImageProblem("InvalidImageReference", str(exc))
    return PinnedImage(reference=image.split("@", 1)[0], digest=verified.digest, signer=verified.signer)


async def _create_gang(namespace: str, pods: list[dict[str, Any]]) -> None:
    """All pods of an attempt or none: on a failure, remove the ones already created."""
    created: list[str] = []
    try:
        for pod in pods:
            await kube.create(pod)
            created.append(pod["metadata"]["name"])
    except kube.KubeError:
        for pod_name in created:
            await kube.delete_pod(namespace, pod_name)
        raise


def _count(job: TrainingJob, reason: str) -> None:
    tenant = job.spec.tenant
    if reason == "Restarting":
        metrics.job_restarted(tenant)
    elif reason == "Succeeded":
        metrics.job_finished(tenant, ConditionType.SUCCEEDED.value)
    elif reason in ("BackoffLimitExceeded", "DeadlineExceeded"):
        metrics.job_finished(tenant, ConditionType.FAILED.value)
    elif reason not in ("Admitted",):
        metrics.job_not_admitted(tenant, reason)
