"""A job's integrity key against someone who holds the built-in `edit` role in the tenant's
namespace (platform teams hand it out): the key is not in that namespace, the operator hands it
only to a pod trainguard made for the job, each pod once, and goes with the job.

Real API server: real RBAC (the chart's, for the operator), real TokenRequest and TokenReview.
The test plays the kubelet: it mints the pod-bound tokens the kubelet would project into the
sidecars (kwok runs no containers)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.harness import RELEASE_NAMESPACE, OperatorProcess, TenantSpace, service_account_kubeconfig
from e2e.cluster.integrity import SidecarProcess
from e2e.cluster.integrity_keys import events, job_pods, key_url, mint_token, pod_token, request_key
from e2e.cluster.localcluster import Cluster
from e2e.cluster.waiting import free_port, wait_for
from trainguard.integrity.reports import sign_report

KEY_REQUESTS = "trainguard_integrity_key_requests_total"


def job(space: TenantSpace, name: str) -> dict[str, Any]:
    return space.job(name, replicas=2, integrity={"mode": "Enforce"})


def editor(space: TenantSpace) -> list[str]:
    """A user bound to the built-in `edit` ClusterRole in the tenant's namespace: kubectl flags."""
    user = f"editor-{space.tenant.removeprefix('tenant-')}"
    space.cluster.kubectl(
        "create", "rolebinding", user, "--clusterrole=edit", f"--user={user}", "-n", space.namespace
    )
    flags = ["--as", user]
    wait_for("the editor's binding", lambda: can_i(space, flags, "create", "serviceaccounts/token"))
    return flags


def can_i(space: TenantSpace, flags: list[str], verb: str, resource: str, namespace: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, "-n", namespace or space.namespace, *flags]
    return space.cluster.kubectl(*args, check=False).stdout.strip() == "yes"


# What a forger would send (in Enforce mode, it would stop the job), and a harmless report.
SEQUENCE = itertools.count(1)
VIOLATION = {"replica": 0, "kind": "Violation", "step": 1, "violation": "X", "message": "x", "time": 0.0}
REGISTERED = {
    "replica": 0,
    "kind": "Registered",
    "region": "parameters@cpu",
    "tensors": 1,
    "bytes": 4,
    "time": 0.0,
}


