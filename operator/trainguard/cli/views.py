"""What `kubectl trainguard` shows, from objects already read: rows, plain-words explanations with
the fix, and the exit code. Pure: no API calls, no printing; `cli/kubectl.py` reads and prints.

The words come from where the operator wrote them (the job's conditions, Kueue's figures through
`quota.queueing`, the admission refusal's own text); this module arranges them and adds what to do.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.api.conditions import Condition, ConditionType, find, job_state, parse_time
from trainguard.api.constants import LABEL_MANAGED_BY, MANAGED_BY
from trainguard.api.models import IntegrityMode, TrainingJob
from trainguard.policy.images import parse_verified_warning
from trainguard.quota.queueing import QuotaUsage
from trainguard.quota.render import cluster_queue_name, tenant_of_cluster_queue

Obj = Mapping[str, Any]


class Exit(enum.IntEnum):
    """The plugin's exit codes (documented in `--help` and docs/kubectl-plugin.md)."""

    OK = 0  # shown; the image verified; the job runs, succeeded or waits in the queue
    NO = 1  # the answer is no: the image was refused, the job failed or was not admitted
    USAGE = 2  # wrong arguments
    NOT_FOUND = 3  # no such job (never created, refused at admission, or deleted)
    FORBIDDEN = 4  # the API server refused the caller
    UNREACHABLE = 5  # no kubeconfig, no answer from the API server, or an error it returned
    TIMED_OUT = 6  # --wait ran out of time


EXIT_CODES_HELP = """exit codes:
  0  done: shown; the image verified; the job runs, succeeded or waits in its queue
  1  the answer is no: the image was refused, the job failed or was not admitted
  2  usage error (wrong arguments)
  3  not found: no such job (never created, refused at admission, or deleted)
  4  forbidden: the API server refused your identity (the message says what to ask for)
  5  the cluster could not be reached, or answered with an error (a webhook unavailable)
  6  timed out: --wait ran past --timeout"""


def state_of(job: TrainingJob) -> str:
    """The state a job is in: the first True condition in the printer column's order."""
    return job_state(job.status.conditions)


def finished_waiting(job: TrainingJob) -> bool:
    """What `--wait` waits for: the job runs, or it ended, or admission turned it down for good."""
    return state_of(job) in ("Running", "Succeeded", "Failed")


