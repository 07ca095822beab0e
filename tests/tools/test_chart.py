"""The chart as `helm template` renders it: the webhook configurations agree with what the operator
builds for itself (`admission/configurations.py`), their TLS both ways (cert-manager or the chart's
own CA), admission in several replicas with a disruption budget, hardened pods, RBAC without
wildcards, and the values schema refusing what it does not know."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from e2e.cluster.localcluster import bin_dir
from trainguard.admission.configurations import Endpoint, Trusted, build_webhook_configurations

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "trainguard"
VERSIONS = (ROOT / "e2e" / "cluster" / "versions.env").read_text()
K8S_VERSION = next(line.split("=", 1)[1] for line in VERSIONS.splitlines() if line.startswith("K8S_VERSION="))
NAMESPACE = "trainguard-system"
KUEUE_USERS = frozenset(yaml.safe_load((CHART / "values.yaml").read_text())["quota"]["kueueUsers"])

Manifest = dict[str, Any]


def helm_template(*values: str) -> subprocess.CompletedProcess[str]:
    helm = bin_dir() / "helm"
    if not helm.exists():
        pytest.fail(f"{helm} is missing: run `make build` (e2e/cluster/build.sh) first", pytrace=False)
    argv = [str(helm), "template", "trainguard", str(CHART), "--namespace", NAMESPACE]
    argv += ["--kube-version", K8S_VERSION, "--set", "kueue.enabled=false"]
    for value in values:
        argv += ["--set", value]
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)


def render(*values: str) -> list[Manifest]:
    result = helm_template(*values)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def configurations(docs: list[Manifest]) -> dict[str, Manifest]:
    return {
        d["kind"]: d
        for d in docs
        if d["kind"] in {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
    }


# --------------------------------------------------------------------------- webhooks


# What decides which requests reach which webhook, and how: everything but where it is served.
COMPARED = (
    "rules",
    "namespaceSelector",
    "objectSelector",
    "reinvocationPolicy",
    "matchConditions",
    "matchPolicy",
    "sideEffects",
    "failurePolicy",
    "admissionReviewVersions",
)


def _routing(configuration: Manifest) -> dict[str, dict[str, Any]]:
    return {hook["name"]: {key: hook.get(key) for key in COMPARED} for hook in configuration["webhooks"]}


def test_chart_webhooks_match_the_ones_the_operator_builds() -> None:
    built = {
        c["kind"]: c
        for c in build_webhook_configurations(
            "trainguard",
            Endpoint("", service_namespace="ns", service_name="svc"),
            Trusted(frozenset({f"system:serviceaccount:{NAMESPACE}:trainguard"}), KUEUE_USERS),
        )
    }
    rendered = configurations(render())
    assert set(rendered) == set(built)
    for kind, configuration in built.items():
        assert _routing(rendered[kind]) == _routing(configuration), kind
        paths = {h["name"]: h["clientConfig"]["service"]["path"] for h in configuration["webhooks"]}
        assert {h["name"]: h["clientConfig"]["service"]["path"] for h in rendered[kind]["webhooks"]} == paths


def test_webhooks_fail_closed_with_a_short_timeout_and_no_side_effects() -> None:
    for timeout, values in ((5, ()), (3, ("webhooks.timeoutSeconds=3",))):
        docs = render(*values)
        for configuration in configurations(docs).values():
            for hook in configuration["webhooks"]:
                assert hook["failurePolicy"] == "Fail"
                assert hook["sideEffects"] == "None"
                assert hook["timeoutSeconds"] == timeout
        pod = one(docs, "Deployment", "trainguard-webhook")["spec"]["template"]["spec"]
        env = pod["containers"][0]["env"]
        verify = next(e["value"] for e in env if e["name"] == "TRAINGUARD_VERIFY_TIMEOUT_SECONDS")
        assert int(verify) == timeout - 1, "a verification gives up before the API server does"


def test_webhooks_reach_the_service_or_a_url() -> None:
    for hook in configurations(render())["ValidatingWebhookConfiguration"]["webhooks"]:
        service = hook["clientConfig"]["service"]
        assert service == {**service, "namespace": NAMESPACE, "name": "trainguard-webhook", "port": 9443}
    docs = render("webhooks.url=https://127.0.0.1:27999")
    for configuration in configurations(docs).values():
        for hook in configuration["webhooks"]:
            name = hook["name"].removesuffix(".trainguard.dev")
            assert hook["clientConfig"]["url"] == f"https://127.0.0.1:27999/{name}"
            assert "service" not in hook["clientConfig"]
    # The generated certificate names that address too.
    secret = one(docs, "Secret", "trainguard-webhook-tls")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert f"trainguard-webhook.{NAMESPACE}.svc" in sans.get_values_for_type(x509.DNSName)


def test_generated_tls_injects_the_ca_that_signed_the_serving_certificate() -> None:
    docs = render()
    secret = one(docs, "Secret", "trainguard-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    serving = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    serving.verify_directly_issued_by(ca)
    for configuration in configurations(docs).values():
        assert "cert-manager.io/inject-ca-from" not in (configuration["metadata"].get("annotations") or {})
        for hook in configuration["webhooks"]:
            assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    pod = one(docs, "Deployment", "trainguard-webhook")["spec"]["template"]
    assert pod["spec"]["volumes"][0]["secret"]["secretName"] == "trainguard-webhook-tls"
    assert "checksum/webhook-tls" in pod["metadata"]["annotations"], "a new certificate rolls the pods"


def test_cert_manager_issues_the_certificate_and_injects_its_ca() -> None:
    docs = render("certManager.enabled=true")
    assert not [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "trainguard-webhook-tls"
    ]
    certificate = one(docs, "Certificate", "trainguard-webhook")
    assert certificate["spec"]["secretName"] == "trainguard-webhook-tls"
    assert f"trainguard-webhook.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"] == {"kind": "Issuer", "name": "trainguard-webhook-ca"}
    one(docs, "Issuer", "trainguard-selfsigned")
    for configuration in configurations(docs).values():
        assert configuration["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{NAMESPACE}/trainguard-webhook"
        }
        for hook in configuration["webhooks"]:
            assert "caBundle" not in hook["clientConfig"], "cert-manager injects it"
    # A platform's own issuer replaces the chart's self-signed one.
    docs = render(
        "certManager.enabled=true",
        "certManager.issuerRef.kind=ClusterIssuer",
        "certManager.issuerRef.name=platform",
    )
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "platform"}
    assert not [d for d in docs if d["kind"] == "Issuer"]


def test_operator_managed_webhooks_render_no_configurations() -> None:
    docs = render("webhooks.managedBy=operator")
    assert configurations(docs) == {}
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"] == [
        "trainguard-operator"
    ]
    # The operator serves admission itself: only the replica that leads runs, so only it is called.
    selector = one(docs, "Service", "trainguard-webhook")["spec"]["selector"]
    assert selector["trainguard.dev/reconciler-leader"] == "true"
    operator = one(docs, "Deployment", "trainguard-operator")["spec"]["template"]["spec"]["containers"][0]
    assert "--webhook-port=9443" in operator["args"]
    rules = one(docs, "ClusterRole", "trainguard-operator")["rules"]
    assert any("validatingwebhookconfigurations" in r["resources"] for r in rules)


# --------------------------------------------------------------------------- availability


def test_admission_runs_in_two_spread_replicas_with_a_disruption_budget() -> None:
    docs = render()
    webhook = one(docs, "Deployment", "trainguard-webhook")
    assert webhook["spec"]["replicas"] == 2
    assert webhook["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = webhook["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    args = pod["containers"][0]["args"]
    assert {"--role=admission", "--webhooks=chart", "--log-format=json"} <= set(args)
    pdb = one(docs, "PodDisruptionBudget", "trainguard-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == webhook["spec"]["selector"]["matchLabels"]
    # The Service sends the API server's calls to the admission pods, never to the reconciler.
    service = one(docs, "Service", "trainguard-webhook")
    assert service["spec"]["selector"] == webhook["spec"]["selector"]["matchLabels"]
    operator = one(docs, "Deployment", "trainguard-operator")
    assert "--webhook-port=0" in operator["spec"]["template"]["spec"]["containers"][0]["args"]
    selector = operator["spec"]["selector"]["matchLabels"]
    assert not set(selector.items()) <= set(webhook["spec"]["template"]["metadata"]["labels"].items())
    # One replica: no budget, which would block every drain of its node.
    assert not [
        d for d in render("webhooks.replicaCount=1", "replicaCount=1") if d["kind"] == "PodDisruptionBudget"
    ]


def test_the_reconciler_runs_two_replicas_one_leading_by_a_lease() -> None:
    docs = render("leaderElection.leaseDuration=8", "leaderElection.renewDeadline=5")
    operator = one(docs, "Deployment", "trainguard-operator")
    assert operator["spec"]["replicas"] == 2
    # A rolling update never waits on standbys, and never runs two leaders (the Lease decides).
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = operator["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    container = pod["containers"][0]
    assert {
        "--leader-elect",
        "--lease-duration=8",
        "--lease-renew-deadline=5",
        "--lease-retry=2",
        "--log-format=json",
    } <= set(container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["TRAINGUARD_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert one(docs, "PodDisruptionBudget", "trainguard-operator")["spec"]["minAvailable"] == 1
    # Sidecars' reports reach the leader only: the replica holding the Lease labels its pod.
    integrity = one(docs, "Service", "trainguard-integrity")
    assert integrity["spec"]["selector"]["trainguard.dev/reconciler-leader"] == "true"
    role = one(docs, "Role", "trainguard-leader-election")
    lease_rule = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    assert {**lease_rule, "resourceNames": ["trainguard-reconciler"], "verbs": ["get", "update"]} in role[
        "rules"
    ]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]} in role["rules"]
    binding = one(docs, "RoleBinding", "trainguard-leader-election")
    assert binding["subjects"][0]["name"] == "trainguard"


def test_every_pod_is_hardened_and_bounded() -> None:
    for deployment in (d for d in render() if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert set(container["resources"]) == {"requests", "limits"}
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])


# --------------------------------------------------------------------------- RBAC and values


def test_rbac_has_no_wildcards() -> None:
    for values in ((), ("webhooks.managedBy=operator",)):
        for role in (d for d in render(*values) if d["kind"] in {"ClusterRole", "Role"}):
            for rule in role["rules"]:
                for key in ("verbs", "resources", "apiGroups"):
                    assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: {rule}"


def test_schema_refuses_a_misspelled_value() -> None:
    for value in (
        "webhooks.timeoutSecond=3",
        "certManager.enable=true",
        "webhooks.managedBy=helm",
        "leaderElection.leaseDuraton=5",
        "operator.logFormat=yaml",
    ):
        result = helm_template(value)
        assert result.returncode != 0, value
        assert "schema" in result.stderr, result.stderr
    assert helm_template("webhooks.timeoutSeconds=60").returncode != 0, "above the API server's 30 s"
