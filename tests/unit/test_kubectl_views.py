"""`kubectl trainguard`'s pure side: rows, plain-words answers and exit codes from objects already read."""

from __future__ import annotations

import datetime
from typing import Any

from trainguard.api.models import TrainingJob
from trainguard.cli import views
from trainguard.cli.views import Exit
from trainguard.policy.images import parse_verified_warning, verified_warning

NOW = datetime.datetime(2025, 6, 1, 12, 0, 0, tzinfo=datetime.UTC)
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example/team-a/trainer:v1@{DIGEST}"


def cond(
    kind: str, status: str, reason: str, message: str = "", at: str = "2025-06-01T11:58:00Z"
) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def job(name: str = "llm", *conditions: dict[str, Any], **status: Any) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "team-a",
                "uid": "u-" + name,
                "creationTimestamp": "2025-06-01T11:57:00Z",
            },
            "spec": {
                "tenant": "team-a",
                "image": IMAGE,
                "replicas": 2,
                "resources": {"gpusPerReplica": 4},
                "owner": {"user": "alice", "groups": ["team-a"]},
                "collaborators": {"users": ["bob"], "groups": []},
            },
            "status": {"conditions": list(conditions), **status},
        }
    )


WAITING = (
    "waiting for tenant team-a's GPU quota (position 2 in the queue): needs 8 GPUs; tenant team-a uses 8 of "
    "its 8 nominal; it starts when 8 more GPUs of the tenant's jobs are released"
)


def queued(name: str = "llm", position: int | None = 2) -> TrainingJob:
    return job(
        name,
        cond("Queued", "True", "WaitingForQuota", WAITING),
        cond("Admitted", "True", "Admitted", "admitted under tenant team-a"),
        queue={"position": position, "workload": f"tj-{name}-u", "clusterQueue": "tenant-team-a"},
    )


def test_why_a_queued_job_gives_its_position_reason_numbers_and_what_to_do() -> None:
    answer = views.why(queued())
    assert answer.state == "Queued"
    assert answer.reason == "WaitingForQuota"
    assert answer.exit is Exit.OK
    assert "position 2 in tenant team-a's queue" in answer.headline
    assert answer.details == [WAITING]
    assert "fewer GPUs" in answer.todo
    assert "kubectl trainguard queue" in answer.todo
    data = answer.to_data()
    assert data["exitCode"] == 0
    assert data["state"] == "Queued"
    assert answer.lines()[-1].startswith("what to do: ")


def test_why_a_failed_job_says_no_and_names_the_log_to_read() -> None:
    failed = job(
        "llm",
        cond("Failed", "True", "BackoffLimitExceeded", "replica 0 failed with exit code 3; maxRestarts=0"),
        cond("Admitted", "True", "Admitted"),
    )
    answer = views.why(failed)
    assert (answer.state, answer.exit) == ("Failed", Exit.NO)
    assert "exit code 3" in answer.details[0]
    assert "kubectl logs -n team-a -l trainguard.dev/job-name=llm -c trainer" in answer.todo
    assert views.status_exit(failed) is Exit.NO


def test_why_a_job_whose_shared_input_changed_names_the_file_and_how_to_sign_again() -> None:
    message = "replica 0: a verified shared folder differs ... * /code/pkg/model.py: changed"
    failed = job(
        "llm",
        cond("Failed", "True", "SharedInputChanged", message),
        cond("IntegrityViolation", "True", "SharedInputChanged", message),
    )
    answer = views.why(failed)
    assert (answer.state, answer.reason, answer.exit) == ("Failed", "SharedInputChanged", Exit.NO)
    assert "/code/pkg/model.py: changed" in answer.details[0]
    assert "sign the folder's new manifest" in answer.todo


def test_why_a_job_the_operator_did_not_admit_says_no() -> None:
    refused = job("llm", cond("Admitted", "False", "Unsigned", "spec.image: ... has no cosign signature"))
    answer = views.why(refused)
    assert (answer.state, answer.exit) == ("NotAdmitted", Exit.NO)
    assert "verify-image" in answer.todo


def test_why_preempted_running_and_violation() -> None:
    preempted = job(
        "p", cond("Preempted", "True", "Preempted", "Kueue preempted the job for tenant b's claim")
    )
    assert views.why(preempted).state == "Preempted"
    assert "back in the queue" in views.why(preempted).todo
    running = job("r", cond("Running", "True", "AllReplicasRunning", "all 2 replicas are running"))
    assert (views.why(running).state, views.why(running).exit) == ("Running", Exit.OK)
    violated = job(
        "v",
        cond("IntegrityViolation", "True", "WeightsChanged", "step 7, replica 1: WeightsChanged: layer.0"),
        cond("Running", "True", "AllReplicasRunning"),
    )
    answer = views.why(violated)
    assert answer.state == "IntegrityViolation"
    assert "step 7" in answer.details[0]
    assert "keeps running (integrity mode Audit)" in answer.details[1]


