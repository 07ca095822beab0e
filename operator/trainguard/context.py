"""What the operator's handlers share at run time, built once from the settings.

kopf copies its root memo into every object's memo shallowly, so the one `OperatorContext`
stored there (`memo.context`) is seen by every handler, daemon and webhook of the process.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainguard.api.models import IntegrityVerdict, Tenant
from trainguard.integrity.reports import JobIntegrity
from trainguard.kube import client as kube
from trainguard.quota.queueing import QuotaUsage, WorkloadView
from trainguard.settings import Settings
from trainguard.signing.tenants import TenantImages
from trainguard.workload.lifecycle import PodView

JobKey = tuple[str, str]  # (namespace, name)
Tenants = Mapping[str, Iterable[Tenant]]
TenantNamespaces = Mapping[str, Iterable[str]]
JobPods = Mapping[tuple[str, str], Iterable[PodView]]  # (namespace, job uid) -> pods
JobNames = Mapping[str, Iterable[str]]  # namespace -> names of its TrainingJobs

# Verified steps alone reach a job's status at most this often; a violation at once.
VERIFIED_FLUSH_SECONDS = 5.0


class Wakeups:
    """Wakes a job's reconcile daemon when something it depends on changed (a pod, a report)."""

    def __init__(self) -> None:
        self._events: dict[JobKey, asyncio.Event] = {}

    def event(self, key: JobKey) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: JobKey) -> None:
        self.event(key).set()

    def forget(self, key: JobKey) -> None:
        self._events.pop(key, None)


@dataclass
class IntegrityInbox:
    """Verdicts from signed reports, waiting for the job's reconcile pass to write them."""

    trackers: dict[tuple[str, str, str], JobIntegrity] = field(default_factory=dict)
    pending: dict[JobKey, list[IntegrityVerdict]] = field(default_factory=dict)
    flushed: dict[JobKey, float] = field(default_factory=dict)
    # When each replica's sidecar last sent a signed report (silence is an alarm: ReportsStopped).
    heard_at: dict[JobKey, dict[int, datetime.datetime]] = field(default_factory=dict)
    # Which pods got their job's key (the key endpoint hands each pod its key once).
    deliveries: KeyDeliveries = field(default_factory=lambda: KeyDeliveries())

    def tracker(self, key: JobKey, uid: str, replicas: int) -> JobIntegrity:
        return self.trackers.setdefault((*key, uid), JobIntegrity(replicas))

    def put(self, key: JobKey, verdicts: list[IntegrityVerdict]) -> bool:
        """Queue `verdicts`; True when the job's pass should run now to write them."""
        self.pending.setdefault(key, []).extend(verdicts)
        urgent = any(not v.verified for v in verdicts)
        return urgent or time.monotonic() - self.flushed.get(key, 0.0) >= VERIFIED_FLUSH_SECONDS

    def take(self, key: JobKey) -> list[IntegrityVerdict]:
        taken = self.pending.pop(key, [])
        if taken:
            self.flushed[key] = time.monotonic()
        return taken

    def give_back(self, key: JobKey, verdicts: list[IntegrityVerdict]) -> None:
        """A pass that failed before writing its verdicts returns them for the next pass."""
        if verdicts:
            self.pending[key] = verdicts + self.pending.get(key, [])

    def has_pending(self, key: JobKey) -> bool:
        return bool(self.pending.get(key))

    def heard(self, key: JobKey, replica: int, when: datetime.datetime) -> None:
        """A signed report from `replica`'s sidecar arrived at `when`."""
        self.heard_at.setdefault(key, {})[replica] = when

    def last_heard(self, key: JobKey) -> dict[int, datetime.datetime]:
        return dict(self.heard_at.get(key, {}))

    def forget(self, key: JobKey) -> None:
        self.pending.pop(key, None)
        self.flushed.pop(key, None)
        self.heard_at.pop(key, None)
        for tracked in [t for t in self.trackers if t[:2] == key]:
            del self.trackers[tracked]


@dataclass
class OperatorContext:
    settings: Settings
    images: TenantImages
    wakeups: Wakeups = field(default_factory=Wakeups)
    integrity: IntegrityInbox = field(default_factory=IntegrityInbox)

    @classmethod
    def create(cls, settings: Settings) -> OperatorContext:
        images = TenantImages.create(
            settings.plain_http_registries, settings.verify_cache_seconds, settings.verify_timeout_seconds
        )
        return cls(settings=settings, images=images)