def _age(stamp: str | None, now: datetime.datetime) -> str:
    if not stamp:
        return "-"
    seconds = max(int((now - parse_time(stamp)).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172_800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86_400}d"


# --------------------------------------------------------------------------- status


def job_status(job: TrainingJob, now: datetime.datetime) -> dict[str, Any]:
    """Everything `status` shows, as data (`-o json|yaml` prints it as is)."""
    spec, status = job.spec, job.status
    owner = spec.owner
    queue = status.queue
    queued = find(status.conditions, ConditionType.QUEUED.value)
    integrity = status.integrity
    return {
        "name": job.name,
        "namespace": job.namespace,
        "tenant": spec.tenant,
        "state": state_of(job),
        "gpus": spec.total_gpus,
        "replicas": {"desired": spec.replicas, **status.replicas.model_dump(mode="json")},
        "restarts": status.restarts,
        "preemptions": status.preemptions,
        "image": {
            "requested": spec.image,
            "digest": status.image.digest if status.image else _digest_of(spec.image),
            "signer": status.image.signer if status.image else None,
        },
        "owner": {"user": owner.user, "groups": list(owner.groups)} if owner else None,
        "collaborators": {"users": spec.collaborators.users, "groups": spec.collaborators.groups},
        "integrity": {
            "mode": spec.integrity.mode.value,
            "lastVerifiedStep": integrity.last_verified_step if integrity else None,
            "lastViolation": integrity.last_violation if integrity else None,
            "verdict": _integrity_verdict(job),
        },
        "queue": {
            "position": queue.position if queue else None,
            "reason": queued.reason if queued is not None and queued.status == "True" else None,
            "message": queued.message if queued is not None else None,
            "workload": queue.workload if queue else None,
            "clusterQueue": queue.cluster_queue if queue else None,
            "flavor": queue.flavor if queue else None,
        },
        "created": job.metadata.creation_timestamp,
        "started": status.start_time,
        "completed": status.completion_time,
        "age": _age(job.metadata.creation_timestamp, now),
        "conditions": [c.model_dump(by_alias=True, exclude_none=True) for c in status.conditions],
    }


def _digest_of(image: str) -> str | None:
    return image.rsplit("@", 1)[1] if "@" in image else None


def _integrity_verdict(job: TrainingJob) -> str:
    conds = job.status.conditions
    if job.spec.integrity.mode is IntegrityMode.OFF:
        return "off"
    violation = find(conds, ConditionType.INTEGRITY_VIOLATION.value)
    if violation is not None and violation.status == "True":
        return f"violation: {violation.message}"
    verified = find(conds, ConditionType.INTEGRITY_VERIFIED.value)
    if verified is not None and verified.status == "True":
        return f"verified: {verified.message}"
    return "no report yet"


def status_lines(view: Mapping[str, Any]) -> list[str]:
    """`status` for people: a block of fields, then the conditions as a table."""
    image, owner, collab, integ, queue = (
        view["image"],
        view["owner"],
        view["collaborators"],
        view["integrity"],
        view["queue"],
    )
    rep = view["replicas"]
    people = ", ".join([*collab["users"], *(f"group {g}" for g in collab["groups"])]) or "none"
    lines = [
        f"TrainingJob {view['namespace']}/{view['name']} (tenant {view['tenant']})",
        f"  state:          {view['state']}",
        f"  replicas:       {rep['desired']} desired, {rep['active']} active, {rep['ready']} running, "
        f"{rep['succeeded']} succeeded, {rep['failed']} failed; {view['gpus']} GPUs; "
        f"{view['restarts']} restarts, {view['preemptions']} preemptions",
        f"  image:          {image['requested']}",
        f"  pinned digest:  {image['digest'] or 'not pinned'}",
        f"  signer:         {image['signer'] or 'not verified by the operator yet'}",
        f"  owner:          {owner['user'] if owner else 'not recorded'}",
        f"  collaborators:  {people}",
        f"  integrity:      {integ['mode']}; last verified step "
        f"{integ['lastVerifiedStep'] if integ['lastVerifiedStep'] is not None else '-'}; {integ['verdict']}",
    ]
    if queue["reason"]:
        where = f"position {queue['position']}" if queue["position"] else "no position yet"
        lines.append(f"  queue:          {where}, {queue['reason']}: {queue['message']}")
    elif queue["clusterQueue"]:
        lines.append(
            f"  queue:          admitted to {queue['clusterQueue']}"
            + (f" (flavor {queue['flavor']})" if queue["flavor"] else "")
        )
    lines.append(f"  age:            {view['age']}")
    lines.append("")
    rows = [
        [c["type"], c["status"], c["reason"], c.get("lastTransitionTime", ""), c.get("message", "")]
        for c in view["conditions"]
    ]
    lines += table(["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"], rows)
    return lines


def status_exit(job: TrainingJob) -> Exit:
    return Exit.NO if state_of(job) in ("Failed", "NotAdmitted") else Exit.OK


# --------------------------------------------------------------------------- why


# What to do, per reason the operator writes (Queued, Admitted=False, Failed, Running=False).
TODO: dict[str, str] = {
    # waiting in Kueue
    "Submitted": "nothing yet: Kueue looks at a new job within seconds; run `kubectl trainguard why --wait`",
    "KueueUnavailable": "ask the platform team whether Kueue is running; no GPU job starts without it",
    "WaitingForKueue": "wait a few seconds; if it lasts, ask the platform team to check the tenant's "
    "ClusterQueue",
    "QueueInactive": "ask the platform team to fix the tenant's ClusterQueue (`kubectl trainguard quota`)",
    "WaitingForQuota": "wait for the tenant's running jobs to finish, or ask for fewer GPUs "
    "(delete and apply the job again), or ask the platform team for more quota; "
    "`kubectl trainguard queue` shows what waits ahead",
    "WaitingForCohort": "nothing: Kueue reclaims the GPUs the tenant lent by preempting the borrowers' "
    "newest jobs, and then starts this one",
    "WaitingToBorrow": "wait for the cohort to free GPUs, or ask for no more than the tenant's unused "
    "nominal quota (`kubectl trainguard quota`), so the job needs no borrowing",
    "WaitingForCapacity": "wait: the quota is free but the cluster's GPUs are busy; if it lasts, ask the "
    "platform team about capacity",
    "Preempted": "nothing: the job is back in the queue and starts again (a new attempt) when Kueue "
    "readmits it; checkpoint often so an attempt resumes where the last one stopped",
    # refused by the operator's own admission check
    "Unsigned": "sign the image with a key the tenant trusts, then delete and apply the job again; "
    "`kubectl trainguard verify-image IMAGE` checks it first",
    "UntrustedSigner": "sign the image with a key the tenant trusts, then delete and apply the job again",
    "InvalidSignature": "sign the image again, then delete and apply the job again",
    "CannotVerify": "check that the registry is reachable; the operator tries again every 30 s",
    "NoTrustedSigners": "ask the platform team to add trusted signers to the tenant",
    "ImageNotVerified": "wait: the operator verifies the image before the first pod",
    "TenantNotFound": "ask the platform team to create the tenant, or name an existing one",
    "NamespaceNotOwned": "create the job in one of the tenant's namespaces",
    "NotATenantMember": "ask the platform team to add you to the tenant's members",
    "ExceedsTenantQuota": "ask for fewer GPUs (replicas x gpusPerReplica), or ask for more quota",
    # failed
    "BackoffLimitExceeded": "read the failed replica's log (`kubectl logs -n NAMESPACE -l "
    "trainguard.dev/job-name=JOB -c trainer`), fix the cause, then delete and apply the job again",
    "DeadlineExceeded": "the job ran past spec.maxRunSeconds: raise it, or resume from a checkpoint, in a "
    "new job",
    "IntegrityViolation": "the weights changed outside training: tell the tenant's admins, and do not use "
    "this job's outputs; `kubectl trainguard events JOB` shows the trail",
    "SharedInputChanged": "the files the message names differ from their folder's signed manifest: if "
    "nobody meant to change them, tell the tenant's admins; if the change is intended, sign the folder's "
    "new manifest (docs/researchers.md, section 6); then delete and apply the job again",
    "ChildNameTaken": "delete the objects the message names, or create the job under another name",
    # running
    "Restarting": "nothing: the gang restarts after its back-off; read the failed replica's log if it "
    "repeats",
    "BackingOff": "nothing: the gang restarts when the back-off ends",
    "Starting": "nothing: the job's pods are being created",
}
_DEFAULT_TODO = "fix what the message says, then delete and apply the job again"


@dataclass(frozen=True)
class Why:
    """The answer of `why`: the state in a headline, the operator's own words, what to do."""

    name: str
    namespace: str
    state: str
    reason: str
    headline: str
    details: list[str] = field(default_factory=list)
    todo: str = ""
    exit: Exit = Exit.OK

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "state": self.state,
            "reason": self.reason,
            "headline": self.headline,
            "details": self.details,
            "todo": self.todo,
            "exitCode": int(self.exit),
        }

    def lines(self) -> list[str]:
        out = [self.headline]
        out += [f"  {d}" for d in self.details]
        if self.todo:
            out.append(f"what to do: {self.todo}")
        return out


def _todo(reason: str, job: str, namespace: str) -> str:
    return TODO.get(reason, _DEFAULT_TODO).replace("NAMESPACE", namespace).replace("JOB", job)


def why(job: TrainingJob) -> Why:
    """Why the job is where it is: failed, refused, done, in violation, preempted, waiting or running.
    The details are the operator's own condition message (with its numbers)."""
    conds = job.status.conditions
    name, ns = job.name, job.namespace
    who = f"{ns}/{name}"

    def true(kind: ConditionType) -> Condition | None:
        found = find(conds, kind.value)
        return found if found is not None and found.status == "True" else None

    def answer(state: str, cond: Condition, headline: str, exit_code: Exit = Exit.OK, todo: str = "") -> Why:
        details = [cond.message] if cond.message else []
        if state == "IntegrityViolation":
            details.append(f"the job keeps running (integrity mode {job.spec.integrity.mode.value})")
        todo = todo or _todo(cond.reason, name, ns)
        return Why(name, ns, state, cond.reason, headline, details, todo, exit_code)

    if failed := true(ConditionType.FAILED):
        at = failed.last_transition_time
        return answer("Failed", failed, f"{who} failed ({failed.reason}) at {at}", Exit.NO)
    admitted = find(conds, ConditionType.ADMITTED.value)
    if admitted is not None and admitted.status == "False":
        return answer("NotAdmitted", admitted, f"{who} is not admitted to run ({admitted.reason})", Exit.NO)
    if succeeded := true(ConditionType.SUCCEEDED):
        return answer("Succeeded", succeeded, f"{who} succeeded", todo="nothing: it is done")
    if violation := true(ConditionType.INTEGRITY_VIOLATION):
        headline = f"{who} has an integrity violation ({violation.reason})"
        return answer("IntegrityViolation", violation, headline, todo=_todo("IntegrityViolation", name, ns))
    if preempted := true(ConditionType.PREEMPTED):
        headline = f"{who} was preempted and waits in the queue again"
        return answer("Preempted", preempted, headline, todo=_todo("Preempted", name, ns))
    if queued := true(ConditionType.QUEUED):
        position = job.status.queue.position if job.status.queue else None
        where = f"position {position} in tenant {job.spec.tenant}'s queue" if position else "not yet in line"
        return answer("Queued", queued, f"{who} is waiting for Kueue ({queued.reason}, {where})")
    if running := true(ConditionType.RUNNING):
        return answer("Running", running, f"{who} is running", todo="nothing: it runs")
    if starting := find(conds, ConditionType.RUNNING.value):
        return answer("Starting", starting, f"{who} is not running yet ({starting.reason})")
    todo = "wait a few seconds; if it lasts, ask the platform team whether the operator runs"
    return Why(
        name, ns, "Pending", "Pending", f"{who} has no status yet: the operator has not seen it", [], todo
    )


