"""The operator's integrity endpoint: sidecars fetch their job's key, then POST signed reports.

Keys. Each job's key is a Secret in the operator's own namespace (`integrity-key-<job uid>`),
which no tenant role reaches. A sidecar gets it at start from `POST /keys/{namespace}/{name}`,
showing its projected ServiceAccount token: the TokenReview must find it valid for the
`trainguard.dev/integrity` audience, of the job's ServiceAccount, and bound to a pod that exists
and that trainguard made for this job. Each pod gets the key once: a second request for the same
pod is refused and recorded (Warning Event `IntegrityKeyRequestedTwice`), since only someone
who minted a token for that pod could make it. Every delivery is a Normal Event
(`IntegrityKeyDelivered`) and every refusal a Warning (`IntegrityKeyRefused`), both counted in
`trainguard_integrity_key_requests_total{outcome}`. The key goes when its job goes (a
TrainingJob DELETED event), and keys left by jobs deleted while no operator ran are swept at start.

Reports. A report counts only if it is signed with the job's key, so neither the trainer nor
anyone who can act in the tenant's namespace can forge one, and only once: it names the job's uid
and attempt and its place in its sidecar's sequence, so a replayed, reordered or transplanted
report is refused (HTTP 409, `trainguard_integrity_violations_total{kind="StaleReport"}`). The
verdicts it leads to are counted (`trainguard_integrity_violations_total`,
`trainguard_integrity_verified_steps_total`) and handed to the job's reconcile daemon, the only
writer of job status: a violation at once, verified steps at most every few seconds. In Enforce
mode the planner then stops the job.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainguard import metrics
from trainguard.api.conditions import format_time
from trainguard.api.constants import (
    GROUP,
    LABEL_COMPONENT,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    VERSION,
)
from trainguard.api.models import TrainingJob
from trainguard.context import KeyDelivery, OperatorContext, context_of
from trainguard.integrity.reports import ForgedReport, StaleReport, StepEnd, open_report
from trainguard.kube import client as kube
from trainguard.policy.pods import job_uid_of, orphans
from trainguard.workload.builders import (
    INTEGRITY_TOKEN_AUDIENCE,
    integrity_secret_name,
    service_account_name,
)

log = logging.getLogger("trainguard.integrity")
RUNNER = "integrity_endpoint"  # where the running endpoint is kept in the memo
MAX_REPORT_BYTES = 64 * 1024
COMPONENT = "trainguard-integrity"

# What a TokenReview says of a pod-bound ServiceAccount token.
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
# On a key's Secret, one annotation per pod that received the key (kept across operator restarts).
DELIVERED_PREFIX = "delivered.trainguard.dev/"
KEY_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}=integrity-key"

DELIVERED, REFUSED, REQUESTED_TWICE = (
    "IntegrityKeyDelivered",
    "IntegrityKeyRefused",
    "IntegrityKeyRequestedTwice",
)


# --------------------------------------------------------------------------- pure: who is asking


class ReviewedUser(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    username: str = ""
    uid: str = ""
    groups: list[str] = Field(default_factory=list)
    extra: dict[str, list[str]] = Field(default_factory=dict)


class TokenReviewStatus(BaseModel):
    """`status` of an authentication.k8s.io/v1 TokenReview, as the API server answers it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    authenticated: bool = False
    user: ReviewedUser = Field(default_factory=ReviewedUser)
    audiences: list[str] = Field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class Refusal:
    status: int  # the HTTP status answered
    outcome: str  # the metric's label
    message: str  # for the Event and the answer

    @property
    def reason(self) -> str:
        return REQUESTED_TWICE if self.outcome == "requested_twice" else REFUSED


@dataclass(frozen=True)
class PodIdentity:
    """The pod a valid token is bound to, and the token's own id."""

    pod: str
    pod_uid: str
    credential: str


