"""Admission webhooks: signed images pinned to digests, who may do what to a job, the pod guard,
and the tenant namespaces' labels.

Thin: every rule lives in `policy/` and `signing/`; these handlers gather the objects the rules
need (the Tenant, the namespace's tenant and jobs, the pod's job), run them, and turn errors into
one denial that lists every problem with its field and fix. A denial also posts an Event and
counts `trainguard_admission_denied_total{reason}`.

The webhooks fail closed, and their configurations outlive the operator: a stopping operator
leaves them in place, so while none runs, TrainingJob creates and guarded pod operations are
refused ("failed calling webhook") instead of admitted unchecked.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import json
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from trainguard import metrics
from trainguard.admission import configurations
from trainguard.admission.decisions import decision_of
from trainguard.api.constants import (
    ANNOTATION_ADMITTED_IMAGE,
    API_VERSION,
    FINALIZER,
    KUEUE_GROUP,
    KUEUE_VERSION,
    LABEL_TENANT,
    TENANT_NAMESPACE_LABEL,
)
from trainguard.api.models import Debugging, IntegrityMode, Tenant, TrainingJob
from trainguard.context import (
    JobNames,
    OperatorContext,
    TenantNamespaces,
    Tenants,
    context_of,
    find_tenant,
    jobs_index,
    tenant_namespaces_index,
    tenants_index,
)
from trainguard.kube import client as kube
from trainguard.policy.access import (
    CLUSTER_ADMINS,
    Identity,
    Refusal,
    collaborator_errors,
    connect_refusal,
    delete_refusal,
    is_operator,
    job_pod_refusal,
    kueue_refusal,
    may_clean_up,
    owner_errors,
    token_refusal,
    update_errors,
)
from trainguard.policy.errors import FieldError, format_errors, schema_errors
from trainguard.policy.images import image_error, verified_warning
from trainguard.policy.namespaces import protected_label_changes
from trainguard.policy.pods import (
    NamespaceView,
    images,
    is_job_pod,
    only_metadata_changed,
    validate_foreign_pod,
)
from trainguard.policy.trainingjob import validate_training_job
from trainguard.settings import TLS_CERT_FILE, TLS_KEY_FILE, Role, WebhookConfigurations
from trainguard.signing.verifier import VerificationFailed, VerifiedImage
from trainguard.tls import certs

log = logging.getLogger("trainguard.admission")

# The TrainingJob webhooks trainguard serves itself (`serve_job_review`).
_JOB_WEBHOOKS = frozenset({configurations.ADMIT_JOB, configurations.VALIDATE_JOB})

# The finalizer an admission-only process tells kopf about: no object ever carries it.
ADMISSION_ONLY_FINALIZER = "admission-only.trainguard.dev/never-set"


# --------------------------------------------------------------------------- server and configurations


class GuardedWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, plus the reviews kopf's handlers cannot see: `pods/exec|attach|
    portforward` CONNECT (their object is PodExecOptions; the pod is only named in the request) and
    `serviceaccounts/token` (a TokenRequest; the account is only named in the request)."""

    def __init__(
        self,
        context: OperatorContext,
        tenants: Tenants,
        jobs: JobNames,
        tenant_namespaces: TenantNamespaces,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.operator_context = context  # not `context`: kopf's server keeps its SSL context there
        self.tenants = tenants
        self.jobs = jobs
        self.tenant_namespaces = tenant_namespaces

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def guarded(request: Any, **kwargs: Any) -> Any:
            inner = request.get("request") or {}
            if inner.get("operation") == "CONNECT":
                return await review_connect(self.operator_context, self.tenants, request)
            if (inner.get("resource") or {}).get("resource") == "serviceaccounts" and inner.get(
                "subResource"
            ) == "token":
                return await review_token_request(self.operator_context, self.jobs, request)
            webhook = str(kwargs.get("webhook") or "")
            if webhook in _JOB_WEBHOOKS:
                return await serve_job_review(self.operator_context, self.tenants, webhook, request)
            return await fn(request, **kwargs)

        async for client_config in super().__call__(_measured(guarded, self.tenant_namespaces)):
            yield client_config


def _measured(fn: Any, tenants_of_namespaces: TenantNamespaces) -> Any:
    """`fn`, every review counted by outcome and timed (`trainguard_admission_reviews_total`,
    `trainguard_admission_duration_seconds`): the API server waits for each one."""

    async def measured(request: Any, **kwargs: Any) -> Any:
        inner = request.get("request") or {}
        resource = str((inner.get("resource") or {}).get("resource", ""))
        operation, outcome, start = str(inner.get("operation", "")), "error", time.perf_counter()
        reasons: list[str] = []
        _DENIAL_REASONS.set(reasons)  # one list object, shared by any context copy kopf makes
        answer: Any = {}
        try:
            answer = await fn(request, **kwargs)
            outcome = _outcome(answer)
            return answer
        finally:
            metrics.admission_review(resource, operation, outcome, time.perf_counter() - start)
            _log_decision(inner, answer, reasons, tenants_of_namespaces)

    return measured


# The refusal reasons of the review being answered: `deny` and `_refuse` add theirs.
_DENIAL_REASONS: contextvars.ContextVar[list[str]] = contextvars.ContextVar("denial_reasons")


def _note_reasons(reasons: Iterable[str]) -> None:
    with contextlib.suppress(LookupError):
        _DENIAL_REASONS.get().extend(reasons)


def _log_decision(
    request: Mapping[str, Any],
    answer: Mapping[str, Any],
    reasons: list[str],
    tenants_of_namespaces: TenantNamespaces,
) -> None:
    """One audit line per decision (fields as JSON keys with `--log-format json`). The operator's
    own and Kueue's routine requests, allowed, are logged at DEBUG only: they are most reviews."""
    namespace = str(request.get("namespace") or "")
    tenant = next(iter(tenants_of_namespaces.get(namespace, ())), "") if namespace else ""
    record = decision_of(request, answer or {}, reasons=reasons, tenant_of_namespace=tenant)
    routine = record.decision == "allowed" and record.user.startswith("system:")
    level = logging.DEBUG if routine else (logging.INFO if record.decision == "allowed" else logging.WARNING)
    log.log(level, "%s", record.line(), extra=record.fields())


def _outcome(answer: Mapping[str, Any]) -> str:
    """allowed, denied (a rule refused), or error (a handler failed: kopf answers 500)."""
    payload = answer.get("response") or {}
    if payload.get("allowed"):
        return "allowed"
    code = (payload.get("status") or {}).get("code") or 500
    return "error" if int(code) >= 500 else "denied"


@kopf.on.startup()
async def start_admission(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    context = context_of(memo)
    config = context.settings
    if not config.webhook_port:
        return
    settings.admission.managed = None  # kopf writes no configurations: trainguard or its chart does
    if config.role is Role.ADMISSION:
        # No daemon here requires a finalizer, so kopf would remove its configured one from every
        # job it sees: point it at a name nobody sets, and the reconciler's stays untouched.
        settings.persistence.finalizer = ADMISSION_ONLY_FINALIZER
    server = functools.partial(
        GuardedWebhookServer,
        context,
        tenants_index(kwargs),
        jobs_index(kwargs),
        tenant_namespaces_index(kwargs),
        addr=config.webhook_listen,
        port=config.webhook_port,
        host=config.webhook_host,
    )
    if config.webhooks is WebhookConfigurations.CHART:
        # The chart wrote the configurations with the CA of this certificate (its generated
        # Secret, or cert-manager's): serve with it, write nothing.
        assert config.webhook_cert_dir is not None  # Settings refuses chart mode without it
        settings.admission.server = server(
            certfile=str(config.webhook_cert_dir / TLS_CERT_FILE),
            pkeyfile=str(config.webhook_cert_dir / TLS_KEY_FILE),
        )
        return
    folder = config.webhook_cert_dir or Path(tempfile.mkdtemp(prefix="trainguard-webhook-"))
    ca = certs.ensure_ca(folder, "webhook-ca")
    serving = certs.ensure_leaf(
        folder, "webhook", ca, common_name="trainguard-webhook", server_names=(config.webhook_host,)
    )
    settings.admission.server = server(
        certfile=str(serving.cert), pkeyfile=str(serving.key), cafile=str(ca.cert)
    )
    bundle = base64.b64encode(ca.cert.read_bytes()).decode()
    if config.webhook_service:  # in a cluster: the API server reaches the operator through its Service
        namespace, _sep, name = config.webhook_service.partition("/")
        endpoint = configurations.Endpoint(
            bundle, service_namespace=namespace, service_name=name, service_port=config.webhook_port
        )
    else:
        endpoint = configurations.Endpoint(
            bundle, url_base=f"https://{config.webhook_host}:{config.webhook_port}"
        )
    trusted = configurations.Trusted(config.operator_users, config.kueue_users)
    for manifest in configurations.build_webhook_configurations(
        config.webhook_config_name, endpoint, trusted
    ):
        await kube.apply_webhook_configuration(manifest)


# --------------------------------------------------------------------------- shared steps


async def deny(obj: Mapping[str, Any], errors: list[FieldError], *, dry_run: bool = False) -> None:
    """Count, record and refuse: one denial listing every problem. A dry run's denial is not
    recorded as an Event (the webhooks declare no side effects; nothing was attempted)."""
    meta = obj.get("metadata") or {}
    kind, name = obj.get("kind", "object"), meta.get("name") or meta.get("generateName") or "?"
    message = format_errors(kind, name, errors)
    for error in errors:
        metrics.admission_denied(error.reason)
    _note_reasons(error.reason for error in errors)
    if dry_run:
        raise kopf.AdmissionError(message, code=403)
    event_target = {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": kind,
        "metadata": {**meta, "name": name},
    }
    try:
        await kube.post_event(
            event_target, "Warning", "AdmissionDenied", message, component="trainguard-admission"
        )
    except kube.KubeError as exc:  # the denial stands even if the event cannot be written
        log.warning("could not record the denial as an event: %s", exc)
    raise kopf.AdmissionError(message, code=403)


async def _verify(context: OperatorContext, image: str, tenant: Tenant, namespace: str) -> VerifiedImage:
    """`context.images.verify`, counted by outcome and timed (`trainguard_image_verification*`)."""
    start = time.perf_counter()
    try:
        verified = await context.images.verify(image, tenant, namespace)
    except VerificationFailed as failure:
        metrics.image_verification(failure.reason, False, time.perf_counter() - start)
        raise
    except ValueError:
        metrics.image_verification("InvalidImageReference", False, time.perf_counter() - start)
        raise
    metrics.image_verification("Verified", verified.cached, time.perf_counter() - start)
    return verified


async def _verified_or_refused(
    context: OperatorContext, path: str, image: str, tenant: Tenant, namespace: str
) -> tuple[VerifiedImage | None, list[FieldError]]:
    """`image` (at `path` of an object in `namespace`) verified under the tenant's trust, read with
    the tenant's registry credentials; or its refusal."""
    try:
        return await _verify(context, image, tenant, namespace), []
    except VerificationFailed as failure:
        return None, [image_error(path, image, tenant, failure.reason, str(failure))]
    except ValueError as exc:
        return None, [image_error(path, image, tenant, "InvalidImageReference", str(exc))]


async def _image_errors(
    context: OperatorContext, path: str, image: str, tenant: Tenant, namespace: str
) -> list[FieldError]:
    """The refusal of `image` at `path` if it does not verify (see `_verified_or_refused`)."""
    return (await _verified_or_refused(context, path, image, tenant, namespace))[1]


# --------------------------------------------------------------------------- TrainingJobs


# TrainingJob reviews are served directly from the review (`serve_job_review`), not through kopf's
# admission handlers: every `kubectl apply` of a job waits on both, and kopf's machinery (handler
# dispatch, the body and patch objects, diffing a patch into JSON Patch) was a third of the
# operator's CPU per create. The pod guard and the others, less hot, stay kopf handlers.


async def admit_job_create(
    context: OperatorContext, tenants: Tenants, request: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """A create, decided whole (mutating webhook `admit-trainingjob`): record who creates the job
    (from the request, never from the body), settle whether it may be debugged, check every rule,
    verify the image and pin its tag to the verified digest, and stamp the pinned image on the job
    (ANNOTATION_ADMITTED_IMAGE) with the reconciler's finalizer.

    Returns the JSON Patch and the warnings (a dry run's: the signer and digest). A job that breaks
    a rule, or a body the models cannot read, is left unstamped: `validate-trainingjob` then runs
    on the final object and refuses it with every reason (configurations.FINAL_OBJECT_CHANGED)."""
    body = request.get("object") or {}
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else None
    meta: dict[str, Any] = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
    who = Identity.from_userinfo(request.get("userInfo") or {})
    ops: list[dict[str, Any]] = [] if spec is not None else [{"op": "add", "path": "/spec", "value": {}}]
    spec = dict(spec or {})
    # "add" replaces a member that exists: an owner written in the body is overwritten.
    spec["owner"] = who.owner().to_api()
    ops.append({"op": "add", "path": "/spec/owner", "value": spec["owner"]})
    if "debugging" not in spec:
        enforce = (spec.get("integrity") or {}).get("mode") == IntegrityMode.ENFORCE.value
        spec["debugging"] = (Debugging.DISALLOWED if enforce else Debugging.ALLOWED).value
        ops.append({"op": "add", "path": "/spec/debugging", "value": spec["debugging"]})
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else None
    unstamp = (
        [{"op": "remove", "path": f"/metadata/annotations/{_pointer(ANNOTATION_ADMITTED_IMAGE)}"}]
        if annotations and ANNOTATION_ADMITTED_IMAGE in annotations
        else []
    )
    namespace = str(request.get("namespace") or meta.get("namespace") or "")
    raw = {**body, "metadata": {**meta, "namespace": namespace}, "spec": spec}
    try:
        job = TrainingJob.model_validate(raw)
    except ValidationError:
        return ops + unstamp, []  # the validating webhook runs (no stamp) and lists the problems
    tenant = await find_tenant(tenants, job.spec.tenant)
    errors, verified = await _create_errors(context, job, tenant, who)
    if verified is not None and verified.pinned != job.spec.image:
        ops.append({"op": "replace", "path": "/spec/image", "value": verified.pinned})
    if errors or verified is None:
        # Refused, but not here: left unstamped, the create goes on to the API server's own schema
        # and CEL checks (which run after mutation), then to `validate-trainingjob`, which refuses
        # it with every reason. A researcher reads the schema's message first, as without this
        # webhook, and one refusal, recorded once.
        return ops + unstamp, []
    if annotations is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    key = _pointer(ANNOTATION_ADMITTED_IMAGE)
    ops.append({"op": "add", "path": f"/metadata/annotations/{key}", "value": verified.pinned})
    # The reconciler's finalizer, which kopf would otherwise add with a patch of its own (and a
    # watch event to wait for) before it may start the job's daemon: the job is born with it.
    finalizers = meta.get("finalizers")
    if not isinstance(finalizers, list):
        ops.append({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
    elif FINALIZER not in finalizers:
        ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
    warnings = []
    if request.get("dryRun"):  # what `kubectl trainguard verify-image` and --dry-run=server show
        warnings.append(verified_warning(job.spec.tenant, verified.signer, verified.pinned))
    return ops, warnings


def _pointer(key: str) -> str:
    """`key` as one JSON Pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


async def _create_errors(
    context: OperatorContext, job: TrainingJob, tenant: Tenant | None, who: Identity
) -> tuple[list[FieldError], VerifiedImage | None]:
    """Every rule a new job breaks, and its image's verification when it passed."""
    # Cluster admins may create jobs under any tenant (they can do anything else too).
    member = "" if CLUSTER_ADMINS in who.groups else who.user
    errors = validate_training_job(job, tenant, member, who.groups)
    errors += owner_errors(job, who)
    if tenant is None:
        return errors, None
    errors += collaborator_errors(job, tenant)
    verified, refused = await _verified_or_refused(
        context, "spec.image", job.spec.image, tenant, job.namespace
    )
    return errors + refused, verified


async def check_job(context: OperatorContext, tenants: Tenants, request: Mapping[str, Any]) -> None:
    """The validating webhook `validate-trainingjob`, on the final object: every rule at once
    (raises kopf.AdmissionError listing them). It sees every update and delete, and a create only
    when the final object is not what `admit_job_create` admitted (configurations.FINAL_OBJECT_CHANGED): then
    the image must still be a pinned, verified digest (from the verdict cache: no registry call
    within seconds of the pinning)."""
    operation = str(request.get("operation") or "")
    old = request.get("oldObject")
    who = Identity.from_userinfo(request.get("userInfo") or {})
    raw = dict((request.get("object") if operation != "DELETE" or old is None else old) or {})
    target = {**raw, "apiVersion": API_VERSION, "kind": "TrainingJob"}
    try:
        job = TrainingJob.model_validate(raw)
    except ValidationError as exc:
        if operation == "DELETE":
            return  # a body trainguard cannot read is no job of trainguard's to protect
        await deny(target, schema_errors(exc))
        return
    tenant = await find_tenant(tenants, job.spec.tenant)
    operators = context.settings.operator_users
    if operation == "DELETE":
        refusal = None if may_clean_up(who, operators) else delete_refusal(job, tenant, who)
        if refusal is not None:
            await deny(target, [refusal])
        return
    if operation == "UPDATE" and old is not None:
        if is_operator(who, operators):
            return  # status is a subresource: the operator only adds and removes its finalizer here
        errors = update_errors(old, raw, job, tenant, who)
        if errors:
            await deny(target, errors)
        return
    errors, verified = await _create_errors(context, job, tenant, who)
    if verified is not None and tenant is not None and "@" not in job.spec.image:
        # Verified, yet the mutating webhook did not pin it.
        message = f"{job.spec.image} was not pinned to a digest at admission"
        errors.append(image_error("spec.image", job.spec.image, tenant, "NotPinned", message))
    if errors:
        await deny(target, errors, dry_run=bool(request.get("dryRun")))


async def serve_job_review(
    context: OperatorContext, tenants: Tenants, webhook: str, review: Mapping[str, Any]
) -> dict[str, Any]:
    """Answer one AdmissionReview of a TrainingJob for `admit-trainingjob` or `validate-trainingjob`."""
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    try:
        if webhook == configurations.ADMIT_JOB:
            ops, warnings = await admit_job_create(context, tenants, request)
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode("ascii")
            if warnings:
                response["warnings"] = warnings
        else:
            await check_job(context, tenants, request)
    except kopf.AdmissionError as refused:
        response.update(allowed=False, status={"code": refused.code or 403, "message": str(refused)})
    except Exception as exc:  # fail closed, saying so; the traceback goes to the log
        log.exception("admission of a TrainingJob failed")
        message = f"trainguard could not decide ({type(exc).__name__}: {exc}); apply again"
        response.update(allowed=False, status={"code": 500, "message": message})
    return _review(review, response)


# --------------------------------------------------------------------------- the pod guard


def _namespace_view(namespace: str, tenant: Tenant, jobs: JobNames) -> NamespaceView:
    names = list(jobs.get(namespace, ()))
    return NamespaceView(
        shared_claims={s.claim_name: s.name for s in tenant.spec.shared_storage},
        job_claims=frozenset(f"{n}-output" for n in names),
        job_service_accounts=frozenset(f"{n}-runner" for n in names),
    )


async def _guard_pod(
    context: OperatorContext,
    body: kopf.Body,
    old: kopf.Body | None,
    userinfo: Mapping[str, Any],
    operation: str,
    namespace: str | None,
    kwargs: Mapping[str, Any],
) -> None:
    """Every pod operation in a tenant namespace, whoever asks (controllers too): a job's pods are
    the operator's alone; every other pod gets the allowlist."""
    who = Identity.from_userinfo(userinfo)
    operators = context.settings.operator_users
    if not namespace:
        return
    pod = dict(body)
    before = dict(old) if old is not None else None
    if is_job_pod(before or pod) or is_job_pod(pod):
        terminating = bool((before or pod).get("metadata", {}).get("deletionTimestamp"))
        if is_operator(who, operators):
            return
        if operation == "DELETE" and (terminating or may_clean_up(who, operators)):
            return  # garbage collection, namespace deletion, nodes finishing a deletion
        bookkeeping = operation == "UPDATE" and before is not None and only_metadata_changed(before, pod)
        if bookkeeping and may_clean_up(who, operators):
            return  # controllers' and cluster admins' bookkeeping: what runs is unchanged
        await deny(pod, [job_pod_refusal(pod, operation)])
    if operation == "DELETE":
        return
    if operation == "UPDATE" and before is not None and only_metadata_changed(before, pod):
        return  # controllers' bookkeeping (owner references, finalizers): the pod runs as admitted
    tenant = await _tenant_of_namespace(namespace, tenants_index(kwargs), tenant_namespaces_index(kwargs))
    if tenant is None:
        return
    errors = validate_foreign_pod(pod, _namespace_view(namespace, tenant, jobs_index(kwargs)))
    for path, image in images(pod):
        errors += await _image_errors(context, path, image, tenant, namespace)
    if errors:
        await deny({**pod, "apiVersion": "v1", "kind": "Pod"}, errors)


async def _tenant_of_namespace(
    namespace: str, tenants: Tenants, tenant_namespaces: TenantNamespaces
) -> Tenant | None:
    """The tenant a namespace's label names: from the index, or the API server when the index
    has not seen the label yet (the webhook only runs for labelled namespaces)."""
    name = next(iter(tenant_namespaces.get(namespace, ())), None)
    if name is None:
        ns = await kube.get_namespace(namespace)
        name = ((ns or {}).get("metadata", {}).get("labels") or {}).get(LABEL_TENANT)
    return await find_tenant(tenants, name) if name else None


@kopf.on.validate("", "v1", "pods", id=configurations.POD_GUARD, operations=["CREATE", "UPDATE", "DELETE"])
async def guard_pod(
    body: kopf.Body, userinfo: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **kwargs: Any
) -> None:
    operation = str(kwargs.get("operation"))
    await _guard_pod(context_of(memo), body, kwargs.get("old"), userinfo, operation, namespace, kwargs)


@kopf.on.validate(
    "",
    "v1",
    "pods",
    id=configurations.POD_GUARD_EPHEMERAL,
    subresource="ephemeralcontainers",
    operations=["UPDATE"],
)
async def guard_ephemeral_containers(
    body: kopf.Body, userinfo: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **kwargs: Any
) -> None:
    await _guard_pod(context_of(memo), body, kwargs.get("old"), userinfo, "UPDATE", namespace, kwargs)


# --------------------------------------------------------------------------- tenant namespaces


@kopf.on.validate("", "v1", "namespaces", id=configurations.NAMESPACE_GUARD, operations=["UPDATE"])
async def guard_namespace(
    body: kopf.Body, userinfo: Mapping[str, Any], memo: kopf.Memo, **kwargs: Any
) -> None:
    """A tenant namespace's labels (its tenant, Pod Security enforcement) are the operator's."""
    who = Identity.from_userinfo(userinfo)
    old: kopf.Body | None = kwargs.get("old")
    if old is None or is_operator(who, context_of(memo).settings.operator_users):
        return
    old_labels = dict(old.get("metadata", {}).get("labels") or {})
    new_labels = dict(body.get("metadata", {}).get("labels") or {})
    errors = protected_label_changes(old_labels, new_labels, old_labels.get(TENANT_NAMESPACE_LABEL))
    if errors:
        await deny({**dict(body), "apiVersion": "v1", "kind": "Namespace"}, errors)


# --------------------------------------------------------------------------- Kueue's objects


_KUEUE_KINDS = {
    "localqueues": "LocalQueue",
    "workloads": "Workload",
    "clusterqueues": "ClusterQueue",
    "cohorts": "Cohort",
    "resourceflavors": "ResourceFlavor",
}


@kopf.on.validate(KUEUE_GROUP, KUEUE_VERSION, "localqueues", id=configurations.KUEUE_GUARD)
@kopf.on.validate(KUEUE_GROUP, KUEUE_VERSION, "workloads", id=configurations.KUEUE_GUARD)
@kopf.on.validate(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", id=configurations.KUEUE_QUEUE_GUARD)
@kopf.on.validate(KUEUE_GROUP, KUEUE_VERSION, "cohorts", id=configurations.KUEUE_QUEUE_GUARD)
@kopf.on.validate(KUEUE_GROUP, KUEUE_VERSION, "resourceflavors", id=configurations.KUEUE_QUEUE_GUARD)
async def guard_kueue(
    body: kopf.Body, userinfo: Mapping[str, Any], resource: kopf.Resource, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Only trainguard and Kueue write tenants' Kueue objects (`policy.access.kueue_refusal`)."""
    settings = context_of(memo).settings
    operation = str(kwargs.get("operation"))
    kind = _KUEUE_KINDS.get(resource.plural, resource.plural)
    refusal = kueue_refusal(
        Identity.from_userinfo(userinfo), operation, kind, settings.operator_users, settings.kueue_users
    )
    if refusal is not None:
        old: kopf.Body | None = kwargs.get("old")
        raw = dict(body if operation != "DELETE" or old is None else old)
        await deny({**raw, "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", "kind": kind}, [refusal])


# --------------------------------------------------------------------------- exec, attach, port-forward


async def review_connect(
    context: OperatorContext, tenants: Tenants, review: Mapping[str, Any]
) -> dict[str, Any]:
    """`kubectl exec` / `attach` / `port-forward` into a job's pod: the decision is
    `policy.access.connect_refusal`; every one allowed or refused is an Event naming who."""
    request = review.get("request") or {}
    uid, namespace, name = request.get("uid", ""), request.get("namespace", ""), request.get("name", "")
    who = Identity.from_userinfo(request.get("userInfo") or {})
    action = str(request.get("subResource", "exec"))
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    pod = await kube.get_pod(namespace, name)
    if pod is not None and is_job_pod(pod) and not is_operator(who, context.settings.operator_users):
        options = request.get("object") or {}  # PodExecOptions / PodAttachOptions / PodPortForwardOptions
        job = await _job_of_pod(pod)
        tenant_name = (pod["metadata"].get("labels") or {}).get(LABEL_TENANT, "")
        tenant = await find_tenant(tenants, tenant_name) if tenant_name else None
        refusal = connect_refusal(job, tenant, name, action, options.get("container"), who)
        metrics.pod_connect(action, "Refused" if refusal else "Allowed", refusal.reason if refusal else "")
        if refusal is None:
            message = f"{who.user} was allowed pods/{action} into {name}"
            await kube.post_event(
                pod, "Normal", "PodConnectAllowed", message, component="trainguard-admission"
            )
        else:
            await _refuse(response, pod, who, refusal)
    return _review(review, response)


async def _job_of_pod(pod: Mapping[str, Any]) -> TrainingJob | None:
    """The TrainingJob that controls `pod` (by owner reference uid), if it still exists."""
    meta = pod.get("metadata") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "TrainingJob"), None)
    if owner is None:
        return None
    raw = await kube.get_job(meta.get("namespace", ""), owner.get("name", ""))
    if raw is None or raw["metadata"].get("uid") != owner.get("uid"):
        return None
    return TrainingJob.model_validate(raw)


async def review_token_request(
    context: OperatorContext, jobs: JobNames, review: Mapping[str, Any]
) -> dict[str, Any]:
    """`kubectl create token <job>-runner` and any TokenRequest for a job's service account."""
    request = review.get("request") or {}
    uid, namespace, account = request.get("uid", ""), request.get("namespace", ""), request.get("name", "")
    who = Identity.from_userinfo(request.get("userInfo") or {})
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    refusal = token_refusal(account, jobs.get(namespace, ()), who, context.settings.operator_users)
    if refusal is not None:
        target = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        }
        await _refuse(response, target, who, refusal)
    return _review(review, response)


async def _refuse(
    response: dict[str, Any], target: Mapping[str, Any], who: Identity, refusal: Refusal
) -> None:
    """A raw review's refusal: counted, recorded as an Event naming who asked, and answered 403."""
    metrics.admission_denied(refusal.reason)
    _note_reasons([refusal.reason])
    message = f"{who.user}: {refusal.message}"
    await kube.post_event(
        dict(target), "Warning", "AdmissionDenied", message, component="trainguard-admission"
    )
    response.update(allowed=False, status={"code": 403, "message": refusal.message, "reason": "Forbidden"})


def _review(review: Mapping[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }
