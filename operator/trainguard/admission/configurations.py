"""Pure builders of trainguard's admission webhook configurations."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trainguard.api.constants import (
    ANNOTATION_ADMITTED_IMAGE,
    GROUP,
    KUEUE_GROUP,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    TENANT_NAMESPACE_LABEL,
    VERSION,
)
from trainguard.policy.access import CLUSTER_ADMINS, CONTROLLER_MANAGER, KUBE_SYSTEM_ACCOUNTS, NODES

Manifest = dict[str, Any]
ADMIT_JOB = "admit-trainingjob"
VALIDATE_JOB = "validate-trainingjob"
POD_GUARD = "pod-guard"
POD_GUARD_EPHEMERAL = "pod-guard-ephemeral"
POD_CONNECT_GUARD = "pod-connect-guard"
NAMESPACE_GUARD = "namespace-guard"
TOKEN_GUARD = "token-guard"  # noqa: S105 - a webhook name, not a secret
KUEUE_GUARD = "kueue-guard"
KUEUE_QUEUE_GUARD = "kueue-queue-guard"
# Seconds the API server waits for each webhook, as the chart's default (`webhooks.timeoutSeconds`):
# a few, not Kubernetes' 10, so that a stuck operator refuses creates quickly instead of holding
# every client and API server request for 10 s. Image verification gives up a second earlier.
TIMEOUT_SECONDS = 5

# A create is decided whole by the mutating webhook (every rule, the image verified and pinned, the
# pinned image stamped on the job); the validating webhook sees the final object of a create only
# when it is not what the mutating webhook admitted: a mutating webhook that ran after trainguard's
# changed the image or the owner (and trainguard's reinvocation, `IfNeeded`, did not see it). Every
# update and delete is validated. One webhook call per create instead of two; the API server
# evaluates this in-process (CEL), before calling anything.
FINAL_OBJECT_CHANGED = (
    "request.operation != 'CREATE' || "
    "!has(object.metadata.annotations) || "
    f"!('{ANNOTATION_ADMITTED_IMAGE}' in object.metadata.annotations) || "
    f"object.metadata.annotations['{ANNOTATION_ADMITTED_IMAGE}'] != object.spec.image || "
    "!has(object.spec.owner) || object.spec.owner.user != request.userInfo.username"
)


@dataclass(frozen=True)
class Trusted:
    """Whose own requests the guards allow whatever they are: the operator (its job pods, its
    bookkeeping on jobs and namespaces, the Kueue objects it renders) and Kueue (its Workloads and
    LocalQueues). The webhooks' matchConditions leave those requests, and deletes by the cluster's
    own cleaners, to the API server alone: CEL, evaluated in-process, instead of a webhook round
    trip for each of a job's pod creates and deletes and its Workload's writes. Each condition
    skips only requests its handler allows (`policy.access`: is_operator, may_clean_up,
    kueue_refusal; `policy.pods.job_uid_of`); everything else still reaches the webhook."""

    operators: frozenset[str] = frozenset()
    kueue: frozenset[str] = frozenset()

    def match_conditions(self) -> dict[str, list[Manifest]]:
        """Each webhook's matchConditions, by webhook name (all must hold for it to be called)."""
        operators = _cel_list(sorted(self.operators))
        trusted = _cel_list([*sorted(self.operators), *sorted(self.kueue)])
        user = "request.userInfo.username"
        controllers = f"({user} == '{CONTROLLER_MANAGER}' || {user}.startsWith('{KUBE_SYSTEM_ACCOUNTS}'))"
        groups = f"request.userInfo.groups.exists(g, g == '{CLUSTER_ADMINS}' || g == '{NODES}')"
        cleaner = f"({user} in {operators} || {controllers} || (has(request.userInfo.groups) && {groups}))"
        deleted = f"(request.operation == 'DELETE' && {cleaner})"
        kueue = [
            {
                "name": "not-trainguard-or-kueue",
                "expression": f"!({user} in {trusted} || {controllers} || {deleted})",
            }
        ]
        return {
            VALIDATE_JOB: [
                {"name": "not-as-admitted", "expression": FINAL_OBJECT_CHANGED},
                {
                    "name": "not-the-operators-bookkeeping",
                    "expression": f"!(request.operation == 'UPDATE' && {user} in {operators}) && !{deleted}",
                },
            ],
            POD_GUARD: [
                {
                    "name": "not-the-operators-job-pods",
                    "expression": (
                        f"!({user} in {operators} && ({_job_pod('object')} || {_job_pod('oldObject')}))"
                    ),
                },
                {
                    # A pod that is not a job's, or one already terminating, may go; so may a job's
                    # pod when a cleaner deletes it (garbage collection, namespace deletion, nodes).
                    "name": "not-a-cleanup-delete",
                    "expression": (
                        f"request.operation != 'DELETE' || ({_job_pod('oldObject')} && "
                        f"!has(oldObject.metadata.deletionTimestamp) && !{cleaner})"
                    ),
                },
            ],
            KUEUE_GUARD: kueue,
            KUEUE_QUEUE_GUARD: kueue,
            NAMESPACE_GUARD: [{"name": "not-the-operator", "expression": f"!({user} in {operators})"}],
        }


def _cel_list(values: Iterable[str]) -> str:
    """A CEL list literal of strings (JSON's syntax is CEL's; compact, as Helm's toJson writes it)."""
    return json.dumps(list(values), separators=(",", ":"))


