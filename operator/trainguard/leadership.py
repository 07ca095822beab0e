"""Who reconciles: one holder of a coordination.k8s.io Lease at a time (pure decisions).

The rules are client-go's leader election (`k8s.io/client-go/tools/leaderelection`), which Kueue,
JobSet and kube-controller-manager use:

- A candidate never compares the Lease's `renewTime` with its own clock (clocks differ between
  nodes). It remembers when *it* last saw the record change, on its own monotonic clock, and treats
  the Lease as free once it has seen no change for `leaseDurationSeconds`.
- The holder renews every `retry` seconds; if it has not renewed for `renew_deadline` seconds
  (shorter than the duration, so before anyone else may take over) it must stop at once.
- A holder that stops cleanly empties `holderIdentity`, so a standby takes over on its next try
  instead of waiting out the duration.
- Every write carries the resourceVersion read: of two candidates, one write wins.

The I/O (reading and writing the Lease, the loop) is `trainguard.kube.lease`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Timing:
    """Seconds. Defaults are client-go's (and Kueue's)."""

    duration: float = 15.0  # how long a silent holder's Lease stays its own
    renew_deadline: float = 10.0  # a holder that could not renew this long stops reconciling
    retry: float = 2.0  # how often the holder renews and a standby tries

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError(
                f"leader election needs 0 < retry ({self.retry}) < renew deadline "
                f"({self.renew_deadline}) < lease duration ({self.duration})"
            )


@dataclass(frozen=True)
class Observed:
    """The Lease's record as this candidate last saw it change, and when (monotonic seconds)."""

    holder: str
    renew_time: str
    transitions: int
    at: float
    duration: float = 0.0  # the holder's leaseDurationSeconds (0: not given)


def observe(previous: Observed | None, lease: Obj | None, now: float) -> Observed | None:
    """Update what this candidate knows of the record: the time moves only when the record changed
    (a new holder, a renewal), so a holder that stopped renewing ages out on *this* clock."""
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    renew = str(spec.get("renewTime") or "")
    transitions = int(spec.get("leaseTransitions") or 0)
    if previous and (previous.holder, previous.renew_time) == (holder, renew):
        return previous
    return Observed(holder, renew, transitions, now, float(spec.get("leaseDurationSeconds") or 0))


def held_by_another(observed: Observed | None, identity: str, now: float, timing: Timing) -> bool:
    """True while someone else's Lease is still valid: this candidate must wait (for the duration
    the holder wrote, as client-go does; the candidate's own when the Lease names none)."""
    if observed is None or not observed.holder or observed.holder == identity:
        return False
    return now < observed.at + (observed.duration or timing.duration)


def micro_time(at: datetime.datetime) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed(
    lease: Obj | None,
    *,
    name: str,
    namespace: str,
    identity: str,
    timing: Timing,
    wall: datetime.datetime,
) -> Obj:
    """The Lease to write for `identity` to hold it from `wall` (taking it over or renewing it).
    Keeps the resourceVersion read, so a concurrent write by another candidate fails."""
    spec = (lease or {}).get("spec") or {}
    previous_holder = str(spec.get("holderIdentity") or "")
    transitions = int(spec.get("leaseTransitions") or 0)
    now = micro_time(wall)
    taking_over = previous_holder != identity
    metadata: Obj = {"name": name, "namespace": namespace}
    if lease is not None:
        metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": max(1, round(timing.duration)),
            "acquireTime": now if taking_over or not spec.get("acquireTime") else spec["acquireTime"],
            "renewTime": now,
            "leaseTransitions": transitions + 1 if taking_over and previous_holder else transitions,
        },
    }


def released(lease: Obj, identity: str) -> Obj | None:
    """The Lease with its holder emptied, for a holder stopping cleanly; None when it is not ours
    (any more), since then there is nothing to give back."""
    spec = lease.get("spec") or {}
    if spec.get("holderIdentity") != identity:
        return None
    return {**lease, "spec": {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}}
