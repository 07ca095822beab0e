"""The only module that talks to the Kubernetes API server.

It wraps the synchronous `kubernetes` client and runs every call in a worker thread so the kopf
event loop never blocks. Objects go in and come out as plain dicts, exactly as the API serves
them; parsing into models happens in the handlers, once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from trainguard.api.conditions import format_time
from trainguard.api.constants import GROUP, KUEUE_GROUP, KUEUE_VERSION, VERSION
from trainguard.settings import IO_THREADS

Obj = dict[str, Any]


class KubeError(RuntimeError):
    """An API call failed for a reason other than "already exists" or "not found"."""

    def __init__(self, action: str, exc: ApiException) -> None:
        super().__init__(f"{action}: {exc.status} {exc.reason}: {_message(exc)}")
        self.status = exc.status


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    except ValueError:
        return str(exc.body)


_shared: client.ApiClient | None = None


def configure(kubeconfig: str | None = None) -> None:
    """Load credentials: in-cluster when running as a pod, else `kubeconfig` or $KUBECONFIG (read
    now, not when the library was imported)."""
    global _shared
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"))
    _shared = None


def _api() -> client.ApiClient:
    """One ApiClient, and so one pool of kept-alive TLS connections, for every call of the process
    (a new client per call would be a new TLS handshake per call). urllib3's pool is thread-safe;
    calls run in the default executor's threads, so the pool holds as many connections."""
    global _shared
    if _shared is None:
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = IO_THREADS
        _shared = client.ApiClient(configuration)
    return _shared


def _json(response: Any) -> Obj:
    data: Obj = json.loads(response.data)
    return data