def _job_pod(var: str) -> str:
    """`policy.pods.is_job_pod` in CEL: trainguard's label and a TrainingJob as controlling owner
    (`var` is null for the object of a DELETE and the oldObject of a CREATE)."""
    meta = f"{var}.metadata"
    return (
        f"({var} != null && has({meta}.labels) && '{LABEL_MANAGED_BY}' in {meta}.labels && "
        f"{meta}.labels['{LABEL_MANAGED_BY}'] == '{MANAGED_BY}' && has({meta}.ownerReferences) && "
        f"{meta}.ownerReferences.exists(r, r.kind == 'TrainingJob' && has(r.controller) && r.controller))"
    )


@dataclass(frozen=True)
class Endpoint:
    """Where the API server reaches the webhooks: a URL, or (in a cluster) a Service."""

    ca_bundle: str
    url_base: str | None = None
    service_namespace: str | None = None
    service_name: str | None = None
    service_port: int = 443

    def client_config(self, path: str) -> Manifest:
        if self.service_name:
            service = {
                "namespace": self.service_namespace,
                "name": self.service_name,
                "port": self.service_port,
                "path": f"/{path}",
            }
            return {"service": service, "caBundle": self.ca_bundle}
        assert self.url_base, "an endpoint needs a URL or a service"
        return {"url": f"{self.url_base.rstrip('/')}/{path}", "caBundle": self.ca_bundle}


def _webhook(
    name: str,
    endpoint: Endpoint,
    rules: list[Manifest],
    tenant_namespaces_only: bool,
    conditions: dict[str, list[Manifest]] | None = None,
) -> Manifest:
    hook: Manifest = {
        "name": f"{name}.trainguard.dev",
        "clientConfig": endpoint.client_config(name),
        "rules": rules,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",  # fail closed: no verdict, no admission
        "matchPolicy": "Equivalent",
        "timeoutSeconds": TIMEOUT_SECONDS,
    }
    if tenant_namespaces_only:
        hook["namespaceSelector"] = {
            "matchExpressions": [{"key": TENANT_NAMESPACE_LABEL, "operator": "Exists"}]
        }
    if conditions and name in conditions:
        hook["matchConditions"] = conditions[name]
    return hook


def _rule(group: str, version: str, resources: list[str], operations: list[str]) -> Manifest:
    return {"apiGroups": [group], "apiVersions": [version], "resources": resources, "operations": operations}


def build_webhook_configurations(name: str, endpoint: Endpoint, trusted: Trusted) -> list[Manifest]:
    """The mutating and validating configurations pointing at the operator's webhook server."""
    conditions = trusted.match_conditions()
    creates = _rule(GROUP, VERSION, ["trainingjobs"], ["CREATE"])
    jobs_and_deletes = _rule(GROUP, VERSION, ["trainingjobs"], ["CREATE", "UPDATE", "DELETE"])
    labels = {LABEL_MANAGED_BY: MANAGED_BY}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": [
            {
                **_webhook(ADMIT_JOB, endpoint, [creates], False),
                # Called again when a later mutating webhook changed the job: what it changed is
                # checked with every rule before the create goes on.
                "reinvocationPolicy": "IfNeeded",
            }
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": [
            _webhook(VALIDATE_JOB, endpoint, [jobs_and_deletes], False, conditions),
            _webhook(
                POD_GUARD,
                endpoint,
                [_rule("", "v1", ["pods"], ["CREATE", "UPDATE", "DELETE"])],
                True,
                conditions,
            ),
            _webhook(
                POD_GUARD_EPHEMERAL,
                endpoint,
                [_rule("", "v1", ["pods/ephemeralcontainers"], ["UPDATE"])],
                True,
            ),
            _webhook(
                POD_CONNECT_GUARD,
                endpoint,
                [_rule("", "v1", ["pods/exec", "pods/attach", "pods/portforward"], ["CONNECT"])],
                True,
            ),
            _webhook(
                TOKEN_GUARD,
                endpoint,
                [_rule("", "v1", ["serviceaccounts/token"], ["CREATE"])],
                True,
            ),
            _webhook(
                KUEUE_GUARD,
                endpoint,
                [_rule(KUEUE_GROUP, "*", ["localqueues", "workloads"], ["CREATE", "UPDATE", "DELETE"])],
                True,
                conditions,
            ),
            {
                **_webhook(
                    KUEUE_QUEUE_GUARD,
                    endpoint,
                    [
                        _rule(
                            KUEUE_GROUP,
                            "*",
                            ["clusterqueues", "cohorts", "resourceflavors"],
                            ["UPDATE", "DELETE"],
                        )
                    ],
                    False,
                    conditions,
                ),
                "objectSelector": {"matchLabels": {LABEL_MANAGED_BY: MANAGED_BY}},
            },
            {
                # Selected by the object, old or new: an update that removes the label is seen.
                **_webhook(
                    NAMESPACE_GUARD,
                    endpoint,
                    [_rule("", "v1", ["namespaces"], ["UPDATE"])],
                    False,
                    conditions,
                ),
                "objectSelector": {
                    "matchExpressions": [{"key": TENANT_NAMESPACE_LABEL, "operator": "Exists"}]
                },
            },
        ],
    }
    return [mutating, validating]
