"""The reconciler's leader election: a standby waits for the Lease before it starts kopf at all.

Gating the whole kopf run, rather than the handlers inside it, means a standby has no daemons, no
finalizer writes, no integrity endpoint and no watch streams: it cannot race the leader, and it
costs one GET per retry period. When it takes the Lease it starts kopf, which lists everything and
resumes every job from the cluster's state (handlers are level-triggered), within a few seconds.

A leader that cannot renew within the renew deadline exits at once (as client-go's callers do):
by then another candidate may take the Lease after the duration, and a process that stopped being
sure it leads must not write. Kubernetes restarts it, as a standby.

The decisions are pure (`trainguard.leadership`); this module is the loop and its I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import random
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from trainguard import metrics
from trainguard.api.constants import LABEL_LEADER
from trainguard.kube import client as kube
from trainguard.leadership import Observed, Timing, claimed, held_by_another, observe, released

log = logging.getLogger("trainguard.leader")

LOST_EXIT_CODE = 70  # EX_SOFTWARE: the process stopped itself; its restart is a standby


class Elector:
    def __init__(self, namespace: str, name: str, identity: str, timing: Timing, pod: str = "") -> None:
        self.namespace, self.name, self.identity, self.timing = namespace, name, identity, timing
        self.pod = pod  # this replica's pod in `namespace`, labelled while it leads ("" outside a pod)
        self._observed: Observed | None = None
        self._renewed_at = 0.0  # monotonic time of the last successful write as holder
        self._marked = False

    async def _try(self) -> bool:
        """One round: read the Lease; write it as ours unless another's is still valid."""
        try:
            lease = await kube.get_lease(self.namespace, self.name)
            now = time.monotonic()
            self._observed = observe(self._observed, lease, now)
            if held_by_another(self._observed, self.identity, now, self.timing):
                return False
            body = claimed(
                lease,
                name=self.name,
                namespace=self.namespace,
                identity=self.identity,
                timing=self.timing,
                wall=datetime.datetime.now(datetime.UTC),
            )
            written = await kube.write_lease(body)
        except kube.KubeError as exc:
            log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
            return False
        except Exception as exc:  # the API server unreachable: try again next round
            log.warning("Lease %s/%s: %s: %s", self.namespace, self.name, type(exc).__name__, exc)
            return False
        if written is None:
            return False
        self._observed = observe(None, written, time.monotonic())
        self._renewed_at = time.monotonic()
        return True

    async def _mark(self, leading: bool) -> bool:
        """Label (or unlabel) this replica's pod as the leader: the integrity Service selects it."""
        if not self.pod:
            return True
        try:
            await kube.label_pod(self.namespace, self.pod, {LABEL_LEADER: "true" if leading else None})
        except Exception as exc:
            log.warning("Cannot %s pod %s/%s: %s", "label" if leading else "unlabel", self.namespace,
                        self.pod, exc)  # fmt: skip
            return False
        return True

    async def acquire(self) -> None:
        """Wait until this candidate holds the Lease."""
        log.info("Standby: waiting for Lease %s/%s as %s", self.namespace, self.name, self.identity)
        # A restarted container keeps its pod, and maybe the label of a leadership it lost.
        while True:
            if await self._mark(leading=False):
                break
            await asyncio.sleep(self.timing.retry)
        while not await self._try():
            holder = self._observed.holder if self._observed else ""
            log.debug("Lease held by %s", holder or "nobody")
            # Jitter, as client-go's, so that candidates started together do not collide forever.
            await asyncio.sleep(self.timing.retry * random.uniform(1.0, 1.2))  # noqa: S311 (jitter, not a secret)
        metrics.LEADER.set(1)
        metrics.LEADER_TRANSITIONS.inc()
        log.info("Leading: took Lease %s/%s as %s", self.namespace, self.name, self.identity)
        self._marked = await self._mark(leading=True)  # else retried at each renewal

    async def hold(self) -> None:
        """Renew until the renew deadline passes without a successful renewal; then return (the
        caller must stop at once)."""
        while True:
            await asyncio.sleep(self.timing.retry)
            if await self._try():
                if self.pod and not self._marked:
                    self._marked = await self._mark(leading=True)
                continue
            if time.monotonic() - self._renewed_at > self.timing.renew_deadline:
                return

    async def release(self) -> None:
        """Give the Lease back on a clean stop, so a standby takes over on its next try."""
        with contextlib.suppress(Exception):
            lease = await kube.get_lease(self.namespace, self.name)
            given_back = released(lease, self.identity) if lease else None
            if given_back is not None:
                await kube.write_lease(given_back)
                log.info("Gave Lease %s/%s back", self.namespace, self.name)
        await self._mark(leading=False)
        metrics.LEADER.set(0)


@contextlib.asynccontextmanager
async def standby_liveness(url: str | None) -> AsyncIterator[None]:
    """While waiting, answer the liveness endpoint kopf will serve once leading (the probe must
    not restart a healthy standby); the port is free again before kopf binds it."""
    if not url:
        yield
        return
    parsed = urllib.parse.urlparse(url)

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(parsed.path or "/", alive)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    host = parsed.hostname or "0.0.0.0"  # noqa: S104 (the probe's own address, as kopf binds it)
    site = web.TCPSite(runner, host, parsed.port or 80, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


async def lead_while(elector: Elector, operator: Any, liveness: str | None) -> None:
    """Wait for the Lease, then run `operator` (kopf's coroutine, not started yet) for as long as
    the Lease is ours. A lost Lease ends the process at once; a clean stop gives it back."""
    metrics.LEADER.set(0)
    async with standby_liveness(liveness):
        await elector.acquire()
    running = asyncio.ensure_future(operator)
    holding = asyncio.ensure_future(elector.hold())
    try:
        done, _ = await asyncio.wait({running, holding}, return_when=asyncio.FIRST_COMPLETED)
        if holding in done:
            log.critical(
                "Lost Lease %s/%s (not renewed for %.0f s): stopping at once so that the new leader is "
                "the only writer",
                elector.namespace,
                elector.name,
                elector.timing.renew_deadline,
            )
            metrics.LEADER.set(0)
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(LOST_EXIT_CODE)
        running.result()
    finally:
        holding.cancel()
        if not running.done():
            running.cancel()
        await elector.release()