def post_report(
    operator: OperatorProcess, space: TenantSpace, name: str, key: bytes, report: dict[str, Any] = VIOLATION
) -> int:
    # Every report names its job (uid) and attempt and its place in its sidecar's sequence.
    uid = space.get("trainingjob", name)["metadata"]["uid"]
    stamped = {"job": uid, "attempt": 0, "boot": "0" * 16, "seq": next(SEQUENCE), **report}
    request = urllib.request.Request(  # noqa: S310 - the operator on loopback
        f"{operator.integrity_url}/{space.namespace}/{name}",
        data=json.dumps(sign_report(key, stamped)).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - the operator on loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def conditions(space: TenantSpace, name: str) -> dict[str, dict[str, Any]]:
    status = space.get("trainingjob", name).get("status", {})
    return {c["type"]: c for c in status.get("conditions", [])}


def key_secret(cluster: Cluster, uid: str) -> dict[str, Any] | None:
    """The job's key Secret in the operator's namespace, as the cluster admin sees it."""
    got = cluster.kubectl(
        "get", "secret", f"integrity-key-{uid}", "-n", RELEASE_NAMESPACE, "-o", "json", check=False
    )
    return json.loads(got.stdout) if got.returncode == 0 else None


def test_an_editor_reads_no_key_and_gets_no_report_accepted(
    tenant_space: TenantSpace, operator: OperatorProcess
) -> None:
    space = tenant_space
    as_editor = editor(space)
    space.apply(job(space, "target"))
    pods = job_pods(space, "target", 2)
    uid = space.get("trainingjob", "target")["metadata"]["uid"]
    url = key_url(operator.integrity_url, space, "target")
    assert key_secret(space.cluster, uid) is not None, "the key exists, in the operator's namespace"

    # Nothing of the key in the tenant's namespace; the operator's namespace is closed to him.
    visible = json.loads(
        space.cluster.kubectl("get", "secrets", "-n", space.namespace, "-o", "json", *as_editor).stdout
    )
    assert [s["metadata"]["name"] for s in visible["items"]] == []
    for args in (["get", "secrets"], ["get", "secret", f"integrity-key-{uid}"]):
        denied = space.cluster.kubectl(*args, "-n", RELEASE_NAMESPACE, *as_editor, check=False)
        assert denied.returncode != 0
        assert "forbidden" in denied.stderr.lower()
    assert not [v for p in pods for v in p["spec"]["volumes"] if "secret" in v], "no pod mounts a key"

    # Replica 0's sidecar shows its pod's token and gets the key.
    status, answer = request_key(url, pod_token(space, "target", pods[0]))
    assert status == 200, answer
    assert isinstance(answer, dict)
    key = base64.b64decode(answer["key"])
    delivered = wait_for("IntegrityKeyDelivered", lambda: events(space, "IntegrityKeyDelivered"))
    assert len(delivered) == 1
    assert delivered[0].startswith(
        f"Normal: delivered the integrity key to pod {pods[0]['metadata']['name']} "
    )
    assert post_report(operator, space, "target", key, REGISTERED) == 202  # the control: the key works

    # Any key the editor can make is not the job's: his reports are refused.
    for made_up in (os.urandom(32), bytes(32)):
        assert post_report(operator, space, "target", made_up) == 403

    # RBAC (edit) lets him ask for tokens, but not of a job's service account: the token guard
    # leaves those to the kubelet.
    assert can_i(space, as_editor, "create", "serviceaccounts/token"), "edit may mint tokens"
    for pod in (None, pods[1]):
        minted, refusal = mint_token(space, "target-runner", pod, *as_editor)
        assert minted != 0, "an editor minted a token of the job's service account"
        assert 'admission webhook "token-guard.trainguard.dev" denied the request' in refusal
        assert "are minted by the kubelet for the job's own pods only" in refusal

    # Tokens that are not bound to a pod of the job prove nothing, however obtained (here: minted
    # by the cluster admin, as a stolen one would be).
    minted, unbound = mint_token(space, "target-runner", None)
    assert minted == 0, unbound
    status, text = request_key(url, unbound)
    assert status == 403
    assert "bound to no pod" in str(text)
    minted, wrong_audience = mint_token(
        space, "target-runner", pods[1], audience="https://kubernetes.default.svc"
    )
    assert minted == 0, wrong_audience
    status, text = request_key(url, wrong_audience)
    assert status in (401, 403), text
    minted, other_account = mint_token(space, "default", None, *as_editor)
    assert minted == 0, other_account
    status, text = request_key(url, other_account)
    assert status == 403
    assert "not the job's ServiceAccount" in str(text)
    assert request_key(url, None)[0] == 401
    refused = wait_for("IntegrityKeyRefused", lambda: events(space, "IntegrityKeyRefused"))
    assert all(r.startswith("Warning: ") for r in refused)
    assert any("bound to no pod" in r for r in refused), refused

    # A token bound to a real job pod (a node's credentials could mint it) for a pod whose sidecar
    # already has the key: refused, and recorded with both tokens named.
    minted, stolen = mint_token(space, "target-runner", pods[0])
    assert minted == 0, stolen
    status, text = request_key(url, stolen)
    assert status == 409, text
    twice = wait_for("IntegrityKeyRequestedTwice", lambda: events(space, "IntegrityKeyRequestedTwice"))
    assert len(twice) == 1
    assert twice[0].startswith(
        f"Warning: pod {pods[0]['metadata']['name']} (uid {pods[0]['metadata']['uid']})"
    )
    assert twice[0].count("token JTI=") == 2, twice[0]

    assert operator.metric(KEY_REQUESTS, outcome="delivered") >= 1
    assert operator.metric(KEY_REQUESTS, outcome="not_pod_bound") >= 1
    assert operator.metric(KEY_REQUESTS, outcome="requested_twice") >= 1
    assert "IntegrityViolation" not in conditions(space, "target"), "nothing he did was taken as a report"


def test_a_thief_who_asks_first_is_seen_and_the_pod_gets_no_key(
    tenant_space: TenantSpace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """The residual risk: whoever holds a node's (or a cluster admin's) power to mint a token bound
    to a job pod whose sidecar has not asked yet gets the key, but never silently: the sidecar is
    refused and exits (its startup probe fails, the trainer never starts) and the Warning names
    both requests. (Tenant roles cannot mint such tokens: the token guard refuses them.)"""
    space = tenant_space
    as_editor = editor(space)
    space.apply(job(space, "raced"))
    pods = job_pods(space, "raced", 2)
    url = key_url(operator.integrity_url, space, "raced")
    minted, refused = mint_token(space, "raced-runner", pods[1], *as_editor)
    assert minted != 0, "an editor minted a token of the job's service account"
    assert "token-guard.trainguard.dev" in refused
    minted, stolen = mint_token(space, "raced-runner", pods[1])
    assert minted == 0, stolen
    status, _ = request_key(url, stolen)
    assert status == 200, "the residual risk: the first request for a pod gets the key"

    sidecar = SidecarProcess(
        tmp_path / "r1", replica=1, key_url=url, token=pod_token(space, "raced", pods[1])
    )
    with pytest.raises(AssertionError, match="the sidecar exited with 3") as caught:
        sidecar.start()
    assert "409" in str(caught.value)
    twice = wait_for("IntegrityKeyRequestedTwice", lambda: events(space, "IntegrityKeyRequestedTwice"))
    assert pods[1]["metadata"]["name"] in twice[0]


def test_a_secret_an_editor_made_before_the_job_is_never_its_key(
    tenant_space: TenantSpace, operator: OperatorProcess, tmp_path: Path
) -> None:
    space = tenant_space
    as_editor = editor(space)
    planted = os.urandom(32)
    space.cluster.kubectl(
        "create", "secret", "generic", "early-integrity", "-n", space.namespace,
        f"--from-literal=key={base64.b64encode(planted).decode()}", *as_editor,
    )  # fmt: skip
    space.apply(job(space, "early"))
    pods = job_pods(space, "early", 2)

    url = key_url(operator.integrity_url, space, "early")
    sidecar = SidecarProcess(
        tmp_path / "r0", replica=0, key_url=url, token=pod_token(space, "early", pods[0])
    )
    sidecar.start()  # it got a key: its socket is up
    sidecar.stop()
    status, answer = request_key(url, pod_token(space, "early", pods[1]))
    assert status == 200, answer
    assert isinstance(answer, dict)
    key = base64.b64decode(answer["key"])
    assert key != planted
    assert key != base64.b64encode(planted)
    assert post_report(operator, space, "early", planted) == 403
    assert post_report(operator, space, "early", key, REGISTERED) == 202
    assert not [v for p in pods for v in p["spec"]["volumes"] if "secret" in v]
    wait_for("the job to run", lambda: conditions(space, "early").get("Running", {}).get("status") == "True")
    assert "IntegrityViolation" not in conditions(space, "early")


def test_the_key_goes_with_its_job_and_orphans_are_swept_at_start(
    tenant_space: TenantSpace, operator: OperatorProcess, helm_release: Cluster, tmp_path: Path
) -> None:
    space = tenant_space
    space.apply(job(space, "brief"))
    uid = space.get("trainingjob", "brief")["metadata"]["uid"]
    secret = wait_for("the job's key", lambda: key_secret(space.cluster, uid))
    labels = secret["metadata"]["labels"]
    assert labels["trainguard.dev/job-namespace"] == space.namespace
    assert labels["trainguard.dev/job-name"] == "brief"
    assert labels["trainguard.dev/job-uid"] == uid
    assert "ownerReferences" not in secret["metadata"]
    space.cluster.kubectl("delete", "trainingjob", "brief", "-n", space.namespace)
    wait_for("the key to go with its job", lambda: key_secret(space.cluster, uid) is None)

    # A key whose job was deleted while no operator ran: the next operator to start removes it.
    orphan = str(uuid.uuid4())
    space.cluster.kubectl(
        "create", "secret", "generic", f"integrity-key-{orphan}", "-n", RELEASE_NAMESPACE,
        "--from-literal=key=x",
    )  # fmt: skip
    space.cluster.kubectl(
        "label", "secret", f"integrity-key-{orphan}", "-n", RELEASE_NAMESPACE,
        "app.kubernetes.io/managed-by=trainguard", "app.kubernetes.io/component=integrity-key",
        f"trainguard.dev/job-uid={orphan}",
    )  # fmt: skip
    kubeconfig = service_account_kubeconfig(helm_release, tmp_path, RELEASE_NAMESPACE, "trainguard")
    starting = OperatorProcess(tmp_path / "operator.log", ["sweep-none-*"], kubeconfig, admission=False)
    try:
        starting.start()
        wait_for("the orphaned key to be swept", lambda: key_secret(space.cluster, orphan) is None)
    finally:
        starting.stop()
        space.cluster.kubectl(
            "delete", "secret", f"integrity-key-{orphan}", "-n", RELEASE_NAMESPACE, check=False
        )


def test_an_operator_that_restarted_still_hands_each_pod_its_key_once(
    tenant_space: TenantSpace, operator: OperatorProcess, helm_release: Cluster, tmp_path: Path
) -> None:
    """Which pods got the key is kept with the key (an annotation of its Secret), so an operator
    with an empty memory (restarted, or another instance) refuses a second request all the same."""
    space = tenant_space
    space.apply(job(space, "kept"))
    pods = job_pods(space, "kept", 2)
    uid = space.get("trainingjob", "kept")["metadata"]["uid"]
    status, _ = request_key(key_url(operator.integrity_url, space, "kept"), pod_token(space, "kept", pods[0]))
    assert status == 200
    secret = key_secret(space.cluster, uid)
    assert secret is not None
    recorded = json.loads(
        secret["metadata"]["annotations"][f"delivered.trainguard.dev/{pods[0]['metadata']['uid']}"]
    )
    assert recorded["pod"] == pods[0]["metadata"]["name"]
    assert recorded["credential"].startswith("JTI=")

    kubeconfig = service_account_kubeconfig(helm_release, tmp_path, RELEASE_NAMESPACE, "trainguard")
    fresh = OperatorProcess(tmp_path / "operator.log", ["restarted-none-*"], kubeconfig, admission=False)
    fresh.integrity_port = free_port()  # its own key endpoint, nothing in memory
    fresh.extra_args = ("--integrity-port", str(fresh.integrity_port))
    try:
        fresh.start()
        url = key_url(fresh.integrity_url, space, "kept")
        status, text = request_key(url, pod_token(space, "kept", pods[0]))
        assert status == 409, text
        assert recorded["credential"] in str(text)
        status, _ = request_key(url, pod_token(space, "kept", pods[1]))
        assert status == 200, "a pod that never asked still gets its key"
    finally:
        fresh.stop()
