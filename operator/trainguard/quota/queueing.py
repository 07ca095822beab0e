"""How a TrainingJob enters Kueue, and what its wait means in plain words.

Each job is one Kueue Workload that trainguard makes and manages itself: one pod set of
`replicas` pods, each asking for the job's GPUs per replica. Kueue admits the Workload whole or
not at all; trainguard creates the job's pods only once it is admitted, deletes them when Kueue
evicts it (preemption), and then hands the quota back by clearing the reservation, as Kueue's
own job integrations do. The Workload has no owner reference (Kueue would then wait for a job
integration of that kind to release it): trainguard deletes it when the job ends or goes.

Pure: manifests and parsed views; the handlers read and write them.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.api.conditions import Condition, Status, format_time, parse_time
from trainguard.api.constants import (
    GPU_RESOURCE,
    KUEUE_API_VERSION,
    KUEUE_JOB_UID_LABEL,
    LABEL_JOB,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LABEL_TENANT,
    LOCAL_QUEUE,
    MANAGED_BY,
    TRAINER_CONTAINER,
    WORKLOAD_POD_SET,
)
from trainguard.api.models import TrainingJob
from trainguard.policy.pods import orphans
from trainguard.quota.render import cluster_queue_name, tenant_of_cluster_queue

Manifest = dict[str, Any]
# How long a new Workload may go unseen by Kueue before the job says Kueue may be down.
KUEUE_SILENCE_SECONDS = 20.0


def workload_name(job: TrainingJob) -> str:
    """`tj-<job name>-<uid prefix>`: a job made again under the same name gets a new Workload,
    never the old one's admission."""
    return f"tj-{job.name[:50]}-{job.metadata.uid[:5]}".replace("--", "-")