def why_missing(name: str, namespace: str, events: Iterable[Obj], now: datetime.datetime) -> Why:
    """No such job: if admission refused it, the refusal (from its AdmissionDenied Event)."""
    denials = sorted(
        (
            e
            for e in events
            if e.get("reason") == "AdmissionDenied"
            and (e.get("involvedObject") or {}).get("kind") == "TrainingJob"
            and (e.get("involvedObject") or {}).get("name") == name
        ),
        key=_event_time,
    )
    if denials:
        last = denials[-1]
        return Why(
            name,
            namespace,
            "Refused",
            "AdmissionDenied",
            f"TrainingJob {name} does not exist in namespace {namespace}: admission refused it "
            f"{_age(_event_time(last), now)} ago",
            details=str(last.get("message", "")).splitlines(),
            todo="fix every problem listed, then apply it again; `kubectl trainguard verify-image IMAGE` "
            "checks an image before you apply",
            exit=Exit.NOT_FOUND,
        )
    return Why(
        name,
        namespace,
        "NotFound",
        "NotFound",
        f"TrainingJob {name} does not exist in namespace {namespace}",
        details=["it was never created here, or it was deleted (a refusal is printed by kubectl apply)"],
        todo=f"`kubectl get tj -n {namespace}` lists the jobs; apply it again; "
        "`kubectl trainguard verify-image IMAGE` checks an image first",
        exit=Exit.NOT_FOUND,
    )


