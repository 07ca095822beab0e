"""The operator's run-time memory that spares API calls: which children exist, which views
changed, and which state of a job is the newest."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from trainguard.api.constants import LABEL_REPLICA
from trainguard.api.models import IntegrityVerdict
from trainguard.context import (
    VERIFIED_FLUSH_SECONDS,
    EnsuredChildren,
    FreshestJobs,
    IntegrityInbox,
    JobEvents,
    LatestViews,
    Wakeups,
)
from trainguard.workload.lifecycle import PodView

SA = {"kind": "ServiceAccount", "metadata": {"name": "tj-a"}}
SERVICE = {"kind": "Service", "metadata": {"name": "tj-a"}}


def test_a_child_seen_is_not_asked_for_again_until_its_time_is_up() -> None:
    now = [100.0]
    ensured = EnsuredChildren(ttl=300.0, clock=lambda: now[0])
    assert not ensured.known("uid-1", SA)
    ensured.add("uid-1", SA)
    assert ensured.known("uid-1", SA)
    assert not ensured.known("uid-1", SERVICE), "same name, other kind"
    assert not ensured.known("uid-2", SA), "same child name, other job"
    now[0] += 300.0
    assert not ensured.known("uid-1", SA), "checked again once the time is up"
    ensured.add("uid-1", SA)
    ensured.add("uid-1", SERVICE)
    ensured.discard("uid-1", SA)
    assert not ensured.known("uid-1", SA), "rolled back: made anew"
    assert ensured.known("uid-1", SERVICE)
    ensured.forget("uid-1")
    assert not ensured.known("uid-1", SERVICE)


def pod(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "tj-a-0", "labels": {LABEL_REPLICA: "0"}},
        "status": {"phase": phase, **status},
    }


def test_only_a_change_the_planner_reads_wakes_a_job() -> None:
    views = LatestViews()
    assert views.changed("p1", PodView.from_manifest(pod("Pending")))
    same = pod("Pending", conditions=[{"type": "PodScheduled", "status": "True"}])
    assert not views.changed("p1", PodView.from_manifest(same)), "a condition alone changes no view"
    assert views.changed("p1", PodView.from_manifest(pod("Running")))
    views.forget("p1")
    assert views.changed("p1", PodView.from_manifest(pod("Running"))), "forgotten: new again"


def job(rv: str, uid: str = "u1", phase: str = "") -> dict[str, Any]:
    return {"metadata": {"name": "a", "uid": uid, "resourceVersion": rv}, "status": {"phase": phase}}


def test_a_pass_plans_from_its_own_write_until_the_watch_brings_it() -> None:
    jobs = FreshestJobs()
    key = ("ns", "a")
    assert jobs.pick(key, job("10")) == job("10"), "nothing written: the watch's body"
    jobs.wrote(key, job("12", phase="Running"))
    assert jobs.pick(key, job("10"))["status"]["phase"] == "Running", "the watch lags the write"
    assert jobs.pick(key, job("13", phase="Failed"))["status"]["phase"] == "Failed", "newer than the write"
    assert jobs.pick(key, job("10")) == job("10"), "once caught up, the write is dropped"


def test_a_recreated_job_never_gets_the_old_ones_write() -> None:
    jobs = FreshestJobs()
    jobs.wrote(("ns", "a"), job("50", uid="old"))
    assert jobs.pick(("ns", "a"), job("40", uid="new"))["metadata"]["uid"] == "new"


def test_versions_that_do_not_compare_as_numbers_ask_the_api_server() -> None:
    jobs = FreshestJobs()
    jobs.wrote(("ns", "a"), job("abc"))
    assert jobs.pick(("ns", "a"), job("10")) is None
    jobs.forget(("ns", "a"))
    assert jobs.pick(("ns", "a"), job("10")) == job("10")


def test_a_jobs_events_go_out_in_the_order_its_passes_made_them() -> None:
    posted: list[str] = []

    async def post(what: str, delay: float) -> None:
        await asyncio.sleep(delay)
        posted.append(what)

    async def scenario() -> None:
        events = JobEvents()
        events.post(("ns", "a"), post("first", 0.05))
        events.post(("ns", "a"), post("second", 0.0))
        events.post(("ns", "b"), post("other job", 0.0))
        await events.flush(("ns", "a"))
        await events.flush(("ns", "b"))

    asyncio.run(scenario())
    assert posted.index("first") < posted.index("second")
    assert set(posted) == {"first", "second", "other job"}


def test_verified_steps_are_written_soon_even_when_no_later_report_comes() -> None:
    """A verified step arriving within the flush interval of the last write is not dropped on
    the floor: the job's pass is timed for when the interval ends (a violation goes at once)."""

    async def scenario() -> list[float]:
        inbox, wakeups, key = IntegrityInbox(), Wakeups(), ("ns", "a")
        woken: list[float] = []
        event = wakeups.event(key)
        start = time.monotonic()
        assert inbox.put(key, [IntegrityVerdict(verified=True, step=0)]) == 0.0, "never flushed: now"
        inbox.take(key)  # the pass wrote it
        due = inbox.put(key, [IntegrityVerdict(verified=True, step=1)])
        assert 0.0 < due <= VERIFIED_FLUSH_SECONDS
        wakeups.wake_in(key, 0.05)  # as the endpoint does with `due`, shortened for the test
        wakeups.wake_in(key, 0.05)  # a second report while timed: still one wake
        await asyncio.wait_for(event.wait(), timeout=2)
        woken.append(time.monotonic() - start)
        assert inbox.put(key, [IntegrityVerdict(verified=False, step=2, kind="ReplicaDivergence")]) == 0.0
        wakeups.forget(key)
        return woken

    woken = asyncio.run(scenario())
    assert len(woken) == 1
    assert woken[0] >= 0.05