def test_a_job_that_does_not_exist_shows_its_admission_refusal() -> None:
    refusal = {
        "reason": "AdmissionDenied",
        "involvedObject": {"kind": "TrainingJob", "name": "sneaky"},
        "message": 'TrainingJob "sneaky" is not allowed (1 problem):\n'
        "* spec.image: x has no cosign signature; sign",
        "lastTimestamp": "2025-06-01T11:59:00Z",
    }
    other = {**refusal, "involvedObject": {"kind": "TrainingJob", "name": "other"}}
    answer = views.why_missing("sneaky", "team-a", [other, refusal], NOW)
    assert (answer.state, answer.exit) == ("Refused", Exit.NOT_FOUND)
    assert "admission refused it 60s ago" in answer.headline
    assert answer.details[1] == "* spec.image: x has no cosign signature; sign"
    missing = views.why_missing("gone", "team-a", [refusal], NOW)
    assert (missing.state, missing.exit) == ("NotFound", Exit.NOT_FOUND)
    assert "kubectl get tj -n team-a" in missing.todo


def test_status_shows_digest_signer_people_integrity_and_queue() -> None:
    j = job(
        "llm",
        cond("Queued", "True", "WaitingForQuota", WAITING),
        image={"reference": IMAGE, "digest": DIGEST, "signer": "release"},
        integrity={"lastVerifiedStep": 40},
        queue={"position": 2},
    )
    view = views.job_status(j, NOW)
    assert view["image"] == {"requested": IMAGE, "digest": DIGEST, "signer": "release"}
    assert view["owner"] == {"user": "alice", "groups": ["team-a"]}
    assert view["integrity"]["lastVerifiedStep"] == 40
    assert view["queue"]["position"] == 2
    assert view["queue"]["reason"] == "WaitingForQuota"
    assert view["age"] == "3m"
    text = "\n".join(views.status_lines(view))
    assert f"pinned digest:  {DIGEST}" in text
    assert "signer:         release" in text
    assert "collaborators:  bob" in text
    assert "position 2, WaitingForQuota: waiting for tenant team-a's GPU quota" in text
    assert text.splitlines()[-2].split()[:3] == ["CONDITION", "STATUS", "REASON"]


def test_queue_rows_follow_the_queue_order_and_skip_jobs_not_waiting() -> None:
    running = job("r", cond("Running", "True", "AllReplicasRunning"))
    rows = views.queue_rows([queued("b", 2), running, queued("a", 1), queued("c", None)], NOW)
    assert [(r["name"], r["position"]) for r in rows] == [("a", 1), ("b", 2), ("c", None)]
    assert rows[0]["gpus"] == 8
    assert rows[0]["waiting"] == "2m"
    table = views.queue_table(rows)
    assert table[0].split()[:4] == ["TENANT", "POS", "NAMESPACE", "NAME"]
    assert table[3].split()[1] == "-"
    assert views.queue_table([]) == ["no TrainingJob is waiting"]


