"""The operator's integrity endpoint: sidecars POST signed reports; verdicts land in job status.

A report counts only if it is signed with the job's integrity key (a Secret mounted into the
sidecar alone), so the trainer container cannot forge one. Verified steps move
`status.integrity.lastVerifiedStep` (written at most every few seconds); a violation sets the
IntegrityViolation condition with step, replica and kind, posts an Event, counts
`trainguard_integrity_violations_total`, and in Enforce mode the reconciler stops the job.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web

from trainguard import metrics
from trainguard.api.conditions import ConditionType as C
from trainguard.api.conditions import set_condition
from trainguard.api.models import IntegrityStatus, TrainingJob
from trainguard.handlers import jobs
from trainguard.integrity.reports import ForgedReport, JobIntegrity, Verdict, open_report
from trainguard.kube import client as kube
from trainguard.workload.builders import integrity_secret_name

log = logging.getLogger("trainguard.integrity")
PATCH_INTERVAL = 5.0  # seconds between status writes for verified steps alone


@dataclass
class IntegrityConfig:
    port: int = 0  # 0: no endpoint in this instance
    listen: str = "127.0.0.1"


CONFIG = IntegrityConfig()
_trackers: dict[tuple[str, str, str], JobIntegrity] = {}
_last_patch: dict[tuple[str, str], float] = {}
_runner: web.AppRunner | None = None


def configure(config: IntegrityConfig) -> None:
    global CONFIG
    CONFIG = config


@kopf.on.startup()
async def start_integrity_endpoint(**_: Any) -> None:
    global _runner
    if not CONFIG.port:
        return
    app = web.Application(client_max_size=64 * 1024)
    app.add_routes([web.post("/{namespace}/{name}", receive)])
    _runner = web.AppRunner(app)
    await _runner.setup()
    await web.TCPSite(_runner, CONFIG.listen, CONFIG.port).start()


@kopf.on.cleanup()
async def stop_integrity_endpoint(**_: Any) -> None:
    if _runner is not None:
        await _runner.cleanup()


async def receive(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        signed = await request.json()
    except ValueError:
        return web.Response(status=400, text="not JSON")
    key = await kube.get_secret_data(namespace, integrity_secret_name(name), "key")
    if key is None:
        return web.Response(status=404, text="no such job, or it has no integrity key")
    try:
        report = open_report(key, signed)
    except ForgedReport as exc:
        log.warning("refused a report for %s/%s: %s", namespace, name, exc)
        metrics.integrity_violation("unknown", "ForgedReport")
        return web.Response(status=403, text=str(exc))
    violated = await record(namespace, name, report)
    if violated:
        await jobs.reconcile(namespace, name)  # in Enforce mode the planner stops the job
    return web.Response(status=202)


async def record(namespace: str, name: str, report: dict[str, Any]) -> bool:
    """Apply one verified report to the job's status; True when it revealed a violation."""
    async with jobs.job_lock(namespace, name):
        raw = await kube.get_job(namespace, name)
        if raw is None:
            return False
        job = TrainingJob.model_validate(raw)
        tracker = _trackers.setdefault((namespace, name, job.metadata.uid), JobIntegrity(job.spec.replicas))
        verdicts = tracker.apply(report)
        if not verdicts:
            return False
        return await _write(job, raw, verdicts)


async def _write(job: TrainingJob, raw: dict[str, Any], verdicts: list[Verdict]) -> bool:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    conditions = job.status.conditions
    integrity = job.status.integrity or IntegrityStatus()
    violated = False
    key = (job.namespace, job.name)
    for verdict in verdicts:
        if verdict.verified:
            metrics.integrity_verified(job.spec.tenant)
            integrity = integrity.model_copy(update={"last_verified_step": verdict.step})
            conditions = set_condition(
                conditions,
                C.INTEGRITY_VERIFIED.value,
                "True",
                "Verified",
                f"all replicas agree on the weights through step {verdict.step}",
                generation=job.metadata.generation,
                now=now,
            )
            continue
        violated = True
        message = f"step {verdict.step}, replica {verdict.replica}: {verdict.kind}: {verdict.message}"
        metrics.integrity_violation(job.spec.tenant, verdict.kind)
        integrity = integrity.model_copy(update={"last_violation": message[:1024]})
        conditions = set_condition(
            conditions, C.INTEGRITY_VIOLATION.value, "True", verdict.kind, message,
            generation=job.metadata.generation, now=now,
        )  # fmt: skip
        conditions = set_condition(
            conditions, C.INTEGRITY_VERIFIED.value, "False", verdict.kind, message,
            generation=job.metadata.generation, now=now,
        )  # fmt: skip
        await kube.post_event(raw, "Warning", "IntegrityViolation", message, component="trainguard-integrity")
    recent = time.monotonic() - _last_patch.get(key, 0.0) < PATCH_INTERVAL
    already = any(c.type == C.INTEGRITY_VERIFIED.value and c.status == "True" for c in job.status.conditions)
    if violated or not recent or not already:
        status = {
            "conditions": [c.model_dump(by_alias=True, exclude_none=True) for c in conditions],
            "integrity": integrity.to_api(),
        }
        await kube.patch_job_status(job.namespace, job.name, status)
        _last_patch[key] = time.monotonic()
    return violated