def build_workload(job: TrainingJob) -> Manifest:
    """The job's Workload: the whole gang in one pod set, GPUs only (the quota is in GPUs)."""
    requests = {GPU_RESOURCE: str(job.spec.resources.gpus_per_replica)}
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(job),
            "namespace": job.namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_JOB: job.name[:63],
                LABEL_JOB_UID: job.metadata.uid,
                LABEL_TENANT: job.spec.tenant,
                KUEUE_JOB_UID_LABEL: job.metadata.uid,
            },
        },
        "spec": {
            "queueName": LOCAL_QUEUE,
            "priority": job.spec.priority,
            "active": True,
            "podSets": [
                {
                    "name": WORKLOAD_POD_SET,
                    "count": job.spec.replicas,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": TRAINER_CONTAINER,
                                    "image": job.spec.image,
                                    "resources": {"requests": requests, "limits": requests},
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }


class QueueState(enum.StrEnum):
    UNSEEN = "Unseen"  # Kueue has not written anything on it yet
    PENDING = "Pending"  # waiting for quota
    RESERVED = "QuotaReserved"  # quota reserved, admission checks pending
    ADMITTED = "Admitted"
    EVICTED = "Evicted"  # quota still reserved, the job must stop and give it back
    FINISHED = "Finished"


@dataclass(frozen=True)
class WorkloadView:
    """What trainguard reads of one of its Workloads."""

    name: str
    namespace: str
    uid: str
    tenant: str
    job_uid: str
    state: QueueState
    created: str
    priority: int = 0
    gpus: int = 0
    message: str = ""  # Kueue's own words for the state (pending reason, eviction)
    evicted_reason: str = ""  # Preempted, InactiveWorkload, ...
    evicted_at: str | None = None  # the eviction's time: each eviction is counted once
    preempted_by: str | None = None  # the tenant whose claim took the quota
    flavor: str | None = None
    queued_since: str = ""  # the queue's order key: creation, or the last requeue

    @classmethod
    def from_manifest(cls, wl: Mapping[str, Any]) -> WorkloadView:
        meta, spec, status = wl.get("metadata", {}), wl.get("spec", {}), wl.get("status") or {}
        labels = meta.get("labels") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or []}

        def true(kind: str) -> bool:
            return (conds.get(kind) or {}).get("status") == "True"

        state, message, evicted_reason, preempted_by = QueueState.UNSEEN, "", "", None
        evicted_at = None
        if true("Finished"):
            state = QueueState.FINISHED
        elif true("Evicted") and true("QuotaReserved"):
            state, evicted_reason = QueueState.EVICTED, conds["Evicted"].get("reason", "")
            message = conds["Evicted"].get("message", "")
            preempted_by = _preemptor(message)
            evicted_at = conds["Evicted"].get("lastTransitionTime")
        elif true("Admitted"):
            state = QueueState.ADMITTED
        elif true("QuotaReserved"):
            state = QueueState.RESERVED
        elif conds:
            state = QueueState.PENDING
            message = (conds.get("QuotaReserved") or {}).get("message", "")
        flavor = None
        for assignment in (status.get("admission") or {}).get("podSetAssignments") or []:
            flavor = (assignment.get("flavors") or {}).get(GPU_RESOURCE, flavor)
        gpus = 0
        for pod_set in spec.get("podSets") or []:
            for container in ((pod_set.get("template") or {}).get("spec") or {}).get("containers") or []:
                requested = ((container.get("resources") or {}).get("requests") or {}).get(GPU_RESOURCE, 0)
                gpus += int(pod_set.get("count", 1)) * int(requested)
        # Kueue's queue order (workload.Ordering.GetQueueOrderTimestamp in v0.17): creation time,
        # except that a job preempted while its tenant was borrowing queues from the preemption.
        queued_since = meta.get("creationTimestamp") or ""
        preempted = conds.get("Preempted") or {}
        if preempted.get("status") == "True" and preempted.get("reason") == "InCohortReclaimWhileBorrowing":
            queued_since = preempted.get("lastTransitionTime") or queued_since
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            tenant=labels.get(LABEL_TENANT, ""),
            job_uid=labels.get(LABEL_JOB_UID, ""),
            state=state,
            created=meta.get("creationTimestamp") or "",
            priority=int(spec.get("priority") or 0),
            gpus=gpus,
            message=message,
            evicted_reason=evicted_reason,
            evicted_at=evicted_at,
            preempted_by=preempted_by,
            flavor=flavor,
            queued_since=queued_since,
        )


_PREEMPTOR_PATH = re.compile(r"preemptor path: ([^;]+)")


def _preemptor(message: str) -> str | None:
    """The tenant behind a preemption, from Kueue's message ("... preemptor path: /cohort/cq")."""
    found = _PREEMPTOR_PATH.search(message)
    if not found:
        return None
    queue = found.group(1).strip().rstrip("/").rsplit("/", 1)[-1]
    return tenant_of_cluster_queue(queue) or queue


def release_patch(view: WorkloadView, now: datetime.datetime) -> Manifest:
    """The status patch that gives an evicted Workload's quota back once the job's pods are gone
    (what Kueue's job integrations do after stopping a job): no reservation, not admitted, and
    requeued, so Kueue queues it again."""
    stamp = format_time(now)
    why = view.message or "the job was stopped"

    def condition(kind: str, status: Status, reason: str, message: str) -> dict[str, Any]:
        return Condition(
            type=kind, status=status, reason=reason, message=message, last_transition_time=stamp
        ).model_dump(by_alias=True, exclude_none=True)

    return {
        "status": {
            "admission": None,
            "conditions": [
                condition("QuotaReserved", "False", "Pending", why),
                condition("Admitted", "False", "NoReservation", "the job's pods were stopped"),
                condition("Requeued", "True", view.evicted_reason or "Evicted", why),
            ],
        }
    }


