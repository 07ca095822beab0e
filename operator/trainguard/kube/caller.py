"""The API server as the person at the keyboard sees it: the `kubectl trainguard` plugin's reads.

Unlike `kube.client` (the operator's identity, asynchronous, in-cluster first), this client is
synchronous and loads the caller's kubeconfig and context, and impersonates whom the caller names
with `--as`/`--as-group` exactly as kubectl does: it can never do more than the caller may.
Objects come out as plain dicts, as the API serves them. Errors are sorted into what the plugin
tells apart: refused (403), gone (404), unreachable, and any other answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from trainguard.api.constants import GROUP, KUEUE_GROUP, KUEUE_VERSION, VERSION

Obj = dict[str, Any]
T = TypeVar("T")
REQUEST_TIMEOUT = 15  # seconds per request: a plugin waits no longer for an answer


class CallerError(RuntimeError):
    """An API call that did not give an answer the plugin can show."""

    def __init__(self, message: str, status: int = 0, server_message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message or message  # the API server's own words


class Forbidden(CallerError):
    """The API server refused the caller (RBAC): the message names the user and what was refused."""


class Unreachable(CallerError):
    """No kubeconfig, no route to the API server, TLS failure, or a timeout."""


class Refused(CallerError):
    """An admission webhook (or validation) refused a create: the message is the API server's."""


@dataclass(frozen=True)
class Target:
    """Where and as whom, from kubectl's own flags."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    as_user: str | None = None
    as_groups: Sequence[str] = ()


class _Impersonating:
    """Adds Impersonate-User and one Impersonate-Group header per group to every request (the
    generated client's default headers hold one value per name, and kubectl sends several)."""

    def __init__(self, pool: Any, user: str | None, groups: Sequence[str]) -> None:
        self._pool, self._user, self._groups = pool, user, list(groups)

    def request(self, method: str, url: str, headers: Any = None, **kwargs: Any) -> Any:
        merged = urllib3.HTTPHeaderDict(headers or {})
        if self._user:
            merged["Impersonate-User"] = self._user
        for group in self._groups:
            merged.add("Impersonate-Group", group)
        return self._pool.request(method, url, headers=merged, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.body or exc.reason)


_WARNING = re.compile(r'^\d{3} \S+ "(.*)"$')


def _warning_text(header: str) -> str:
    """The text of an HTTP Warning header (`299 - "text"`, quotes escaped inside)."""
    found = _WARNING.match(header.strip())
    return found.group(1).replace('\\"', '"').replace("\\\\", "\\") if found else header


class Caller:
    def __init__(self, target: Target) -> None:
        try:
            contexts, active = config.list_kube_config_contexts(config_file=target.kubeconfig)
            chosen = (
                next((c for c in contexts if c["name"] == target.context), None) if target.context else active
            )
            if chosen is None:
                raise Unreachable(f"context {target.context!r} is not in the kubeconfig")
            self.namespace: str = target.namespace or chosen.get("context", {}).get("namespace") or "default"
            api = config.new_client_from_config(
                config_file=target.kubeconfig, context=target.context, persist_config=False
            )
        except (config.ConfigException, OSError) as exc:
            raise Unreachable(f"cannot load the kubeconfig: {exc}") from exc
        api.configuration.retries = 1
        if target.as_user or target.as_groups:
            api.rest_client.pool_manager = _Impersonating(
                api.rest_client.pool_manager, target.as_user, target.as_groups
            )
        self.server: str = api.configuration.host
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            said = _message(exc)
            if exc.status == 403 and "denied the request" not in said:
                raise Forbidden(said, 403) from exc
            if exc.status == 0:  # the client's own failures (TLS)
                raise Unreachable(f"{action}: {exc.reason}") from exc
            raise CallerError(f"{action}: {exc.status} {exc.reason}: {said}", exc.status, said) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unreachable(f"cannot reach the API server at {self.server}: {exc}") from exc

    def _get(self, action: str, fn: Callable[..., Any], *args: Any) -> Obj | None:
        try:
            found: Obj = self._call(action, fn, *args)
        except CallerError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    # ----------------------------------------------------------------- trainguard

    def get_job(self, namespace: str, name: str) -> Obj | None:
        return self._get(
            f"get trainingjob {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "trainingjobs",
            name,
        )

    def list_jobs(self, namespace: str | None) -> list[Obj]:
        """The namespace's TrainingJobs, or every namespace's (None)."""
        if namespace is None:
            found = self._call(
                "list trainingjobs in all namespaces",
                self._custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                "trainingjobs",
            )
        else:
            found = self._call(
                f"list trainingjobs in {namespace}",
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                "trainingjobs",
            )
        items: list[Obj] = found.get("items") or []
        return items

    def dry_run_create_job(self, namespace: str, body: Obj) -> tuple[Obj, list[str]]:
        """Create `body` with dryRun=All: the admission webhooks run as on `kubectl apply`,
        nothing is stored. The object as it would be stored, and the admission warnings."""
        try:
            response = self._call(
                f"create trainingjob in {namespace} (dry run)",
                self._custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                "trainingjobs",
                body,
                dry_run="All",
                _preload_content=False,
            )
        except CallerError as exc:
            if exc.status in (400, 403, 422) and not isinstance(exc, Forbidden):
                raise Refused(exc.server_message, exc.status) from exc
            raise
        warnings = [_warning_text(h) for h in response.headers.getlist("Warning")]
        stored: Obj = json.loads(response.data)
        return stored, warnings

    # ----------------------------------------------------------------- core

    def list_events(self, namespace: str) -> list[Obj]:
        found = self._call(
            f"list events in {namespace}", self._core.list_namespaced_event, namespace, _preload_content=False
        )
        items: list[Obj] = json.loads(found.data).get("items") or []
        return items

    # ----------------------------------------------------------------- Kueue

    def get_local_queue(self, namespace: str, name: str) -> Obj | None:
        return self._get(
            f"get localqueue {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            KUEUE_GROUP,
            KUEUE_VERSION,
            namespace,
            "localqueues",
            name,
        )

    def list_cluster_queues(self, selector: str = "") -> list[Obj]:
        found = self._call(
            "list clusterqueues",
            self._custom.list_cluster_custom_object,
            KUEUE_GROUP,
            KUEUE_VERSION,
            "clusterqueues",
            label_selector=selector,
        )
        items: list[Obj] = found.get("items") or []
        return items
