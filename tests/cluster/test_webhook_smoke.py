"""The admission webhook path end to end: API server -> kopf webhook over TLS on loopback -> kubectl."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import kopf.testing
import pytest

from e2e.cluster import pki
from e2e.cluster.localcluster import LOOPBACK, Cluster
from e2e.cluster.waiting import free_port, port_listening, wait_for

OPERATOR = Path(__file__).with_name("smoke_webhook_operator.py")


@pytest.fixture
def smoke_webhook(
    cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    ca = pki.ensure_ca(tmp_path, "webhook-ca")
    serving = pki.ensure_leaf(tmp_path, "webhook", ca, common_name="smoke-webhook", server_names=(LOOPBACK,))
    port = free_port()
    monkeypatch.setenv("SMOKE_WEBHOOK_PORT", str(port))
    monkeypatch.setenv("SMOKE_WEBHOOK_CERT", str(serving.cert))
    monkeypatch.setenv("SMOKE_WEBHOOK_KEY", str(serving.key))
    monkeypatch.setenv("SMOKE_WEBHOOK_CA", str(ca.cert))
    name = f"smoke-{namespace}"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "smoke.trainguard.dev",
                "clientConfig": {
                    "url": f"https://{LOOPBACK}:{port}/smoke-deny-forbidden",
                    "caBundle": base64.b64encode(ca.cert.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
            }
        ],
    }
    args = ["run", "--standalone", "--namespace", namespace, str(OPERATOR)]
    with kopf.testing.KopfRunner(args, timeout=60) as runner:
        wait_for("the webhook to listen", lambda: port_listening(LOOPBACK, port))
        cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
        yield namespace
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, check=False)
    assert runner.exception is None, runner.output


def configmap(name: str, mode: str) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"mode": mode}}
    )


def test_kubectl_apply_shows_the_webhook_handlers_message(cluster: Cluster, smoke_webhook: str) -> None:
    ns = smoke_webhook
    denied = cluster.kubectl("apply", "-n", ns, "-f", "-", input=configmap("bad", "forbidden"), check=False)
    assert denied.returncode != 0
    assert 'admission webhook "smoke.trainguard.dev" denied the request' in denied.stderr
    assert (
        "data.mode: 'forbidden' is not allowed by the smoke-test webhook; set data.mode to 'allowed'"
        in denied.stderr
    )
    assert cluster.kubectl("get", "configmap", "bad", "-n", ns, check=False).returncode != 0

    allowed = cluster.kubectl("apply", "-n", ns, "-f", "-", input=configmap("good", "allowed"))
    assert "configmap/good created" in allowed.stdout
