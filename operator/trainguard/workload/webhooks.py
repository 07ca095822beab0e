"""Pure builders of trainguard's admission webhook configurations."""

from __future__ import annotations

from trainguard.api.models import GROUP, VERSION
from trainguard.workload.builders import MANAGED_BY, Manifest

TENANT_NAMESPACE_LABEL = "trainguard.dev/tenant"
PIN_IMAGE = "pin-image"
VALIDATE_JOB = "validate-trainingjob"
POD_GUARD = "pod-guard"
POD_GUARD_EPHEMERAL = "pod-guard-ephemeral"
POD_CONNECT_GUARD = "pod-connect-guard"
TIMEOUT_SECONDS = 10


def _webhook(
    name: str, url: str, ca_bundle: str, rules: list[Manifest], tenant_namespaces_only: bool
) -> Manifest:
    hook: Manifest = {
        "name": f"{name}.trainguard.dev",
        "clientConfig": {"url": url, "caBundle": ca_bundle},
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
    return hook


def _rule(group: str, version: str, resources: list[str], operations: list[str]) -> Manifest:
    return {"apiGroups": [group], "apiVersions": [version], "resources": resources, "operations": operations}


def build_webhook_configurations(name: str, url_base: str, ca_bundle: str) -> list[Manifest]:
    """The mutating and validating configurations pointing at the operator's webhook server."""
    url = url_base.rstrip("/")
    jobs = _rule(GROUP, VERSION, ["trainingjobs"], ["CREATE", "UPDATE"])
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": [
            {
                **_webhook(PIN_IMAGE, f"{url}/{PIN_IMAGE}", ca_bundle, [jobs], False),
                "reinvocationPolicy": "Never",
            }
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": [
            _webhook(VALIDATE_JOB, f"{url}/{VALIDATE_JOB}", ca_bundle, [jobs], False),
            _webhook(
                POD_GUARD,
                f"{url}/{POD_GUARD}",
                ca_bundle,
                [_rule("", "v1", ["pods"], ["CREATE", "UPDATE", "DELETE"])],
                True,
            ),
            _webhook(
                POD_GUARD_EPHEMERAL,
                f"{url}/{POD_GUARD_EPHEMERAL}",
                ca_bundle,
                [_rule("", "v1", ["pods/ephemeralcontainers"], ["UPDATE"])],
                True,
            ),
            _webhook(
                POD_CONNECT_GUARD,
                f"{url}/{POD_CONNECT_GUARD}",
                ca_bundle,
                [_rule("", "v1", ["pods/exec", "pods/attach"], ["CONNECT"])],
                True,
            ),
        ],
    }
    return [mutating, validating]
