"""The pure Kueue side: what a Tenant renders, how a Workload reads, what a wait says."""

from __future__ import annotations

import datetime
from typing import Any

from trainguard.api.models import Tenant
from trainguard.quota import queueing, render
from trainguard.quota.queueing import QueueState, QuotaUsage, WorkloadView, orphaned_workloads

NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.UTC)


def tenant(**quota: Any) -> Tenant:
    return Tenant.model_validate(
        {
            "metadata": {"name": "team-a", "uid": "t-uid"},
            "spec": {"namespaces": ["team-a", "team-a-eval"], "quota": {"nominalGPUs": 16, **quota}},
        }
    )


def test_a_tenant_renders_its_queue_local_queues_and_ceilings() -> None:
    objects = render.tenant_objects(tenant(borrowingLimitGPUs=8, lendingLimitGPUs=4, cohort="research"))
    assert [(o["kind"], o["metadata"].get("namespace")) for o in objects] == [
        ("ClusterQueue", None),
        ("LocalQueue", "team-a"),
        ("ResourceQuota", "team-a"),
        ("LocalQueue", "team-a-eval"),
        ("ResourceQuota", "team-a-eval"),
    ]
    cq = objects[0]
    assert cq["metadata"]["name"] == "tenant-team-a"
    assert cq["metadata"]["ownerReferences"][0]["uid"] == "t-uid"
    resource = cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]
    assert resource == {
        "name": "nvidia.com/gpu",
        "nominalQuota": "16",
        "borrowingLimit": "8",
        "lendingLimit": "4",
    }
    assert cq["spec"]["cohortName"] == "research"
    assert cq["spec"]["namespaceSelector"] == {"matchLabels": {"trainguard.dev/tenant": "team-a"}}
    assert objects[2]["spec"]["hard"] == {"requests.nvidia.com/gpu": "24"}


def test_could_own_never_rules_out_an_object_the_tenant_renders() -> None:
    """The handler of Kueue's status updates skips tenants by `could_own` before rendering: it must
    keep every object a tenant renders, and rule out the others' queues and namespaces."""
    team_a = tenant(cohort="research")
    for manifest in [*render.cohorts([team_a]), *render.tenant_objects(team_a)]:
        meta = manifest["metadata"]
        assert render.could_own(team_a, manifest["kind"], meta["name"], meta.get("namespace"))
        assert render.wanted_for(team_a, manifest["kind"], meta["name"], meta.get("namespace")) == manifest
    assert not render.could_own(team_a, "ClusterQueue", "tenant-team-b", None)
    assert not render.could_own(team_a, "LocalQueue", "trainguard", "team-b")
    assert not render.could_own(team_a, "ResourceQuota", "trainguard-gpu-ceiling", "team-b")


def test_without_a_cohort_there_is_nothing_to_borrow_or_lend() -> None:
    cq = render.cluster_queue(tenant())
    assert "cohortName" not in cq["spec"]
    assert cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0] == {
        "name": "nvidia.com/gpu",
        "nominalQuota": "16",
    }
    assert render.cohorts([tenant()]) == []


def test_drift_is_a_changed_owned_field_not_a_field_kueue_defaults() -> None:
    wanted = render.cluster_queue(tenant())
    current = {
        **wanted,
        "metadata": {**wanted["metadata"], "finalizers": ["kueue.x-k8s.io/resource-in-use"]},
        "spec": {**wanted["spec"], "flavorFungibility": {"whenCanBorrow": "MayStopSearch"}},
        "status": {"pendingWorkloads": 3},
    }
    assert not render.drifted(wanted, current)
    held = {**current, "spec": {**current["spec"], "stopPolicy": "Hold"}}
    assert render.drifted(wanted, held)
    more = {
        **current,
        "spec": {**current["spec"], "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"]}]},
    }
    assert render.drifted(wanted, more)
    relabelled = {**current, "metadata": {**current["metadata"], "labels": {}}}
    assert render.drifted(wanted, relabelled)


def workload_manifest(
    conditions: list[dict[str, str]], admission: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "tj-j-abcde",
            "namespace": "team-a",
            "uid": "w-uid",
            "creationTimestamp": "2026-11-26T11:00:00Z",
            "labels": {"trainguard.dev/tenant": "team-a", "trainguard.dev/job-uid": "j-uid"},
        },
        "spec": {
            "priority": 5,
            "podSets": [
                {
                    "name": "replicas",
                    "count": 2,
                    "template": {
                        "spec": {"containers": [{"resources": {"requests": {"nvidia.com/gpu": "8"}}}]}
                    },
                }
            ],
        },
        "status": {"conditions": conditions, **({"admission": admission} if admission else {})},
    }


def cond(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-26T11:30:00Z",
    }


