"""Admission webhooks: signed images pinned to digests, tenant rules, and the pod guard.

Thin: every rule lives in `policy/` and `signing/`; these handlers gather the objects the rules
need (the Tenant, the namespace), run them, and turn errors into one denial that lists every
problem with its field and fix. A denial also posts an Event and counts
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
from trainguard.api.models import API_VERSION, GROUP, VERSION, Tenant, TrainingJob
from trainguard.handlers import verification
from trainguard.kube import certs
from trainguard.kube import client as kube
from trainguard.policy.errors import FieldError, format_errors
from trainguard.policy.pods import images, is_exempt, is_job_pod, validate_foreign_pod
from trainguard.policy.trainingjob import validate_training_job
from trainguard.signing.reference import parse
from trainguard.signing.verifier import VerificationFailed
from trainguard.workload import webhooks as hooks
from trainguard.workload.builders import LABEL_TENANT, SIDECAR_CONTAINER

log = logging.getLogger("trainguard.admission")
load_tenant = verification.load_tenant
tenant_of_namespace = verification.tenant_of_namespace
verify_image = verification.verify_image


# --------------------------------------------------------------------------- server and configurations


class GuardedWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, plus `pods/exec|attach` CONNECT reviews, which kopf's handlers
    cannot see (their object is PodExecOptions; the pod is only named in the request)."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def guarded(request: Any, **kwargs: Any) -> Any:
            if (request.get("request") or {}).get("operation") == "CONNECT":
                return await review_connect(request)
            return await fn(request, **kwargs)

        async for client_config in super().__call__(guarded):
            yield client_config


@kopf.on.startup()
async def start_admission(settings: kopf.OperatorSettings, **_: Any) -> None:
    if not verification.CONFIG.port:
        return
    # Admission runs blocking calls (registry, API reads) in threads: size the pool for bursts.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
    folder = verification.CONFIG.cert_dir or Path(tempfile.mkdtemp(prefix="trainguard-webhook-"))
    ca = certs.ensure_ca(folder, "webhook-ca")
    serving = certs.ensure_leaf(
        folder, "webhook", ca, common_name="trainguard-webhook", server_names=(verification.CONFIG.host,)
    )
    settings.admission.server = GuardedWebhookServer(
        addr=verification.CONFIG.listen,
        port=verification.CONFIG.port,
        host=verification.CONFIG.host,
        certfile=str(serving.cert),
        pkeyfile=str(serving.key),
        cafile=str(ca.cert),
    )
    settings.admission.managed = None  # trainguard writes its own configurations (namespace selectors)
    config = verification.CONFIG
    bundle = base64.b64encode(ca.cert.read_bytes()).decode()
    if config.service:  # in a cluster: the API server reaches the operator through its Service
        namespace, _sep, name = config.service.partition("/")
        endpoint = hooks.Endpoint(
            bundle, service_namespace=namespace, service_name=name, service_port=config.port
        )
    else:
        endpoint = hooks.Endpoint(bundle, url_base=f"https://{config.host}:{config.port}")
    for manifest in hooks.build_webhook_configurations(config.config_name, endpoint):
        await kube.apply_webhook_configuration(manifest)


@kopf.on.cleanup()
async def stop_admission(**_: Any) -> None:
    if verification.CONFIG.port:
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            await kube.delete_webhook_configuration(kind, verification.CONFIG.config_name)


# --------------------------------------------------------------------------- shared steps


def image_error(path: str, image: str, tenant: Tenant, failure: VerificationFailed) -> FieldError:
    trusted = ", ".join(s.name for s in tenant.spec.trusted_signers) or "none"
    if failure.reason in ("Unsigned", "UntrustedSigner", "InvalidSignature", "TagDigestMismatch"):
        try:
            target = parse(image).name
        except ValueError:
            target = image
        fix = (
            f"sign the image with a key tenant {tenant.metadata.name!r} trusts (trusted signers: {trusted}), "
            f"e.g. `cosign sign --key <that key> {target}@<digest>`, then apply again"
        )
        if failure.reason == "TagDigestMismatch":
            fix = "name the image by tag or by digest alone, or point the tag at the digest you mean"
    elif failure.reason == "CannotVerify":
        fix = "trainguard fails closed when the registry cannot be read; check the registry and apply again"
    elif failure.reason == "NoTrustedSigners":
        fix = "ask the platform team to add trusted signers to the tenant"
    else:
        fix = "write the full reference, e.g. registry.example.com/team/trainer:v1"
    return FieldError(path, failure.reason, str(failure), fix)


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


def _pinned_digest_only(image: str) -> str:
    """`repo:tag@digest` -> `repo@digest`: an unchanged pinned image is checked by digest alone."""
    ref = parse(image)
    return f"{ref.name}@{ref.digest}" if ref.digest else image


# --------------------------------------------------------------------------- TrainingJobs


@kopf.on.mutate(GROUP, VERSION, "trainingjobs", id=hooks.PIN_IMAGE, operations=["CREATE", "UPDATE"])
async def pin_image(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    """Resolve the tag to a digest and write it into the job: what runs is what was verified."""
    old: kopf.Body | None = kwargs.get("old")
    spec = body.get("spec") or {}
    image, tenant_name = spec.get("image"), spec.get("tenant")
    if not isinstance(image, str) or not isinstance(tenant_name, str):
        return  # the schema reports it
    if old is not None and (old.get("spec") or {}).get("image") == image and "@" in image:
        return
    tenant = await load_tenant(tenant_name)
    if tenant is None:
        return  # validation reports it, with every other problem
    try:
        verified = await verify_image(image, tenant)
    except (VerificationFailed, ValueError):
        return  # validation reports it, with every other problem
    if verified.pinned != image:
        patch.setdefault("spec", {})["image"] = verified.pinned


@kopf.on.validate(GROUP, VERSION, "trainingjobs", id=hooks.VALIDATE_JOB, operations=["CREATE", "UPDATE"])
async def validate_job(body: kopf.Body, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
    old: kopf.Body | None = kwargs.get("old")
    raw = dict(body)
    try:
        job = TrainingJob.model_validate(raw)
    except ValidationError as exc:
        errors = [
            FieldError(
                ".".join(str(p) for p in e["loc"]), "InvalidField", e["msg"], "see `kubectl explain tj.spec`"
            )
            for e in exc.errors()
        ]
        await deny(raw, errors)
        return
    user, groups = _identity(userinfo)
    exempt = is_exempt(user, groups, verification.CONFIG.operator_users)
    tenant = await load_tenant(job.spec.tenant)
    errors = validate_training_job(job, tenant, "" if exempt else user, tuple(groups))
    if tenant is not None:
        image = job.spec.image
        unchanged = old is not None and (old.get("spec") or {}).get("image") == image
        try:
            await verify_image(_pinned_digest_only(image) if unchanged else image, tenant)
            if "@" not in image:  # verified, yet the mutating webhook did not pin it
                raise VerificationFailed("NotPinned", f"{image} was not pinned to a digest at admission")
        except VerificationFailed as failure:
            errors.append(image_error("spec.image", image, tenant, failure))
        except ValueError as exc:
            errors.append(
                image_error(
                    "spec.image", image, tenant, VerificationFailed("InvalidImageReference", str(exc))
                )
            )
    if errors:
        await deny({**raw, "apiVersion": API_VERSION, "kind": "TrainingJob"}, errors)


# --------------------------------------------------------------------------- the pod guard


async def _guard_pod(
    body: kopf.Body, old: kopf.Body | None, userinfo: Mapping[str, Any], operation: str, namespace: str | None
) -> None:
    user, groups = _identity(userinfo)
    if is_exempt(user, groups, verification.CONFIG.operator_users) or not namespace:
        return
    pod = dict(body)
    if is_job_pod(dict(old) if old is not None else pod) or is_job_pod(pod):
        verb = {"CREATE": "create", "DELETE": "delete"}.get(operation, "change")
        owner = ((pod.get("metadata") or {}).get("labels") or {}).get("trainguard.dev/job-name", "?")
        await deny(
            pod,
            [
                FieldError(
                    "metadata.ownerReferences",
                    "JobPodIsOperatorOwned",
                    f"only trainguard may {verb} the pods of TrainingJob {owner!r}",
                    "change or delete the TrainingJob instead; trainguard recreates its pods",
                )
            ],
        )
    if operation == "DELETE":
        return
    tenant = await tenant_of_namespace(namespace)
    if tenant is None:
        return
    shared = {s.claim_name: s.name for s in tenant.spec.shared_storage}
    errors = validate_foreign_pod(pod, shared)
    for path, image in images(pod):
        try:
            await verify_image(image, tenant)
        except VerificationFailed as failure:
            errors.append(image_error(path, image, tenant, failure))
    if errors:
        await deny({**pod, "apiVersion": "v1", "kind": "Pod"}, errors)


@kopf.on.validate("", "v1", "pods", id=hooks.POD_GUARD, operations=["CREATE", "UPDATE", "DELETE"])
async def guard_pod(
    body: kopf.Body, userinfo: Mapping[str, Any], namespace: str | None, **kwargs: Any
) -> None:
    await _guard_pod(body, kwargs.get("old"), userinfo, str(kwargs.get("operation")), namespace)


@kopf.on.validate(
    "", "v1", "pods", id=hooks.POD_GUARD_EPHEMERAL, subresource="ephemeralcontainers", operations=["UPDATE"]
)
async def guard_ephemeral_containers(
    body: kopf.Body, userinfo: Mapping[str, Any], namespace: str | None, **kwargs: Any
) -> None:
    await _guard_pod(body, kwargs.get("old"), userinfo, "UPDATE", namespace)


async def review_connect(review: Mapping[str, Any]) -> dict[str, Any]:
    """`kubectl exec` / `attach` into a job's pod: only that job's tenant members (and the exempt),
    and never into its integrity sidecar."""
    request = review.get("request") or {}
    uid, namespace, name = request.get("uid", ""), request.get("namespace", ""), request.get("name", "")
    user, groups = _identity(request.get("userInfo") or {})
    allowed, message = True, ""
    if not is_exempt(user, groups, verification.CONFIG.operator_users):
        pod = await kube.get_pod(namespace, name)
        options = request.get("object") or {}  # PodExecOptions / PodAttachOptions
        action = request.get("subResource", "exec")
        if pod is not None and is_job_pod(pod):
            reason = ""
            if options.get("container") == SIDECAR_CONTAINER:
                reason = "SidecarExec"
                message = (
                    f"pods/{action} into {name} -c {SIDECAR_CONTAINER}: the integrity sidecar holds the "
                    "job's key, and nobody may run commands in it; read its findings in the job's status "
                    "and events"
                )
            else:
                tenant_name = (pod["metadata"].get("labels") or {}).get(LABEL_TENANT, "")
                tenant = await load_tenant(tenant_name)
                if tenant is None or not tenant.spec.members.includes(user, groups):
                    reason = "ForeignExec"
                    message = (
                        f"pods/{action} into {name}: only members of tenant {tenant_name!r} may {action} "
                        "into its TrainingJobs' pods; ask a member of that tenant, or the platform team"
                    )
            if reason:
                allowed = False
                metrics.admission_denied(reason)
                await kube.post_event(
                    pod, "Warning", "AdmissionDenied", f"{user}: {message}", component="trainguard-admission"
                )
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 403, "message": message, "reason": "Forbidden"}
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }
