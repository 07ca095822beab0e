"""The operator's integrity endpoint: sidecars POST signed reports about their job's weights.

A report counts only if it is signed with the job's integrity key (a Secret mounted into the
sidecar alone), so the trainer container cannot forge one. The verdicts it leads to are counted
(`trainguard_integrity_violations_total`, `trainguard_integrity_verified_steps_total`) and handed
to the job's reconcile daemon, the only writer of job status: a violation at once, verified
steps at most every few seconds. In Enforce mode the planner then stops the job.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import kopf
from aiohttp import web

from trainguard import metrics
from trainguard.api.models import TrainingJob
from trainguard.context import OperatorContext, context_of
from trainguard.integrity.reports import ForgedReport, open_report
from trainguard.kube import client as kube
from trainguard.workload.builders import integrity_secret_name

log = logging.getLogger("trainguard.integrity")
RUNNER = "integrity_endpoint"  # where the running endpoint is kept in the memo
MAX_REPORT_BYTES = 64 * 1024


@kopf.on.startup()
async def start_integrity_endpoint(memo: kopf.Memo, **_: Any) -> None:
    context = context_of(memo)
    if not context.settings.integrity_port:
        return
    app = web.Application(client_max_size=MAX_REPORT_BYTES)
    app["context"] = context
    app.add_routes([web.post("/{namespace}/{name}", receive)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, context.settings.integrity_listen, context.settings.integrity_port).start()
    memo[RUNNER] = runner


@kopf.on.cleanup()
async def stop_integrity_endpoint(memo: kopf.Memo, **_: Any) -> None:
    runner = memo.get(RUNNER)
    if isinstance(runner, web.AppRunner):
        await runner.cleanup()


async def receive(request: web.Request) -> web.Response:
    context: OperatorContext = request.app["context"]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        signed = json.loads(await request.read())
    except ValueError:
        return web.Response(status=400, text="not JSON")
    key = await kube.get_secret_data(namespace, integrity_secret_name(name), "key")
    raw = await kube.get_job(namespace, name)
    if key is None or raw is None:
        return web.Response(status=404, text="no such job, or it has no integrity key")
    try:
        report = open_report(key, signed)
    except ForgedReport as exc:
        log.warning("refused a report for %s/%s: %s", namespace, name, exc)
        metrics.integrity_violation("unknown", "ForgedReport")
        return web.Response(status=403, text=str(exc))
    job = TrainingJob.model_validate(raw)
    job_key = (namespace, name)
    verdicts = context.integrity.tracker(job_key, job.metadata.uid, job.spec.replicas).apply(report)
    for verdict in verdicts:
        if verdict.verified:
            metrics.integrity_verified(job.spec.tenant)
        else:
            metrics.integrity_violation(job.spec.tenant, verdict.kind)
    if verdicts and context.integrity.put(job_key, verdicts):
        context.wakeups.wake(job_key)
    return web.Response(status=202)