def _complete(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn` and read an unparsed response (`_preload_content=False`) to its end, in the
    calling thread: urllib3 gives a connection back to the pool only once its response is read,
    and an answer nobody reads (a delete's) would otherwise cost a new TLS connection per call."""
    result = fn(*args, **kwargs)
    if isinstance(result, urllib3.BaseHTTPResponse):
        _ = result.data
    return result


async def _call(
    action: str, fn: Callable[..., Any], *args: Any, ok: tuple[int, ...] = (), **kwargs: Any
) -> Any:
    """Run `fn` in a thread; return None for the statuses in `ok`, raise KubeError for others."""
    try:
        return await asyncio.to_thread(_complete, fn, *args, **kwargs)
    except ApiException as exc:
        if exc.status in ok:
            return None
        raise KubeError(action, exc) from exc


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(_api())


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_api())


# --------------------------------------------------------------------------- trainguard objects


async def get_job(namespace: str, name: str) -> Obj | None:
    resp = await _call(
        f"get TrainingJob {namespace}/{name}",
        _custom().get_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        "trainingjobs",
        name,
        _preload_content=False,
        ok=(404,),
    )
    return None if resp is None else _json(resp)


async def get_tenant(name: str) -> Obj | None:
    resp = await _call(
        f"get Tenant {name}",
        _custom().get_cluster_custom_object,
        GROUP,
        VERSION,
        "tenants",
        name,
        _preload_content=False,
        ok=(404,),
    )
    return None if resp is None else _json(resp)


async def patch_job_status(namespace: str, name: str, status: Obj) -> Obj | None:
    """Merge-patch the job's status; returns the job as written (None: the job is gone)."""
    resp = await _call(
        f"patch status of TrainingJob {namespace}/{name}",
        _custom().patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        namespace,
        "trainingjobs",
        name,
        {"status": status},
        _preload_content=False,
        ok=(404,),
    )
    return None if resp is None else _json(resp)


async def list_jobs() -> list[Obj]:
    """Every TrainingJob in the cluster."""
    resp = await _call(
        "list TrainingJobs",
        _custom().list_cluster_custom_object,
        GROUP,
        VERSION,
        "trainingjobs",
        _preload_content=False,
    )
    items: list[Obj] = _json(resp)["items"]
    return items


async def delete_job(namespace: str, name: str) -> None:
    await _call(
        f"delete TrainingJob {namespace}/{name}",
        _custom().delete_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        "trainingjobs",
        name,
        ok=(404,),
    )


async def set_job_finalizers(namespace: str, name: str, finalizers: list[str], resource_version: str) -> None:
    """Replace the job's finalizers, only if it did not change since `resource_version`."""
    body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
    await _call(
        f"patch finalizers of TrainingJob {namespace}/{name}",
        _custom().patch_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        "trainingjobs",
        name,
        body,
        ok=(404, 409),
    )


# --------------------------------------------------------------------------- children


_CREATORS: dict[str, Callable[[], Callable[..., Any]]] = {
    "Pod": lambda: _core().create_namespaced_pod,
    "Service": lambda: _core().create_namespaced_service,
    "ServiceAccount": lambda: _core().create_namespaced_service_account,
    "PersistentVolumeClaim": lambda: _core().create_namespaced_persistent_volume_claim,
    "NetworkPolicy": lambda: client.NetworkingV1Api(_api()).create_namespaced_network_policy,
    "Secret": lambda: _core().create_namespaced_secret,
}


_READERS: dict[str, Callable[[], Callable[..., Any]]] = {
    "Pod": lambda: _core().read_namespaced_pod,
    "Service": lambda: _core().read_namespaced_service,
    "ServiceAccount": lambda: _core().read_namespaced_service_account,
    "PersistentVolumeClaim": lambda: _core().read_namespaced_persistent_volume_claim,
    "NetworkPolicy": lambda: client.NetworkingV1Api(_api()).read_namespaced_network_policy,
    "Secret": lambda: _core().read_namespaced_secret,
}


async def controller_uid(kind: str, namespace: str, name: str) -> str | None:
    """The uid of the object's controlling owner; None when it has none or does not exist."""
    resp = await _call(
        f"get {kind} {namespace}/{name}", _READERS[kind](), name, namespace, _preload_content=False, ok=(404,)
    )
    if resp is None:
        return None
    owners = _json(resp)["metadata"].get("ownerReferences") or []
    return next((str(o.get("uid")) for o in owners if o.get("controller")), None)


async def create(manifest: Obj) -> bool:
    """Create the object; return False when it already exists (creation is idempotent)."""
    kind, meta = manifest["kind"], manifest["metadata"]
    result = await _call(
        f"create {kind} {meta['namespace']}/{meta['name']}",
        _CREATORS[kind](),
        meta["namespace"],
        manifest,
        _preload_content=False,
        ok=(409,),
    )
    return result is not None


async def delete_pod(namespace: str, name: str) -> None:
    await _call(
        f"delete pod {namespace}/{name}",
        _core().delete_namespaced_pod,
        name,
        namespace,
        grace_period_seconds=30,
        propagation_policy="Background",
        _preload_content=False,  # the deleted pod is not read: no model built from it
        ok=(404,),
    )


async def post_event(obj: Obj, type_: str, reason: str, message: str, component: str = "trainguard") -> None:
    """Record a core/v1 Event about `obj` (what `kubectl describe` shows)."""
    meta = obj["metadata"]
    now = format_time(datetime.datetime.now(datetime.UTC))
    namespace = meta.get("namespace", "default")
    event: Obj = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
            "namespace": meta.get("namespace", "default"),
        },
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    await _call(
        "post event", _core().create_namespaced_event, namespace, event, _preload_content=False, ok=(409,)
    )


async def apply_role_binding(binding: Obj) -> None:
    """Create the RoleBinding, or bring an existing one's subjects and role up to date."""
    rbac = client.RbacAuthorizationV1Api(_api())
    meta = binding["metadata"]
    created = await _call(
        f"create RoleBinding {meta['namespace']}/{meta['name']}",
        rbac.create_namespaced_role_binding,
        meta["namespace"],
        binding,
        ok=(409,),
    )
    if created is None:
        await _call(
            f"update RoleBinding {meta['namespace']}/{meta['name']}",
            rbac.patch_namespaced_role_binding,
            meta["name"],
            meta["namespace"],
            {"subjects": binding["subjects"], "metadata": {"labels": meta["labels"]}},
        )


async def get_namespace(name: str) -> Obj | None:
    resp = await _call(
        f"get namespace {name}", _core().read_namespace, name, _preload_content=False, ok=(404,)
    )
    return None if resp is None else _json(resp)


async def label_namespace(name: str, labels: dict[str, str | None]) -> None:
    await _call(
        f"label namespace {name}", _core().patch_namespace, name, {"metadata": {"labels": labels}}, ok=(404,)
    )


async def annotate_namespace(name: str, annotations: dict[str, str | None]) -> None:
    body = {"metadata": {"annotations": annotations}}
    await _call(f"annotate namespace {name}", _core().patch_namespace, name, body, ok=(404,))


_WEBHOOK_CONFIGS: dict[str, tuple[str, str]] = {
    # kind -> (create, replace) method names on AdmissionregistrationV1Api; the operator never
    # deletes its configurations: while it is down its webhooks fail closed.
    "ValidatingWebhookConfiguration": (
        "create_validating_webhook_configuration",
        "replace_validating_webhook_configuration",
    ),
    "MutatingWebhookConfiguration": (
        "create_mutating_webhook_configuration",
        "replace_mutating_webhook_configuration",
    ),
}


async def apply_webhook_configuration(config: Obj) -> None:
    """Create the configuration, or replace an existing one of the same name."""
    api = client.AdmissionregistrationV1Api(_api())
    create, replace = _WEBHOOK_CONFIGS[config["kind"]]
    name = config["metadata"]["name"]
    created = await _call(f"create {config['kind']} {name}", getattr(api, create), config, ok=(409,))
    if created is None:
        current = await _call(
            f"read {config['kind']} {name}",
            getattr(api, replace.replace("replace_", "read_")),
            name,
            _preload_content=False,
        )
        body = {
            **config,
            "metadata": {
                **config["metadata"],
                "resourceVersion": _json(current)["metadata"]["resourceVersion"],
            },
        }
        await _call(f"replace {config['kind']} {name}", getattr(api, replace), name, body)


async def get_pod(namespace: str, name: str) -> Obj | None:
    resp = await _call(
        f"get pod {namespace}/{name}",
        _core().read_namespaced_pod,
        name,
        namespace,
        _preload_content=False,
        ok=(404,),
    )
    return None if resp is None else _json(resp)


# --------------------------------------------------------------------------- integrity keys


async def review_token(token: str, audiences: list[str]) -> Obj:
    """The API server's TokenReview of `token` for `audiences`: its `status` (authenticated,
    user with extra, audiences, error), as served."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    }
    resp = await _call(
        "review a token", client.AuthenticationV1Api(_api()).create_token_review, body, _preload_content=False
    )
    status: Obj = _json(resp).get("status") or {}
    return status


async def get_secret(namespace: str, name: str) -> Obj | None:
    resp = await _call(
        f"get secret {namespace}/{name}",
        _core().read_namespaced_secret,
        name,
        namespace,
        _preload_content=False,
        ok=(404,),
    )
    return None if resp is None else _json(resp)


async def list_secrets(namespace: str, selector: str) -> list[Obj]:
    resp = await _call(
        f"list secrets in {namespace}",
        _core().list_namespaced_secret,
        namespace,
        label_selector=selector,
        _preload_content=False,
    )
    items: list[Obj] = _json(resp)["items"]
    return items


async def annotate_secret(namespace: str, name: str, annotations: dict[str, str | None]) -> None:
    """Set (None: remove) annotations of a Secret; each key on its own, so writers of other keys
    never undo each other."""
    await _call(
        f"annotate secret {namespace}/{name}",
        _core().patch_namespaced_secret,
        name,
        namespace,
        {"metadata": {"annotations": annotations}},
    )


async def delete_secret(namespace: str, name: str) -> None:
    await _call(
        f"delete secret {namespace}/{name}", _core().delete_namespaced_secret, name, namespace, ok=(404,)
    )


async def list_pod_uids(namespace: str, selector: str) -> set[str]:
    """The uids of the pods in `namespace` that match `selector`."""
    resp = await _call(
        f"list pods in {namespace}",
        _core().list_namespaced_pod,
        namespace,
        label_selector=selector,
        _preload_content=False,
    )
    return {str(item["metadata"]["uid"]) for item in _json(resp)["items"]}


# --------------------------------------------------------------------------- Kueue and quotas

# Kueue's kinds: (plural, namespaced).
_KUEUE_KINDS: dict[str, tuple[str, bool]] = {
    "ClusterQueue": ("clusterqueues", False),
    "LocalQueue": ("localqueues", True),
    "ResourceFlavor": ("resourceflavors", False),
    "Cohort": ("cohorts", False),
    "Workload": ("workloads", True),
}


def _where(manifest: Obj) -> str:
    meta = manifest["metadata"]
    return (
        f"{manifest['kind']} {meta.get('namespace', '') + '/' if meta.get('namespace') else ''}{meta['name']}"
    )


async def get_object(kind: str, name: str, namespace: str | None = None) -> Obj | None:
    """A Kueue object or a ResourceQuota; None when it does not exist."""
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    if kind == "ResourceQuota":
        fn, args = _core().read_namespaced_resource_quota, (name, namespace)
    else:
        plural, namespaced = _KUEUE_KINDS[kind]
        if namespaced:
            fn, args = (
                _custom().get_namespaced_custom_object,
                (KUEUE_GROUP, KUEUE_VERSION, namespace, plural, name),
            )
        else:
            fn, args = _custom().get_cluster_custom_object, (KUEUE_GROUP, KUEUE_VERSION, plural, name)
    result = await _call(f"get {kind} {name}", fn, *args, _preload_content=False, ok=(404,))
    return None if result is None else _json(result)


async def create_object(manifest: Obj) -> bool:
    """Create a Kueue object or a ResourceQuota; False when it already exists."""
    kind, meta = manifest["kind"], manifest["metadata"]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    if kind == "ResourceQuota":
        fn, args = _core().create_namespaced_resource_quota, (meta["namespace"], manifest)
    else:
        plural, namespaced = _KUEUE_KINDS[kind]
        if namespaced:
            fn = _custom().create_namespaced_custom_object
            args = (KUEUE_GROUP, KUEUE_VERSION, meta["namespace"], plural, manifest)
        else:
            fn, args = _custom().create_cluster_custom_object, (KUEUE_GROUP, KUEUE_VERSION, plural, manifest)
    result = await _call(f"create {_where(manifest)}", fn, *args, _preload_content=False, ok=(409,))
    return result is not None


async def replace_object(manifest: Obj, current: Obj) -> None:
    """Put `manifest`'s spec, labels and owners on the existing object (only if it did not change
    since `current` was read), keeping what others set elsewhere (status, finalizers)."""
    kind, meta = manifest["kind"], manifest["metadata"]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    body = json.loads(json.dumps(current))
    body["spec"] = manifest["spec"]
    body["metadata"]["labels"] = {**(body["metadata"].get("labels") or {}), **meta.get("labels", {})}
    body["metadata"]["ownerReferences"] = meta.get("ownerReferences", [])
    if kind == "ResourceQuota":
        fn, args = _core().replace_namespaced_resource_quota, (meta["name"], meta["namespace"], body)
    else:
        plural, namespaced = _KUEUE_KINDS[kind]
        if namespaced:
            fn = _custom().replace_namespaced_custom_object
            args = (KUEUE_GROUP, KUEUE_VERSION, meta["namespace"], plural, meta["name"], body)
        else:
            fn = _custom().replace_cluster_custom_object
            args = (KUEUE_GROUP, KUEUE_VERSION, plural, meta["name"], body)
    await _call(f"replace {_where(manifest)}", fn, *args, _preload_content=False, ok=(404, 409))


async def list_workloads(selector: str) -> list[Obj]:
    """Every Kueue Workload in the cluster with the labels `selector` names."""
    resp = await _call(
        "list Workloads",
        _custom().list_cluster_custom_object,
        KUEUE_GROUP,
        KUEUE_VERSION,
        "workloads",
        label_selector=selector,
        _preload_content=False,
    )
    items: list[Obj] = _json(resp)["items"]
    return items


async def delete_workload(namespace: str, name: str) -> None:
    await _call(
        f"delete Workload {namespace}/{name}",
        _custom().delete_namespaced_custom_object,
        KUEUE_GROUP,
        KUEUE_VERSION,
        namespace,
        "workloads",
        name,
        _preload_content=False,
        ok=(404,),
    )


async def patch_workload_status(namespace: str, name: str, patch: Obj) -> None:
    await _call(
        f"patch status of Workload {namespace}/{name}",
        _custom().patch_namespaced_custom_object_status,
        KUEUE_GROUP,
        KUEUE_VERSION,
        namespace,
        "workloads",
        name,
        patch,
        _preload_content=False,
        ok=(404,),
    )


# --------------------------------------------------------------------------- the reconciler's Lease


def _coordination() -> client.CoordinationV1Api:
    return client.CoordinationV1Api(_api())


async def get_lease(namespace: str, name: str) -> Obj | None:
    resp = await _call(
        f"get Lease {namespace}/{name}",
        _coordination().read_namespaced_lease,
        name,
        namespace,
        _preload_content=False,
        ok=(404,),
    )
    return None if resp is None else _json(resp)


async def write_lease(lease: Obj) -> Obj | None:
    """Create the Lease (no resourceVersion) or replace it (only if unchanged since that version).
    None when another candidate wrote first (409): it won this round."""
    meta = lease["metadata"]
    if meta.get("resourceVersion"):
        fn: Callable[..., Any] = _coordination().replace_namespaced_lease
        args: tuple[Any, ...] = (meta["name"], meta["namespace"], lease)
    else:
        fn, args = _coordination().create_namespaced_lease, (meta["namespace"], lease)
    resp = await _call(f"write Lease {meta['namespace']}/{meta['name']}", fn, *args,
                       _preload_content=False, ok=(409,))  # fmt: skip
    return None if resp is None else _json(resp)


async def label_pod(namespace: str, name: str, labels: dict[str, str | None]) -> None:
    """Set (None: remove) labels of a pod; each key on its own."""
    await _call(
        f"label pod {namespace}/{name}",
        _core().patch_namespaced_pod,
        name,
        namespace,
        {"metadata": {"labels": labels}},
        _preload_content=False,
    )
