"""Admission webhooks: signed images pinned to digests, tenant rules, and the pod guard.

Thin: every rule lives in `policy/` and `signing/`; these handlers gather the objects the rules
need (the Tenant, the namespace's tenant), run them, and turn errors into one denial that lists
every problem with its field and fix. A denial also posts an Event and counts
`trainguard_admission_denied_total{reason}`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from trainguard import metrics
from trainguard.admission import configurations
from trainguard.api.constants import API_VERSION, GROUP, LABEL_TENANT, VERSION
from trainguard.api.models import Tenant, TrainingJob
from trainguard.context import (
    OperatorContext,
    TenantNamespaces,
    Tenants,
    context_of,
    find_tenant,
    tenant_namespaces_index,
    tenants_index,
)
from trainguard.kube import client as kube
from trainguard.policy.access import connect_refusal, job_pod_refusal
from trainguard.policy.errors import FieldError, format_errors, schema_errors
from trainguard.policy.images import digest_only, image_error
from trainguard.policy.pods import images, is_exempt, is_job_pod, validate_foreign_pod
from trainguard.policy.trainingjob import validate_training_job
from trainguard.signing.verifier import VerificationFailed
from trainguard.tls import certs

log = logging.getLogger("trainguard.admission")


# --------------------------------------------------------------------------- server and configurations


class GuardedWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, plus `pods/exec|attach` CONNECT reviews, which kopf's handlers
    cannot see (their object is PodExecOptions; the pod is only named in the request)."""

    def __init__(self, context: OperatorContext, tenants: Tenants, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.operator_context = context  # not `context`: kopf's server keeps its SSL context there
        self.tenants = tenants

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def guarded(request: Any, **kwargs: Any) -> Any:
            if (request.get("request") or {}).get("operation") == "CONNECT":
                return await review_connect(self.operator_context, self.tenants, request)
            return await fn(request, **kwargs)

        async for client_config in super().__call__(guarded):
            yield client_config


@kopf.on.startup()
async def start_admission(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    context = context_of(memo)
    config = context.settings
    if not config.webhook_port:
        return
    # Admission runs blocking calls (registry, API reads) in threads: size the pool for bursts.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
    folder = config.webhook_cert_dir or Path(tempfile.mkdtemp(prefix="trainguard-webhook-"))
    ca = certs.ensure_ca(folder, "webhook-ca")
    serving = certs.ensure_leaf(
        folder, "webhook", ca, common_name="trainguard-webhook", server_names=(config.webhook_host,)
    )
    settings.admission.server = GuardedWebhookServer(
        context,
        tenants_index(kwargs),
        addr=config.webhook_listen,
        port=config.webhook_port,
        host=config.webhook_host,
        certfile=str(serving.cert),
        pkeyfile=str(serving.key),
        cafile=str(ca.cert),
    )
    settings.admission.managed = None  # trainguard writes its own configurations (namespace selectors)
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
    for manifest in configurations.build_webhook_configurations(config.webhook_config_name, endpoint):
        await kube.apply_webhook_configuration(manifest)


@kopf.on.cleanup()
async def stop_admission(memo: kopf.Memo, **_: Any) -> None:
    config = context_of(memo).settings
    if config.webhook_port:
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            await kube.delete_webhook_configuration(kind, config.webhook_config_name)


# --------------------------------------------------------------------------- shared steps


async def deny(obj: Mapping[str, Any], errors: list[FieldError]) -> None:
    """Count, record and refuse: one denial listing every problem."""
    meta = obj.get("metadata") or {}
    kind, name = obj.get("kind", "object"), meta.get("name") or meta.get("generateName") or "?"
    message = format_errors(kind, name, errors)
    for error in errors:
        metrics.admission_denied(error.reason)
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


def _identity(userinfo: Mapping[str, Any]) -> tuple[str, list[str]]:
    return str(userinfo.get("username", "")), list(userinfo.get("groups") or [])


async def _image_errors(
    context: OperatorContext, path: str, image: str, tenant: Tenant, checked: str | None = None
) -> list[FieldError]:
    """The refusal of `image` at `path` if it (or `checked`, the form of it to verify) does not
    verify under the tenant's trust."""
    try:
        await context.images.verify(checked or image, tenant)
    except VerificationFailed as failure:
        return [image_error(path, image, tenant, failure.reason, str(failure))]
    except ValueError as exc:
        return [image_error(path, image, tenant, "InvalidImageReference", str(exc))]
    return []


# --------------------------------------------------------------------------- TrainingJobs


@kopf.on.mutate(GROUP, VERSION, "trainingjobs", id=configurations.PIN_IMAGE, operations=["CREATE", "UPDATE"])
async def pin_image(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kwargs: Any) -> None:
    """Resolve the tag to a digest and write it into the job: what runs is what was verified."""
    old: kopf.Body | None = kwargs.get("old")
    spec = body.get("spec") or {}
    image, tenant_name = spec.get("image"), spec.get("tenant")
    if not isinstance(image, str) or not isinstance(tenant_name, str):
        return  # the schema reports it
    if old is not None and (old.get("spec") or {}).get("image") == image and "@" in image:
        return
    tenant = await find_tenant(tenants_index(kwargs), tenant_name)
    if tenant is None:
        return  # validation reports it, with every other problem
    try:
        verified = await context_of(memo).images.verify(image, tenant)
    except (VerificationFailed, ValueError):
        return  # validation reports it, with every other problem
    if verified.pinned != image:
        patch.setdefault("spec", {})["image"] = verified.pinned


@kopf.on.validate(
    GROUP, VERSION, "trainingjobs", id=configurations.VALIDATE_JOB, operations=["CREATE", "UPDATE"]
)
async def validate_job(
    body: kopf.Body,
    userinfo: Mapping[str, Any],
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    context = context_of(memo)
    old: kopf.Body | None = kwargs.get("old")
    raw = dict(body)
    if old is not None and old.get("spec") == raw.get("spec"):
        return  # metadata only (labels, kopf's finalizer): nothing that decides what runs changed
    try:
        job = TrainingJob.model_validate(raw)
    except ValidationError as exc:
        await deny(raw, schema_errors(exc))
        return
    user, groups = _identity(userinfo)
    exempt = is_exempt(user, groups, context.settings.operator_users)
    tenant = await find_tenant(tenants_index(kwargs), job.spec.tenant)
    errors = validate_training_job(job, tenant, "" if exempt else user, tuple(groups))
    if tenant is not None:
        image = job.spec.image
        unchanged = old is not None and (old.get("spec") or {}).get("image") == image
        try:
            checked = digest_only(image) if unchanged else image
        except ValueError:
            checked = image
        image_errors = await _image_errors(context, "spec.image", image, tenant, checked)
        if not image_errors and "@" not in image:  # verified, yet the mutating webhook did not pin it
            message = f"{image} was not pinned to a digest at admission"
            image_errors = [image_error("spec.image", image, tenant, "NotPinned", message)]
        errors += image_errors
    if errors:
        await deny({**raw, "apiVersion": API_VERSION, "kind": "TrainingJob"}, errors)


# --------------------------------------------------------------------------- the pod guard


async def _guard_pod(
    context: OperatorContext,
    body: kopf.Body,
    old: kopf.Body | None,
    userinfo: Mapping[str, Any],
    operation: str,
    namespace: str | None,
    tenants: Tenants,
    tenant_namespaces: TenantNamespaces,
) -> None:
    user, groups = _identity(userinfo)
    if is_exempt(user, groups, context.settings.operator_users) or not namespace:
        return
    pod = dict(body)
    if is_job_pod(dict(old) if old is not None else pod) or is_job_pod(pod):
        await deny(pod, [job_pod_refusal(pod, operation)])
    if operation == "DELETE":
        return
    tenant = await _tenant_of_namespace(namespace, tenants, tenant_namespaces)
    if tenant is None:
        return
    shared = {s.claim_name: s.name for s in tenant.spec.shared_storage}
    errors = validate_foreign_pod(pod, shared)
    for path, image in images(pod):
        errors += await _image_errors(context, path, image, tenant)
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
    body: kopf.Body,
    userinfo: Mapping[str, Any],
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    await _guard_pod(
        context_of(memo),
        body,
        kwargs.get("old"),
        userinfo,
        str(kwargs.get("operation")),
        namespace,
        tenants_index(kwargs),
        tenant_namespaces_index(kwargs),
    )


@kopf.on.validate(
    "",
    "v1",
    "pods",
    id=configurations.POD_GUARD_EPHEMERAL,
    subresource="ephemeralcontainers",
    operations=["UPDATE"],
)
async def guard_ephemeral_containers(
    body: kopf.Body,
    userinfo: Mapping[str, Any],
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    await _guard_pod(
        context_of(memo),
        body,
        kwargs.get("old"),
        userinfo,
        "UPDATE",
        namespace,
        tenants_index(kwargs),
        tenant_namespaces_index(kwargs),
    )


async def review_connect(
    context: OperatorContext, tenants: Tenants, review: Mapping[str, Any]
) -> dict[str, Any]:
    """`kubectl exec` / `attach` into a job's pod: the decision is `policy.access.connect_refusal`."""
    request = review.get("request") or {}
    uid, namespace, name = request.get("uid", ""), request.get("namespace", ""), request.get("name", "")
    user, groups = _identity(request.get("userInfo") or {})
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if not is_exempt(user, groups, context.settings.operator_users):
        pod = await kube.get_pod(namespace, name)
        if pod is not None and is_job_pod(pod):
            options = request.get("object") or {}  # PodExecOptions / PodAttachOptions
            tenant_name = (pod["metadata"].get("labels") or {}).get(LABEL_TENANT, "")
            tenant = await find_tenant(tenants, tenant_name) if tenant_name else None
            refusal = connect_refusal(
                name,
                request.get("subResource", "exec"),
                options.get("container"),
                tenant_name,
                tenant,
                user,
                groups,
            )
            if refusal is not None:
                metrics.admission_denied(refusal.reason)
                await kube.post_event(
                    pod,
                    "Warning",
                    "AdmissionDenied",
                    f"{user}: {refusal.message}",
                    component="trainguard-admission",
                )
                response.update(
                    allowed=False, status={"code": 403, "message": refusal.message, "reason": "Forbidden"}
                )
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }
