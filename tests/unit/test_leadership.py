"""The reconciler's leader election decisions (pure): who may take the Lease, and what is written."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from trainguard.leadership import Observed, Timing, claimed, held_by_another, observe, released
from trainguard.settings import Role, Settings

T = Timing(duration=15, renew_deadline=10, retry=2)
WALL = datetime.datetime(2026, 11, 27, 4, 30, 0, 123456, tzinfo=datetime.UTC)


def lease(
    holder: str, renew: str = "2026-11-27T04:00:00.000000Z", rv: str = "7", transitions: int = 0
) -> Any:
    return {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "renewTime": renew, "leaseTransitions": transitions,
                 "acquireTime": "2026-11-27T03:00:00.000000Z", "leaseDurationSeconds": 15},
    }  # fmt: skip


def test_another_holders_lease_ages_on_the_candidates_own_clock_not_on_renew_time() -> None:
    # renewTime lies hours in the past by the candidate's wall clock: that says nothing (skew).
    seen = observe(None, lease("a", renew="2020-01-01T00:00:00.000000Z"), now=100.0)
    assert held_by_another(seen, "b", 100.0, T)
    assert held_by_another(seen, "b", 114.9, T)
    assert not held_by_another(seen, "b", 115.1, T)


def test_a_renewal_seen_restarts_the_wait() -> None:
    seen = observe(None, lease("a", renew="r1"), now=100.0)
    same = observe(seen, lease("a", renew="r1"), now=110.0)
    assert same is seen  # no change: the age keeps counting from 100
    renewed = observe(seen, lease("a", renew="r2"), now=110.0)
    assert renewed == Observed("a", "r2", 0, 110.0, 15.0)
    assert held_by_another(renewed, "b", 120.0, T)


def test_the_holders_own_duration_counts() -> None:
    long = lease("a")
    long["spec"]["leaseDurationSeconds"] = 60
    seen = observe(None, long, now=100.0)
    assert held_by_another(seen, "b", 150.0, T)  # T says 15 s; the holder asked for 60
    assert not held_by_another(seen, "b", 160.5, T)


def test_a_free_missing_or_own_lease_is_never_someone_elses() -> None:
    assert not held_by_another(None, "b", 0.0, T)
    assert not held_by_another(observe(None, lease(""), now=0.0), "b", 0.0, T)
    assert not held_by_another(observe(None, lease("b"), now=0.0), "b", 0.0, T)


def test_taking_over_counts_a_transition_and_keeps_the_version_read() -> None:
    body = claimed(lease("a", transitions=3), name="l", namespace="ns", identity="b", timing=T, wall=WALL)
    assert body["metadata"] == {"name": "l", "namespace": "ns", "resourceVersion": "7"}
    assert body["spec"] == {
        "holderIdentity": "b",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-27T04:30:00.123456Z",
        "renewTime": "2026-11-27T04:30:00.123456Z",
        "leaseTransitions": 4,
    }


def test_renewing_keeps_acquire_time_and_transitions() -> None:
    body = claimed(lease("b", transitions=4), name="l", namespace="ns", identity="b", timing=T, wall=WALL)
    assert body["spec"]["acquireTime"] == "2026-11-27T03:00:00.000000Z"
    assert body["spec"]["renewTime"] == "2026-11-27T04:30:00.123456Z"
    assert body["spec"]["leaseTransitions"] == 4


def test_the_first_lease_is_a_create_with_no_version() -> None:
    body = claimed(None, name="l", namespace="ns", identity="a", timing=T, wall=WALL)
    assert "resourceVersion" not in body["metadata"]
    assert body["spec"]["leaseTransitions"] == 0


def test_release_empties_only_our_own_holder() -> None:
    given = released(lease("a"), "a")
    assert given is not None
    assert given["spec"]["holderIdentity"] == ""
    assert given["metadata"]["resourceVersion"] == "7"
    assert released(lease("b"), "a") is None


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"), [(10, 10, 2), (15, 10, 10), (15, 20, 2), (15, 10, 0)]
)
def test_inconsistent_timings_are_refused_with_the_rule(
    duration: float, deadline: float, retry: float
) -> None:
    with pytest.raises(ValueError, match=r"0 < retry .* < renew deadline .* < lease duration"):
        Timing(duration=duration, renew_deadline=deadline, retry=retry)


def test_settings_refuse_leader_election_for_admission_replicas_and_bad_timings() -> None:
    with pytest.raises(ValueError, match="leader_election is for the reconciler"):
        Settings(leader_election=True, role=Role.ADMISSION)
    with pytest.raises(ValueError, match="renew deadline"):
        Settings(leader_election=True, lease_duration_seconds=5, lease_renew_deadline_seconds=8)
    assert Settings(leader_election=True).lease_timing() == Timing()