def test_workload_states_as_kueue_writes_them() -> None:
    assert WorkloadView.from_manifest(workload_manifest([])).state is QueueState.UNSEEN
    pending = WorkloadView.from_manifest(
        workload_manifest([cond("QuotaReserved", "False", "Pending", "no quota")])
    )
    assert (pending.state, pending.message, pending.gpus, pending.priority) == (
        QueueState.PENDING,
        "no quota",
        16,
        5,
    )
    admitted = WorkloadView.from_manifest(
        workload_manifest(
            [cond("QuotaReserved"), cond("Admitted")],
            {"podSetAssignments": [{"name": "replicas", "flavors": {"nvidia.com/gpu": "h100"}}]},
        )
    )
    assert (admitted.state, admitted.flavor) == (QueueState.ADMITTED, "h100")
    message = (
        "Preempted to accommodate a workload (UID: x, JobUID: y) due to reclamation within the cohort; "
        "preemptor path: /research/tenant-team-b; preemptee path: /research/tenant-team-a"
    )
    evicted = WorkloadView.from_manifest(
        workload_manifest(
            [cond("QuotaReserved"), cond("Admitted"), cond("Evicted", reason="Preempted", message=message)]
        )
    )
    assert (evicted.state, evicted.preempted_by, evicted.evicted_at) == (
        QueueState.EVICTED,
        "team-b",
        "2026-11-26T11:30:00Z",
    )
    assert "team-b's claim" in queueing.preemption_message(evicted)


def test_the_queue_order_is_kueues_priority_then_time_then_uid() -> None:
    def view(uid: str, priority: int, created: str, state: QueueState = QueueState.PENDING) -> WorkloadView:
        return WorkloadView(uid, "ns", uid, "t", "j", state, created, priority=priority, queued_since=created)

    order = queueing.positions(
        [
            view("b", 0, "2026-11-26T11:00:01Z"),
            view("a", 0, "2026-11-26T11:00:01Z"),
            view("urgent", 9, "2026-11-26T11:59:00Z"),
            view("old", 0, "2026-11-26T10:00:00Z"),
            view("running", 9, "2026-11-26T09:00:00Z", QueueState.ADMITTED),
        ]
    )
    assert order == {"urgent": 1, "old": 2, "a": 3, "b": 4}


def usage(**changes: Any) -> QuotaUsage:
    base: dict[str, Any] = {
        "tenant": "team-a",
        "nominal": 16,
        "borrowing_limit": 8,
        "cohort": "research",
        "reserved": 16,
        "borrowed": 0,
    }
    return QuotaUsage(**{**base, **changes})


def pending(message: str = "") -> WorkloadView:
    return WorkloadView(
        "w", "ns", "w", "team-a", "j", QueueState.PENDING, "2026-11-26T11:00:00Z", message=message
    )


def test_each_kind_of_wait_is_said_with_its_numbers() -> None:
    reason, message = queueing.explain(pending(), usage(reserved=24, borrowed=8), 8, NOW, position=3)
    assert reason == "WaitingForQuota"
    assert "(position 3 in the queue)" in message
    assert "uses 24 of its 16 nominal + 8 borrowable" in message
    assert "8 more GPUs of the tenant's jobs are released" in message

    peers = {"team-b": (16, None, 16, 0)}
    reason, message = queueing.explain(pending(), usage(reserved=16, cohort_peers=peers), 8, NOW)
    assert reason == "WaitingToBorrow"
    assert "the cohort has 0 unused GPUs to lend" in message

    borrowed = {"team-b": (16, None, 24, 8)}
    reason, message = queueing.explain(pending(), usage(reserved=8, cohort_peers=borrowed), 8, NOW)
    assert reason == "WaitingForCohort"
    assert "team-b borrows 8" in message

    reason, message = queueing.explain(pending("no nodes"), usage(reserved=0, cohort=None), 8, NOW)
    assert reason == "WaitingForCapacity"
    assert "no nodes" in message

    reason, message = queueing.explain(
        pending(), usage(active=False, inactive_reason="flavor gpu missing"), 8, NOW
    )
    assert reason == "QueueInactive"
    assert "flavor gpu missing" in message


def test_a_silent_kueue_is_named_after_twenty_seconds() -> None:
    fresh = WorkloadView("w", "ns", "w", "team-a", "j", QueueState.UNSEEN, "2026-11-26T11:59:50Z")
    assert queueing.explain(fresh, usage(), 8, NOW)[0] == "Submitted"
    old = WorkloadView("w", "ns", "w", "team-a", "j", QueueState.UNSEEN, "2026-11-26T11:59:30Z")
    reason, message = queueing.explain(old, usage(), 8, NOW)
    assert reason == "KueueUnavailable"
    assert "for 30 s" in message


def test_cluster_queue_figures_are_read_from_kueues_status() -> None:
    cq = render.cluster_queue(tenant(borrowingLimitGPUs=8, cohort="research"))
    cq["status"] = {
        "flavorsReservation": [
            {"name": "gpu", "resources": [{"name": "nvidia.com/gpu", "total": "20", "borrowed": "4"}]}
        ],
        "pendingWorkloads": 2,
        "conditions": [{"type": "Active", "status": "True"}],
    }
    read = QuotaUsage.from_cluster_queue(cq)
    assert (read.tenant, read.nominal, read.borrowing_limit, read.reserved, read.borrowed, read.pending) == (
        "team-a",
        16,
        8,
        20,
        4,
        2,
    )
    assert read.active


def test_workloads_of_jobs_that_are_gone_are_orphans() -> None:
    def workload(name: str, uid: str | None) -> dict[str, Any]:
        labels = {"trainguard.dev/job-uid": uid} if uid else {}
        return {"metadata": {"namespace": "team-a", "name": name, "labels": labels}}

    found = [workload("tj-a-1", "u1"), workload("tj-b-2", "u2"), workload("odd", None)]
    assert orphaned_workloads(found, ["u1"]) == [("team-a", "tj-b-2"), ("team-a", "odd")]
    assert orphaned_workloads(found, ["u1", "u2"]) == [("team-a", "odd")]