def bearer_token(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def identify(review: TokenReviewStatus, namespace: str, account: str) -> PodIdentity | Refusal:
    """The pod a key request comes from, if its token proves it: valid, for the key endpoint's
    audience, of the job's ServiceAccount `account`, bound to a pod."""
    if not review.authenticated:
        return Refusal(
            401, "unauthenticated", f"the token is not valid: {review.error or 'not authenticated'}"
        )
    if INTEGRITY_TOKEN_AUDIENCE not in review.audiences:
        return Refusal(403, "wrong_audience", f"the token is not for the audience {INTEGRITY_TOKEN_AUDIENCE}")
    expected = f"system:serviceaccount:{namespace}:{account}"
    if review.user.username != expected:
        return Refusal(
            403,
            "wrong_account",
            f"the token is {review.user.username}'s, not the job's ServiceAccount {account}'s",
        )
    pods, uids = review.user.extra.get(POD_NAME, []), review.user.extra.get(POD_UID, [])
    if len(pods) != 1 or len(uids) != 1:
        return Refusal(
            403,
            "not_pod_bound",
            f"the token of {account} is bound to no pod; only the job's sidecars, with the token "
            "their pod is given, may ask for the key",
        )
    credential = next(iter(review.user.extra.get(CREDENTIAL_ID, [])), "")
    return PodIdentity(pods[0], uids[0], credential)


def check_pod(pod: Mapping[str, Any] | None, who: PodIdentity, job: TrainingJob) -> Refusal | None:
    """None when `pod` is the very pod the token is bound to and trainguard made it for `job`."""
    if pod is None or (pod.get("metadata") or {}).get("uid") != who.pod_uid:
        return Refusal(403, "not_job_pod", f"pod {who.pod} (uid {who.pod_uid}) does not exist")
    account = (pod.get("spec") or {}).get("serviceAccountName")
    if job_uid_of(pod) != job.metadata.uid or account != service_account_name(job):
        return Refusal(
            403, "not_job_pod", f"pod {who.pod} is not a pod trainguard made for TrainingJob {job.name}"
        )
    return None


def secret_key(secret: Mapping[str, Any] | None) -> bytes | None:
    value = ((secret or {}).get("data") or {}).get("key")
    return base64.b64decode(value) if value else None


def recorded_deliveries(secret: Mapping[str, Any] | None) -> dict[str, KeyDelivery]:
    """pod uid -> delivery, from the key Secret's annotations (unreadable ones are skipped)."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    recorded: dict[str, KeyDelivery] = {}
    for name, value in annotations.items():
        if name.startswith(DELIVERED_PREFIX):
            try:
                recorded[name.removeprefix(DELIVERED_PREFIX)] = KeyDelivery.model_validate_json(value)
            except ValidationError:
                continue
    return recorded


def delivery_annotations(
    pod_uid: str, delivery: KeyDelivery, recorded: Iterable[str], live: Iterable[str]
) -> dict[str, str | None]:
    """The patch of the key Secret's annotations: this delivery in, pods no longer alive out."""
    alive = set(live)
    patch: dict[str, str | None] = {f"{DELIVERED_PREFIX}{uid}": None for uid in recorded if uid not in alive}
    patch[f"{DELIVERED_PREFIX}{pod_uid}"] = delivery.model_dump_json()
    return patch


def requested_twice(who: PodIdentity, earlier: KeyDelivery, now: KeyDelivery, account: str) -> Refusal:
    def token(credential: str) -> str:
        return f"token {credential}" if credential else "a token"

    return Refusal(
        409,
        "requested_twice",
        f"pod {who.pod} (uid {who.pod_uid}) asked for the job's integrity key again: it was delivered "
        f"at {earlier.time} to {token(earlier.credential)}; the request at {now.time} with "
        f"{token(now.credential)} is refused. A pod's sidecar asks once: someone else may hold a token "
        f"of {account} for this pod (look for serviceaccounts/token requests in the audit log)",
    )


def orphaned_keys(secrets: Iterable[Mapping[str, Any]], live_job_uids: Iterable[str]) -> list[str]:
    """Names of the key Secrets whose job no longer exists."""
    return [s["metadata"]["name"] for s in orphans(secrets, live_job_uids)]


# --------------------------------------------------------------------------- the endpoint


@kopf.on.startup()
async def start_integrity_endpoint(memo: kopf.Memo, **_: Any) -> None:
    context = context_of(memo)
    if not context.settings.integrity_port:
        return
    app = web.Application(client_max_size=MAX_REPORT_BYTES)
    app["context"] = context
    app.add_routes(
        [web.post("/keys/{namespace}/{name}", deliver_key), web.post("/{namespace}/{name}", receive)]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, context.settings.integrity_listen, context.settings.integrity_port).start()
    memo[RUNNER] = runner


@kopf.on.cleanup()
async def stop_integrity_endpoint(memo: kopf.Memo, **_: Any) -> None:
    runner = memo.get(RUNNER)
    if isinstance(runner, web.AppRunner):
        await runner.cleanup()


async def deliver_key(request: web.Request) -> web.Response:
    """The job's key, to one of the job's own pods, once."""
    context: OperatorContext = request.app["context"]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    raw = await kube.get_job(namespace, name)
    if raw is None:
        metrics.integrity_key_request("no_job")
        return web.Response(status=404, text=f"no TrainingJob {namespace}/{name}")
    job = TrainingJob.model_validate(raw)
    try:
        result = await _key_for(context, job, bearer_token(request.headers.get("Authorization", "")))
    except kube.KubeError as exc:
        log.warning("no key for %s/%s: %s", namespace, name, exc)
        metrics.integrity_key_request("error")
        return web.Response(status=503, text="the operator cannot check the request now; try again")
    if isinstance(result, Refusal):
        log.warning("refused the key of %s/%s: %s", namespace, name, result.message)
        metrics.integrity_key_request(result.outcome)
        await _event(raw, "Warning", result.reason, result.message)
        return web.Response(status=result.status, text=result.message)
    key, who = result
    metrics.integrity_key_request("delivered")
    credential = f" (token {who.credential})" if who.credential else ""
    await _event(raw, "Normal", DELIVERED, f"delivered the integrity key to pod {who.pod}{credential}")
    return web.json_response({"key": base64.b64encode(key).decode()})


async def _key_for(
    context: OperatorContext, job: TrainingJob, token: str
) -> tuple[bytes, PodIdentity] | Refusal:
    if not token:
        return Refusal(401, "no_token", "no bearer token: show the pod's projected ServiceAccount token")
    account = service_account_name(job)
    review = TokenReviewStatus.model_validate(await kube.review_token(token, [INTEGRITY_TOKEN_AUDIENCE]))
    who = identify(review, job.namespace, account)
    if isinstance(who, Refusal):
        return who
    refusal = check_pod(await kube.get_pod(job.namespace, who.pod), who, job)
    if refusal is not None:
        return refusal
    operator_namespace, secret_name = (
        context.settings.operator_namespace,
        integrity_secret_name(job.metadata.uid),
    )
    secret = await kube.get_secret(operator_namespace, secret_name)
    key = secret_key(secret)
    if key is None:
        return Refusal(404, "no_key", f"TrainingJob {job.name} has no integrity key (yet)")
    recorded = recorded_deliveries(secret)
    delivery = KeyDelivery(
        pod=who.pod, time=format_time(datetime.datetime.now(datetime.UTC)), credential=who.credential
    )
    deliveries, uid = context.integrity.deliveries, job.metadata.uid
    # Checked and recorded with no await in between: two requests for one pod cannot both pass.
    earlier = deliveries.claim(uid, who.pod_uid, delivery, recorded)
    if earlier is not None:
        return requested_twice(who, earlier, delivery, account)
    try:
        live = await kube.list_pod_uids(job.namespace, f"{LABEL_JOB_UID}={uid}")
        patch = delivery_annotations(who.pod_uid, delivery, recorded, live)
        await kube.annotate_secret(operator_namespace, secret_name, patch)
    except BaseException:
        deliveries.release(uid, who.pod_uid)  # not delivered: the pod may ask again
        raise
    deliveries.keep_only(uid, live | {who.pod_uid})
    return key, who


async def _event(raw: dict[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        await kube.post_event(raw, type_, reason, message, component=COMPONENT)
    except kube.KubeError as exc:
        log.warning("could not post %s for %s: %s", reason, raw["metadata"]["name"], exc)


async def receive(request: web.Request) -> web.Response:
    context: OperatorContext = request.app["context"]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        signed = json.loads(await request.read())
    except ValueError:
        return web.Response(status=400, text="not JSON")
    raw = await kube.get_job(namespace, name)
    key = None
    if raw is not None:
        secret = integrity_secret_name(raw["metadata"]["uid"])
        key = secret_key(await kube.get_secret(context.settings.operator_namespace, secret))
    if key is None or raw is None:
        return web.Response(status=404, text="no such job, or it has no integrity key")
    try:
        report = open_report(key, signed)
    except ForgedReport as exc:
        log.warning("refused a report for %s/%s: %s", namespace, name, exc)
        metrics.integrity_violation("unknown", "ForgedReport")
        return web.Response(status=403, text=str(exc))
    job = TrainingJob.model_validate(raw)
    job_key = (namespace, name)
    tracker = context.integrity.tracker(job_key, job.metadata.uid, job.spec.replicas)
    try:
        tracker.admit(report, job.metadata.uid, job.attempt)
    except StaleReport as exc:
        log.warning("refused a report for %s/%s: %s", namespace, name, exc)
        metrics.integrity_violation(job.spec.tenant, "StaleReport")
        return web.Response(status=409, text=str(exc))
    now = datetime.datetime.now(datetime.UTC)
    before = context.integrity.last_heard(job_key).get(report.replica)
    gap = (now - before).total_seconds() if before is not None else None
    fingerprint_seconds = report.seconds if isinstance(report, StepEnd) else None
    metrics.integrity_report(job.spec.tenant, report.kind, gap, fingerprint_seconds)
    context.integrity.heard(job_key, report.replica, now)
    verdicts = tracker.apply(report)
    for verdict in verdicts:
        if verdict.verified:
            metrics.integrity_verified(job.spec.tenant)
        else:
            metrics.integrity_violation(job.spec.tenant, verdict.kind)
    if verdicts:  # a violation at once; verified steps at most every few seconds, never left behind
        context.wakeups.wake_in(job_key, context.integrity.put(job_key, verdicts))
    return web.Response(status=202)


# --------------------------------------------------------------------------- the keys' lifetime


def _deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event(GROUP, VERSION, "trainingjobs", when=_deleted)
async def delete_key_of_deleted_job(uid: str, memo: kopf.Memo, **_: Any) -> None:
    """A job's key cannot be owned by the job (owner references do not cross namespaces): it
    goes when the job is gone."""
    if not uid:
        return
    context = context_of(memo)
    await kube.delete_secret(context.settings.operator_namespace, integrity_secret_name(uid))
    context.integrity.deliveries.forget(uid)


@kopf.on.startup()
async def sweep_orphaned_keys(memo: kopf.Memo, **_: Any) -> None:
    """Delete the keys of jobs deleted while no operator ran. Secrets are listed before jobs: a
    key listed belongs to a job that existed before the jobs were listed, so a live job's key is
    never taken for an orphan."""
    namespace = context_of(memo).settings.operator_namespace
    try:
        secrets = await kube.list_secrets(namespace, KEY_SELECTOR)
        live = [job["metadata"]["uid"] for job in await kube.list_jobs()]
        for name in orphaned_keys(secrets, live):
            await kube.delete_secret(namespace, name)
            log.info("deleted %s/%s: its TrainingJob no longer exists", namespace, name)
    except kube.KubeError as exc:  # a sweep is housekeeping: the operator runs without it
        log.warning("could not sweep the keys of deleted jobs: %s", exc)