def progress_line(job: TrainingJob | None, name: str, elapsed: float) -> str:
    if job is None:
        return f"waiting for {name} to exist ({elapsed:.0f}s)"
    state = state_of(job)
    cond = next((c for c in job.status.conditions if c.type == state), None)
    position = job.status.queue.position if job.status.queue else None
    extra = f", position {position}" if position and state == "Queued" else ""
    reason = f" ({cond.reason}{extra})" if cond is not None else ""
    return f"waiting for {job.namespace}/{name}: {state}{reason}, {elapsed:.0f}s"


# --------------------------------------------------------------------------- queue and quota


def queue_rows(jobs: Iterable[TrainingJob], now: datetime.datetime) -> list[dict[str, Any]]:
    """Waiting jobs, per tenant queue in Kueue's order (position 1 first; unplaced ones last)."""
    rows = []
    for job in jobs:
        queued = find(job.status.conditions, ConditionType.QUEUED.value)
        if queued is None or queued.status != "True" or state_of(job) in ("Failed", "Succeeded"):
            continue
        position = job.status.queue.position if job.status.queue else None
        rows.append(
            {
                "tenant": job.spec.tenant,
                "position": position,
                "namespace": job.namespace,
                "name": job.name,
                "gpus": job.spec.total_gpus,
                "priority": job.spec.priority,
                "reason": queued.reason,
                "waiting": _age(queued.last_transition_time, now),
                "message": queued.message,
            }
        )
    rows.sort(
        key=lambda r: (r["tenant"], r["position"] is None, r["position"] or 0, r["namespace"], r["name"])
    )
    return rows


def queue_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return ["no TrainingJob is waiting"]
    return table(
        ["TENANT", "POS", "NAMESPACE", "NAME", "GPUS", "REASON", "WAITING", "MESSAGE"],
        [
            [
                r["tenant"],
                r["position"] or "-",
                r["namespace"],
                r["name"],
                r["gpus"],
                r["reason"],
                r["waiting"],
                r["message"],
            ]
            for r in rows
        ],
    )


def trainguard_cluster_queues(queues: Iterable[Obj]) -> list[Obj]:
    """The ClusterQueues trainguard renders for tenants (never another team's own Kueue queues)."""
    return [
        q
        for q in queues
        if ((q.get("metadata") or {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
        and tenant_of_cluster_queue((q.get("metadata") or {}).get("name", ""))
    ]


def quota_rows(queues: Iterable[Obj], tenant: str | None = None) -> list[dict[str, Any]]:
    """Per tenant, from its ClusterQueue (Kueue's own figures): GPUs nominal, borrowable, in use
    (reserved, borrowed included), borrowed, and the workloads admitted and waiting."""
    usages = [QuotaUsage.from_cluster_queue(q) for q in trainguard_cluster_queues(queues)]
    rows = []
    for usage in sorted(usages, key=lambda u: u.tenant):
        if tenant and usage.tenant != tenant:
            continue
        usage = usage.with_peers(usages)
        rows.append(
            {
                "tenant": usage.tenant,
                "clusterQueue": cluster_queue_name(usage.tenant),
                "cohort": usage.cohort,
                "nominal": usage.nominal,
                "borrowingLimit": usage.borrowing_limit if usage.cohort else 0,
                "inUse": usage.reserved,
                "borrowed": usage.borrowed,
                "cohortUnused": usage.cohort_free if usage.cohort else 0,
                "admitted": usage.admitted,
                "waiting": usage.pending,
                "active": usage.active,
                "inactiveReason": usage.inactive_reason,
            }
        )
    return rows


def quota_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return ["no tenant quota found"]
    return table(
        [
            "TENANT",
            "COHORT",
            "NOMINAL",
            "BORROW-LIMIT",
            "IN-USE",
            "BORROWED",
            "COHORT-UNUSED",
            "ADMITTED",
            "WAITING",
        ],
        [
            [
                r["tenant"] + ("" if r["active"] else " (inactive)"),
                r["cohort"] or "-",
                r["nominal"],
                r["borrowingLimit"],
                r["inUse"],
                r["borrowed"],
                r["cohortUnused"],
                r["admitted"],
                r["waiting"],
            ]
            for r in rows
        ],
    )


def tenant_of_local_queue(local_queue: Obj | None) -> str | None:
    """The tenant of a namespace, from its LocalQueue (members may read it; not the Namespace)."""
    if local_queue is None:
        return None
    return tenant_of_cluster_queue(str((local_queue.get("spec") or {}).get("clusterQueue", "")))


# --------------------------------------------------------------------------- verify-image


@dataclass(frozen=True)
class Verification:
    image: str
    tenant: str
    namespace: str
    verified: bool
    pinned: str | None = None
    digest: str | None = None
    signer: str | None = None
    message: str = ""  # the admission refusal, as `kubectl apply` prints it

    def to_data(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "tenant": self.tenant,
            "namespace": self.namespace,
            "verified": self.verified,
            "pinned": self.pinned,
            "digest": self.digest,
            "signer": self.signer,
            "message": self.message,
        }

    def lines(self) -> list[str]:
        if not self.verified:
            return [
                f"refused: {self.image} would not be admitted in {self.namespace} (tenant {self.tenant})",
                *self.message.splitlines(),
            ]
        return [
            f"verified: {self.image} is signed by {self.signer or 'a trusted signer'}, "
            f"a signer tenant {self.tenant} trusts",
            f"  pinned to: {self.pinned}",
            f"  digest:    {self.digest}",
            "a TrainingJob naming it is admitted with that digest (nothing was created)",
        ]

    @property
    def exit(self) -> Exit:
        return Exit.OK if self.verified else Exit.NO


def verification(
    image: str, tenant: str, namespace: str, stored: Obj | None, warnings: Sequence[str], refusal: str = ""
) -> Verification:
    """The dry-run create's outcome: the stored object's pinned image and the webhook's warning
    naming the signer, or the refusal's message."""
    if stored is None:
        return Verification(image, tenant, namespace, False, message=refusal)
    pinned = str((stored.get("spec") or {}).get("image", ""))
    signer = next((found[1] for w in warnings if (found := parse_verified_warning(w))), None)
    return Verification(image, tenant, namespace, True, pinned, _digest_of(pinned), signer)


def minimal_job(name: str, tenant: str, image: str) -> dict[str, Any]:
    """The smallest TrainingJob admission judges: the image under the tenant, no GPUs (so quota
    plays no part), no integrity sidecar."""
    return {
        "apiVersion": "trainguard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "tenant": tenant,
            "image": image,
            "replicas": 1,
            "resources": {"gpusPerReplica": 0},
            "integrity": {"mode": "Off"},
        },
    }


# --------------------------------------------------------------------------- events


def _event_time(event: Obj) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


_CONNECT = re.compile(r"^(\S+) was allowed pods/")


def event_rows(job: TrainingJob, events: Iterable[Obj], *, pods: bool = False) -> list[dict[str, Any]]:
    """The job's audit trail, oldest first: its creation (by its recorded owner), the Events about
    it, its Kueue Workload and (with `pods`) its pods; who is the user where the record names one,
    else the component that reported it."""
    workload = job.status.queue.workload if job.status.queue else None
    pod_name = re.compile(rf"^{re.escape(job.name)}-\d+-a\d+$")
    rows: list[dict[str, Any]] = []
    if job.metadata.creation_timestamp:
        owner = job.spec.owner.user if job.spec.owner else "unknown"
        rows.append(
            {
                "time": job.metadata.creation_timestamp,
                "type": "Normal",
                "reason": "Created",
                "object": f"TrainingJob/{job.name}",
                "who": owner,
                "count": 1,
                "message": f"created by {owner} (recorded by admission as spec.owner)",
            }
        )
    for event in events:
        involved = event.get("involvedObject") or {}
        kind, obj_name = involved.get("kind"), involved.get("name", "")
        uid = involved.get("uid")
        mine = (kind == "TrainingJob" and obj_name == job.name and (not uid or uid == job.metadata.uid)) or (
            kind == "Workload" and workload is not None and obj_name == workload
        )
        if pods and kind == "Pod" and pod_name.match(obj_name):
            mine = True
        if not mine:
            continue
        message = str(event.get("message", ""))
        connect = _CONNECT.match(message)
        source = event.get("source") or {}
        who = (
            connect.group(1)
            if connect
            else event.get("reportingComponent")
            or source.get("component")
            or event.get("reportingController")
        )
        rows.append(
            {
                "time": _event_time(event),
                "type": event.get("type", ""),
                "reason": event.get("reason", ""),
                "object": f"{kind}/{obj_name}",
                "who": who or "-",
                "count": int(event.get("count") or 1),
                "message": message,
                "_order": _resource_version(event),
            }
        )
    if job.metadata.deletion_timestamp:
        rows.append(
            {
                "time": job.metadata.deletion_timestamp,
                "type": "Normal",
                "reason": "Deleting",
                "object": f"TrainingJob/{job.name}",
                "who": "-",
                "count": 1,
                "message": "the job is being deleted",
            }
        )
    # Times are to the second: within one, the order the API server stored them in.
    rows.sort(key=lambda r: (r["time"], r.get("_order", 0)))
    return [{k: v for k, v in r.items() if k != "_order"} for r in rows]


def _resource_version(event: Obj) -> int:
    version = str((event.get("metadata") or {}).get("resourceVersion") or "0")
    return int(version) if version.isdigit() else 0


def events_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return table(
        ["TIME", "TYPE", "REASON", "OBJECT", "WHO", "MESSAGE"],
        [
            [
                r["time"],
                r["type"],
                r["reason"],
                r["object"],
                r["who"],
                r["message"] + (f" (x{r['count']})" if r["count"] > 1 else ""),
            ]
            for r in rows
        ],
    )


# --------------------------------------------------------------------------- refusals and tables


def forbidden_line(server_message: str, identity: str, groups: Sequence[str] = ()) -> str:
    """One line for a caller the API server refused: what, as whom, and what to ask for."""
    said = server_message.rstrip(".")
    ask = (
        "ask your tenant's admins or the platform team to add you (or your group) to the tenant's members, "
        "or use -n with one of your tenant's namespaces"
    )
    if "clusterqueues" in said or "cohorts" in said:
        ask = "ask the platform team for the trainguard-quota-viewer role (the chart's quotaViewer.groups)"
    elif "at the cluster scope" in said:
        ask = "drop -A and name one of your tenant's namespaces with -n"
    # The API server names the user; add what it leaves out (the groups acted as).
    who = [] if f'User "{identity}"' in said else [identity]
    who += [f"groups {', '.join(groups)}"] if groups else []
    acting = f" (as {', '.join(who)})" if who else ""
    return f"forbidden: {said}{acting}; {ask}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """kubectl-style columns: left aligned, three spaces apart, the last column unpadded."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "   ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)) + "   " + row[-1]
        for row in cells
    ]


# Colour per word of the human output (applied by the I/O module on a terminal only).
COLOURS: dict[str, str] = {
    "True": "green",
    "Running": "green",
    "Succeeded": "green",
    "verified:": "green",
    "Failed": "red",
    "NotAdmitted": "red",
    "IntegrityViolation": "red",
    "refused:": "red",
    "forbidden:": "red",
    "Warning": "yellow",
    "Queued": "yellow",
    "Preempted": "yellow",
}
