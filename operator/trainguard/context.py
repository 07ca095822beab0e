"""What the operator's handlers share at run time, built once from the settings.

kopf copies its root memo into every object's memo shallowly, so the one `OperatorContext`
stored there (`memo.context`) is seen by every handler, daemon and webhook of the process.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainguard.api.models import IntegrityVerdict, Tenant
from trainguard.integrity.reports import JobIntegrity
from trainguard.kube import client as kube
from trainguard.quota.queueing import QuotaUsage, WorkloadView
from trainguard.settings import Settings
from trainguard.signing.tenants import SecretUnreadable, TenantImages
from trainguard.workload.lifecycle import PodView

JobKey = tuple[str, str]  # (namespace, name)
Tenants = Mapping[str, Iterable[Tenant]]
TenantNamespaces = Mapping[str, Iterable[str]]
JobPods = Mapping[tuple[str, str], Iterable[PodView]]  # (namespace, job uid) -> pods
JobNames = Mapping[str, Iterable[str]]  # namespace -> names of its TrainingJobs

log = logging.getLogger(__name__)

# Verified steps alone reach a job's status at most this often; a violation at once.
VERIFIED_FLUSH_SECONDS = 5.0


class Wakeups:
    """Wakes a job's reconcile daemon when something it depends on changed (a pod, a report)."""

    def __init__(self) -> None:
        self._events: dict[JobKey, asyncio.Event] = {}
        self._timers: dict[JobKey, asyncio.TimerHandle] = {}

    def event(self, key: JobKey) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: JobKey) -> None:
        self.event(key).set()

    def wake_in(self, key: JobKey, delay: float) -> None:
        """Wake the job `delay` seconds from now (now if 0), unless a wake is already timed."""
        if delay <= 0:
            self.wake(key)
        elif key not in self._timers:

            def fire() -> None:
                self._timers.pop(key, None)
                self.wake(key)

            self._timers[key] = asyncio.get_running_loop().call_later(delay, fire)

    def forget(self, key: JobKey) -> None:
        self._events.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()


class EnsuredChildren:
    """Which of a job's children (service account, claim, service, network policy, key Secret)
    a pass has seen exist and be the job's own, so that later passes do not ask the API server
    again on every pod or Workload change (a create answered "already exists", then a read).
    Researchers cannot delete these children (their role only reads them), and an admin who
    does sees them made again within `ttl` seconds."""

    def __init__(self, ttl: float = 300.0, clock: Any = time.monotonic) -> None:
        self.ttl, self._clock = ttl, clock
        self._seen: dict[str, dict[tuple[str, str], float]] = {}  # job uid -> (kind, name) -> when

    @staticmethod
    def _key(child: Mapping[str, Any]) -> tuple[str, str]:
        return child["kind"], child["metadata"]["name"]

    def known(self, uid: str, child: Mapping[str, Any]) -> bool:
        seen = self._seen.get(uid, {}).get(self._key(child))
        return seen is not None and self._clock() - seen < self.ttl

    def add(self, uid: str, child: Mapping[str, Any]) -> None:
        self._seen.setdefault(uid, {})[self._key(child)] = self._clock()

    def discard(self, uid: str, child: Mapping[str, Any]) -> None:
        """`child` is gone again (a gang rolled back): the next pass makes it anew."""
        self._seen.get(uid, {}).pop(self._key(child), None)

    def forget(self, uid: str) -> None:
        self._seen.pop(uid, None)


class LatestViews:
    """The last view the planner reads of each pod and Workload (by uid): a change that does
    not alter it (a condition the kubelet or Kueue adds, a managed-fields update) wakes no job."""

    def __init__(self) -> None:
        self._views: dict[str, object] = {}

    def changed(self, uid: str, view: object) -> bool:
        if self._views.get(uid) == view:
            return False
        self._views[uid] = view
        return True

    def forget(self, uid: str) -> None:
        self._views.pop(uid, None)


class FreshestJobs:
    """The newest state of each job this process knows without asking the API server: kopf's
    live body from the watch or, while the watch has not yet brought it, the answer to the
    pass's own status write (a pass must never plan from a status older than one it wrote)."""

    def __init__(self) -> None:
        self._written: dict[JobKey, dict[str, Any]] = {}

    def wrote(self, key: JobKey, job: dict[str, Any] | None) -> None:
        if job is not None:
            self._written[key] = job

    def pick(self, key: JobKey, live: dict[str, Any]) -> dict[str, Any] | None:
        """The newer of `live` and the last write; None when resource versions do not compare
        as numbers (an API server not backed by etcd): then read the job from the API server."""
        written = self._written.get(key)
        if written is None:
            return live
        try:
            newer = int(written["metadata"]["resourceVersion"]) > int(live["metadata"]["resourceVersion"])
        except (KeyError, TypeError, ValueError):
            return None
        if newer and written["metadata"].get("uid") == live["metadata"].get("uid"):
            return written
        del self._written[key]  # the watch has caught up
        return live

    def forget(self, key: JobKey) -> None:
        self._written.pop(key, None)


class JobEvents:
    """Each job's Events, posted in the background in the order its passes made them: an Event
    is history, not state (the status write came first), and a pass need not wait for it."""

    def __init__(self) -> None:
        self._tails: dict[JobKey, asyncio.Task[None]] = {}

    def post(self, key: JobKey, posting: Coroutine[Any, Any, None]) -> None:
        before = self._tails.get(key)

        async def in_order() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            try:
                await posting
            except kube.KubeError as exc:
                log.warning("could not post an Event for %s/%s: %s", *key, exc)

        self._tails[key] = asyncio.create_task(in_order())

    async def flush(self, key: JobKey) -> None:
        """Wait until the job's Events are out (its daemon is ending)."""
        tail = self._tails.pop(key, None)
        if tail is not None:
            await asyncio.gather(tail, return_exceptions=True)


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

    def put(self, key: JobKey, verdicts: list[IntegrityVerdict]) -> float:
        """Queue `verdicts`; returns in how many seconds the job's pass should run to write them
        (0: now, for a violation or when the last flush is old enough)."""
        self.pending.setdefault(key, []).extend(verdicts)
        if any(not v.verified for v in verdicts):
            return 0.0
        return max(0.0, VERIFIED_FLUSH_SECONDS - (time.monotonic() - self.flushed.get(key, 0.0)))

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
    children: EnsuredChildren = field(default_factory=EnsuredChildren)
    views: LatestViews = field(default_factory=LatestViews)
    jobs: FreshestJobs = field(default_factory=FreshestJobs)
    events: JobEvents = field(default_factory=JobEvents)

    @classmethod
    def create(cls, settings: Settings) -> OperatorContext:
        images = TenantImages.create(
            settings.plain_http_registries,
            settings.verify_cache_seconds,
            settings.verify_timeout_seconds,
            read_secret=read_pull_secret,
            auth_file=settings.registry_auth_file,
        )
        return cls(settings=settings, images=images)


async def read_pull_secret(namespace: str, name: str) -> Mapping[str, Any] | None:
    """A tenant's image pull Secret for image verification (None when it does not exist)."""
    try:
        return await kube.get_secret(namespace, name)
    except kube.KubeError as exc:  # the message names the Secret and the status, never its data
        raise SecretUnreadable(str(exc)) from exc


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