def cluster_queue(
    tenant: str, nominal: int, borrowing: int, total: int, borrowed: int, **status: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {"name": "nvidia.com/gpu", "nominalQuota": str(nominal)}
    if borrowing:
        resource["borrowingLimit"] = str(borrowing)
    return {
        "metadata": {"name": f"tenant-{tenant}", "labels": {"app.kubernetes.io/managed-by": "trainguard"}},
        "spec": {
            "cohortName": "research",
            "resourceGroups": [{"flavors": [{"name": "gpu", "resources": [resource]}]}],
        },
        "status": {
            "flavorsReservation": [
                {"resources": [{"name": "nvidia.com/gpu", "total": str(total), "borrowed": str(borrowed)}]}
            ],
            **status,
        },
    }


def test_quota_rows_are_kueues_figures_per_tenant() -> None:
    foreign = {"metadata": {"name": "batch", "labels": {}}, "spec": {}}
    queues = [
        cluster_queue("b", 8, 0, 0, 0),
        cluster_queue("a", 8, 8, 16, 8, pendingWorkloads=2, admittedWorkloads=2),
        foreign,
    ]
    rows = views.quota_rows(queues)
    assert [r["tenant"] for r in rows] == ["a", "b"]
    a = rows[0]
    assert (a["nominal"], a["borrowingLimit"], a["inUse"], a["borrowed"], a["admitted"], a["waiting"]) == (
        8, 8, 16, 8, 2, 2,
    )  # fmt: skip
    assert a["cohortUnused"] == 8  # b uses none of its 8
    assert [r["tenant"] for r in views.quota_rows(queues, "b")] == ["b"]
    table = views.quota_table(rows)
    header = "TENANT COHORT NOMINAL BORROW-LIMIT IN-USE BORROWED COHORT-UNUSED ADMITTED WAITING"
    assert table[0].split() == header.split(" ")
    assert table[1].split() == ["a", "research", "8", "8", "16", "8", "8", "2", "2"]


def test_the_namespace_tenant_comes_from_its_local_queue() -> None:
    assert views.tenant_of_local_queue({"spec": {"clusterQueue": "tenant-team-a"}}) == "team-a"
    assert views.tenant_of_local_queue({"spec": {"clusterQueue": "batch"}}) is None
    assert views.tenant_of_local_queue(None) is None


def test_verification_reads_the_pinned_image_and_the_signer_from_the_webhook_warning() -> None:
    warning = verified_warning("team-a", "release", IMAGE)
    assert parse_verified_warning(warning) == ("team-a", "release", IMAGE)
    assert parse_verified_warning("something else") is None
    ok = views.verification("r/t:v1", "team-a", "ns", {"spec": {"image": IMAGE}}, ["other", warning])
    assert (ok.verified, ok.signer, ok.digest, ok.exit) == (True, "release", DIGEST, Exit.OK)
    assert ok.lines()[0] == "verified: r/t:v1 is signed by release, a signer tenant team-a trusts"
    refusal = (
        'admission webhook "validate-trainingjob.trainguard.dev" denied the request: ...\n* spec.image: x'
    )
    no = views.verification("r/u:v1", "team-a", "ns", None, [], refusal)
    assert (no.verified, no.exit) == (False, Exit.NO)
    assert no.lines()[1:] == refusal.splitlines()
    assert no.to_data()["message"] == refusal
    body = views.minimal_job("verify-image-x", "team-a", "r/t:v1")
    assert body["spec"]["resources"] == {"gpusPerReplica": 0}


def test_events_are_the_audit_trail_oldest_first_with_who() -> None:
    j = queued("llm")
    events = [
        {
            "involvedObject": {"kind": "TrainingJob", "name": "llm", "uid": "u-llm"},
            "type": "Normal",
            "reason": "QuotaAdmitted",
            "message": "Kueue admitted",
            "lastTimestamp": "2025-06-01T11:59:00Z",
            "source": {"component": "trainguard"},
        },
        {
            "involvedObject": {"kind": "TrainingJob", "name": "llm", "uid": "u-old"},  # an earlier job
            "reason": "Admitted",
            "lastTimestamp": "2025-06-01T10:00:00Z",
        },
        {
            "involvedObject": {"kind": "Pod", "name": "llm-0-a0"},
            "type": "Normal",
            "reason": "PodConnectAllowed",
            "message": "bob was allowed pods/exec into llm-0-a0",
            "lastTimestamp": "2025-06-01T11:58:30Z",
            "reportingComponent": "trainguard-admission",
        },
        {
            "involvedObject": {"kind": "Workload", "name": "tj-llm-u"},
            "type": "Normal",
            "reason": "QuotaReserved",
            "message": "Quota reserved in ClusterQueue tenant-team-a",
            "eventTime": "2025-06-01T11:58:10Z",
            "reportingController": "kueue-admission",
            "count": 2,
        },
        {"involvedObject": {"kind": "Pod", "name": "llm-other-0-a0"}, "reason": "Scheduled"},
    ]
    rows = views.event_rows(j, events)
    assert [(r["reason"], r["who"]) for r in rows] == [
        ("Created", "alice"),
        ("QuotaReserved", "kueue-admission"),
        ("QuotaAdmitted", "trainguard"),
    ]
    with_pods = views.event_rows(j, events, pods=True)
    assert ("PodConnectAllowed", "bob") in [(r["reason"], r["who"]) for r in with_pods]
    table = views.events_table(rows)
    assert table[0].split() == ["TIME", "TYPE", "REASON", "OBJECT", "WHO", "MESSAGE"]
    assert table[2].endswith("(x2)")


def test_a_refused_caller_gets_one_line_with_what_to_ask_for() -> None:
    said = (
        'trainingjobs.trainguard.dev "llm" is forbidden: User "mallory" cannot get resource "trainingjobs" '
        'in API group "trainguard.dev" in the namespace "team-a"'
    )
    line = views.forbidden_line(said, "mallory", ["team-b"])
    assert line.startswith("forbidden: ")
    assert "(as groups team-b)" in line
    assert "tenant's members" in line
    assert "\n" not in line
    cq = 'clusterqueues.kueue.x-k8s.io is forbidden: User "x" cannot list resource "clusterqueues"'
    assert "trainguard-quota-viewer" in views.forbidden_line(cq, "y")
    assert "(as y)" in views.forbidden_line(cq, "y")


def test_waiting_ends_when_the_job_runs_succeeds_or_fails() -> None:
    assert not views.finished_waiting(queued())
    assert views.finished_waiting(job("r", cond("Running", "True", "AllReplicasRunning")))
    assert views.finished_waiting(job("f", cond("Failed", "True", "DeadlineExceeded")))
    line = views.progress_line(queued(), "llm", 12.4)
    assert line == "waiting for team-a/llm: Queued (WaitingForQuota, position 2), 12s"
    assert views.progress_line(None, "llm", 1) == "waiting for llm to exist (1s)"


def test_tables_align_columns() -> None:
    assert views.table(["A", "LONGER", "LAST"], [["xx", "y", "z z"]]) == [
        "A    LONGER   LAST",
        "xx   y        z z",
    ]
    assert set(views.EXIT_CODES_HELP.split()) >= {"0", "1", "2", "3", "4", "5", "6"}
    assert [int(e) for e in Exit] == [0, 1, 2, 3, 4, 5, 6]