def context_of(memo: MutableMapping[str, Any]) -> OperatorContext:
    """The process's context from kopf's memo: made on first use from `memo["settings"]` (set by
    `trainguard run`) or, when kopf runs the handlers itself (tests), from the environment."""
    context = memo.get("context")
    if context is None:
        settings = memo.get("settings")
        context = OperatorContext.create(settings if isinstance(settings, Settings) else Settings())
        memo["context"] = context
    assert isinstance(context, OperatorContext)
    return context


async def find_tenant(index: Tenants, name: str) -> Tenant | None:
    """A tenant from the operator's index of tenants; read from the API server when the index
    has not seen it yet (created a moment ago)."""
    known = next(iter(index.get(name, ())), None)
    if known is not None:
        return known
    raw = await kube.get_tenant(name)
    return Tenant.model_validate(raw) if raw else None


# kopf hands every handler its indexes as keyword arguments named after the index functions.
def workloads_index(kwargs: Mapping[str, Any]) -> Mapping[tuple[str, str], Iterable[WorkloadView]]:
    index: Mapping[tuple[str, str], Iterable[WorkloadView]] = kwargs["job_workloads"]
    return index


def tenant_workloads_index(kwargs: Mapping[str, Any]) -> Mapping[str, Iterable[WorkloadView]]:
    index: Mapping[str, Iterable[WorkloadView]] = kwargs["tenant_workloads"]
    return index


def quota_index(kwargs: Mapping[str, Any]) -> Mapping[str, Iterable[QuotaUsage]]:
    index: Mapping[str, Iterable[QuotaUsage]] = kwargs["tenant_quota"]
    return index


def tenants_index(kwargs: Mapping[str, Any]) -> Tenants:
    index: Tenants = kwargs["tenants_by_name"]
    return index


def tenant_namespaces_index(kwargs: Mapping[str, Any]) -> TenantNamespaces:
    index: TenantNamespaces = kwargs["tenant_namespaces"]
    return index


def job_pods_index(kwargs: Mapping[str, Any]) -> JobPods:
    index: JobPods = kwargs["job_pods"]
    return index


def jobs_index(kwargs: Mapping[str, Any]) -> JobNames:
    index: JobNames = kwargs["jobs_by_namespace"]
    return index


class KeyDelivery(BaseModel):
    """One hand-over of a job's key to one pod: which pod, when, and the id of the token shown."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pod: str
    time: str
    credential: str = ""  # the token's credential id ("JTI=..."), as the TokenReview names it


@dataclass
class KeyDeliveries:
    """job uid -> pod uid -> the delivery of the job's key to that pod: each pod gets it once.

    Checking and recording happen in one step with no await between them, so two requests for one
    pod cannot both pass. The handler also keeps the record with the key (it survives a restart)."""

    delivered: dict[str, dict[str, KeyDelivery]] = field(default_factory=dict)

    def claim(
        self, job_uid: str, pod_uid: str, delivery: KeyDelivery, recorded: Mapping[str, KeyDelivery]
    ) -> KeyDelivery | None:
        """Record `delivery` unless the pod got the key before (here, or in `recorded`, what the
        key's Secret remembers); then return that earlier delivery and record nothing."""
        pods = self.delivered.setdefault(job_uid, {})
        earlier = pods.get(pod_uid) or recorded.get(pod_uid)
        if earlier is not None:
            pods.setdefault(pod_uid, earlier)
            return earlier
        pods[pod_uid] = delivery
        return None

    def release(self, job_uid: str, pod_uid: str) -> None:
        """Undo a claim whose delivery did not happen (the record could not be kept)."""
        self.delivered.get(job_uid, {}).pop(pod_uid, None)

    def keep_only(self, job_uid: str, pod_uids: Iterable[str]) -> None:
        """Forget the pods that no longer exist (a token bound to a deleted pod is never valid)."""
        live = set(pod_uids)
        pods = self.delivered.get(job_uid, {})
        for gone in [uid for uid in pods if uid not in live]:
            del pods[gone]

    def forget(self, job_uid: str) -> None:
        self.delivered.pop(job_uid, None)