@dataclass(frozen=True)
class QuotaUsage:
    """A tenant's ClusterQueue and its cohort, in GPUs, as Kueue's status reports them."""

    tenant: str
    nominal: int
    borrowing_limit: int
    cohort: str | None
    reserved: int  # GPUs of admitted (or reserving) jobs, borrowed ones included
    borrowed: int
    pending: int = 0
    admitted: int = 0
    active: bool = True
    inactive_reason: str = ""
    lending_limit: int | None = None
    # Per other tenant of the cohort: (nominal, lending limit or None, reserved, borrowed).
    cohort_peers: Mapping[str, tuple[int, int | None, int, int]] = field(default_factory=dict)

    @classmethod
    def from_cluster_queue(cls, cq: Mapping[str, Any]) -> QuotaUsage:
        meta, spec, status = cq.get("metadata", {}), cq.get("spec", {}), cq.get("status") or {}
        nominal = borrowing = 0
        lending: int | None = None
        for group in spec.get("resourceGroups") or []:
            for flavor in group.get("flavors") or []:
                for res in flavor.get("resources") or []:
                    if res.get("name") == GPU_RESOURCE:
                        nominal += _int(res.get("nominalQuota"))
                        borrowing += _int(res.get("borrowingLimit"))
                        if res.get("lendingLimit") is not None:
                            lending = (lending or 0) + _int(res.get("lendingLimit"))
        reserved = borrowed = 0
        for flavor in status.get("flavorsReservation") or []:
            for res in flavor.get("resources") or []:
                if res.get("name") == GPU_RESOURCE:
                    reserved += _int(res.get("total"))
                    borrowed += _int(res.get("borrowed"))
        active = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Active"), {"status": "True"}
        )
        return cls(
            tenant=tenant_of_cluster_queue(meta.get("name", "")) or meta.get("name", ""),
            nominal=nominal,
            borrowing_limit=borrowing,
            cohort=spec.get("cohortName") or None,
            reserved=reserved,
            borrowed=borrowed,
            pending=int(status.get("pendingWorkloads") or 0),
            admitted=int(status.get("admittedWorkloads") or 0),
            active=active.get("status") == "True",
            inactive_reason=active.get("message", "") if active.get("status") != "True" else "",
            lending_limit=lending,
        )

    def with_peers(self, peers: Iterable[QuotaUsage]) -> QuotaUsage:
        same = {
            p.tenant: (p.nominal, p.lending_limit, p.reserved, p.borrowed)
            for p in peers
            if self.cohort and p.cohort == self.cohort and p.tenant != self.tenant
        }
        return dataclasses.replace(self, cohort_peers=same)

    @property
    def cohort_free(self) -> int:
        """GPUs of the cohort nobody reserves that this tenant could borrow."""
        free = 0
        for nominal, lending, reserved, borrowed in self.cohort_peers.values():
            unused = max(nominal - (reserved - borrowed), 0)
            free += unused if lending is None else min(unused, lending)
        return free

    @property
    def borrowers(self) -> dict[str, int]:
        return {t: b for t, (_, _, _, b) in sorted(self.cohort_peers.items()) if b > 0}


def _int(value: Any) -> int:
    if value is None:
        return 0
    text = str(value)
    if text.endswith("k"):
        return int(float(text[:-1]) * 1000)
    try:
        return int(float(text))
    except ValueError:
        return 0


def explain(
    view: WorkloadView | None,
    usage: QuotaUsage | None,
    need: int,
    now: datetime.datetime,
    position: int | None = None,
) -> tuple[str, str]:
    """Why a job waits, as the job's `Queued` condition (reason, message): plain words with numbers."""
    where = f" (position {position} in the queue)" if position else ""
    if view is None or view.state is QueueState.UNSEEN:
        created = parse_time(view.created) if view and view.created else now
        waited = (now - created).total_seconds()
        if waited >= KUEUE_SILENCE_SECONDS:
            return "KueueUnavailable", (
                f"Kueue has not looked at this job's Workload for {waited:.0f} s: no GPU job starts "
                "without Kueue's admission; ask the platform team whether Kueue is running"
            )
        return "Submitted", f"submitted to Kueue{where}, waiting for its first look"
    if usage is None:
        return (
            "WaitingForKueue",
            f"waiting for Kueue{where}: {view.message or 'the tenant has no ClusterQueue yet'}",
        )
    if not usage.active:
        return "QueueInactive", (
            f"tenant {usage.tenant}'s queue {cluster_queue_name(usage.tenant)} is not active in Kueue: "
            f"{usage.inactive_reason or 'see kubectl describe clusterqueue'}; the platform team must fix it"
        )
    own = usage.reserved - usage.borrowed
    ceiling = usage.nominal + (usage.borrowing_limit if usage.cohort else 0)
    head = (
        f"needs {need} GPUs; tenant {usage.tenant} uses {usage.reserved} of its {usage.nominal} nominal"
        + (f" + {usage.borrowing_limit} borrowable" if usage.cohort else "")
    )
    if usage.reserved + need > ceiling:
        short = usage.reserved + need - ceiling
        return "WaitingForQuota", (
            f"waiting for tenant {usage.tenant}'s GPU quota{where}: {head}; it starts when "
            f"{short} more GPU{'s' if short != 1 else ''} of the tenant's jobs are released"
        )
    if own + need <= usage.nominal or usage.reserved + need <= usage.nominal:
        if usage.cohort and usage.borrowers:
            lent = ", ".join(f"{t} borrows {g}" for t, g in usage.borrowers.items())
            return "WaitingForCohort", (
                f"waiting for the cohort {usage.cohort} to give back lent GPUs{where}: {head}; {lent}; "
                "Kueue reclaims them by preempting the borrowers' newest jobs"
            )
        return "WaitingForCapacity", (
            f"waiting for cluster capacity{where}: {head}; the quota is free but the GPUs are not "
            f"(Kueue: {view.message or 'no detail'})"
        )
    free, beyond = usage.cohort_free, usage.reserved + need - usage.nominal
    return "WaitingToBorrow", (
        f"waiting to borrow from the cohort {usage.cohort}{where}: {head}; the cohort has {free} unused "
        f"GPU{'s' if free != 1 else ''} to lend, this job needs {beyond} beyond the nominal quota"
    )


def preemption_message(view: WorkloadView) -> str:
    by = f" for tenant {view.preempted_by}'s claim" if view.preempted_by else ""
    kind = {
        "Preempted": "preempted",
        "InactiveWorkload": "deactivated",
        "ClusterQueueStopped": "stopped with its queue",
    }.get(view.evicted_reason, "evicted")
    return (
        f"Kueue {kind} the job{by}: its pods are stopped and it goes back to the queue "
        f"(Kueue: {view.message or view.evicted_reason})"
    )


def positions(pending: Iterable[WorkloadView]) -> dict[str, int]:
    """Place of each waiting Workload in its tenant's queue, by uid: Kueue's order for a
    BestEffortFIFO queue (higher priority first, then the earlier queued, then the uid), 1 = next."""
    order = sorted(
        (v for v in pending if v.state in (QueueState.PENDING, QueueState.UNSEEN)),
        key=lambda v: (-v.priority, v.queued_since or v.created, v.uid),
    )
    return {v.uid: i + 1 for i, v in enumerate(order)}


def orphaned_workloads(
    workloads: Iterable[Mapping[str, Any]], live_job_uids: Iterable[str]
) -> list[tuple[str, str]]:
    """(namespace, name) of trainguard's Workloads whose TrainingJob no longer exists. They have
    no owner reference (Kueue releases its finalizer only for ownerless Workloads), so the garbage
    collector would never remove them, and an admitted one would hold its tenant's quota forever."""
    return [(w["metadata"]["namespace"], w["metadata"]["name"]) for w in orphans(workloads, live_job_uids)]
