"""The saboteur is a teammate: a job is isolated from the rest of its own tenant.

Four identities act through kubectl against the real API server and the operator's webhooks:
the job's owner, another member of the same tenant, a tenant admin, and a member of another
tenant. What decides a run cannot change for anyone; a job is deleted only by its owner, its
collaborators and the tenant's admins; only the owner and collaborators get into its trainer.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.harness import OperatorProcess, SignedImage, TenantSpace, make_tenant
from e2e.cluster.localcluster import Cluster
from e2e.cluster.registry import Registry
from e2e.cluster.waiting import wait_for

POD_GUARD = 'admission webhook "pod-guard.trainguard.dev" denied the request'
JOB_GUARD = 'admission webhook "validate-trainingjob.trainguard.dev" denied the request'
CONNECT_GUARD = 'admission webhook "pod-connect-guard.trainguard.dev" denied the request'
# What a well-behaved workload declares: tenant namespaces enforce Pod Security `restricted`.
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def kubectl(space: TenantSpace, *args: str) -> subprocess.CompletedProcess[str]:
    return space.cluster.kubectl("-n", space.namespace, *args, check=False)


def patch(
    space: TenantSpace, name: str, body: dict[str, Any], who: list[str]
) -> subprocess.CompletedProcess[str]:
    return kubectl(space, "patch", "tj", name, "--type=merge", "-p", json.dumps(body), *who)


def condition(space: TenantSpace, name: str, kind: str) -> dict[str, Any] | None:
    status = space.get("trainingjob", name).get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def running(space: TenantSpace, name: str) -> list[dict[str, Any]]:
    wait_for(f"{name} to run", lambda: (c := condition(space, name, "Running")) and c["status"] == "True")
    return space.list("pods", f"trainguard.dev/job-name={name}")


@pytest.fixture
def other_tenant(crds: Cluster, operator: OperatorProcess, signed: SignedImage) -> Iterator[TenantSpace]:
    space = make_tenant(crds, signed=signed)
    yield space
    crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
    crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)


def test_the_owner_is_taken_from_the_request_never_from_the_body(tenant_space: TenantSpace) -> None:
    space = tenant_space
    owner = space.as_("owner")
    forged = space.job("mine", owner={"user": space.user("teammate"), "groups": ["x"]})
    assert "created" in space.apply(forged, *owner).stdout
    recorded = space.get("trainingjob", "mine")["spec"]["owner"]
    assert recorded["user"] == space.user("owner")
    assert f"group-{space.tenant.removeprefix('tenant-')}" in recorded["groups"]


@pytest.mark.parametrize("who", ["owner", "teammate", "admin"])
def test_what_decides_a_run_cannot_change_for_anyone_the_owner_included(
    tenant_space: TenantSpace, who: str
) -> None:
    space = tenant_space
    space.apply(space.job("fixed", integrity={"mode": "Enforce"}), *space.as_("owner"))
    actor = space.as_(who)
    for field, body in [
        ("maxRunSeconds", {"spec": {"maxRunSeconds": 60}}),
        ("integrity", {"spec": {"integrity": {"mode": "Off"}}}),
        ("env", {"spec": {"env": [{"name": "PYTHONPATH", "value": "/output/.x"}]}}),
        ("command", {"spec": {"command": ["python", "-c", "print('not the job')"]}}),
    ]:
        refused = patch(space, "fixed", body, actor)
        assert refused.returncode != 0, f"{who} changed spec.{field}"
        assert f"spec.{field} cannot change after the job is created" in refused.stderr
        assert "create a new TrainingJob instead" in refused.stderr
    spec = space.get("trainingjob", "fixed")["spec"]
    assert spec["maxRunSeconds"] == 86400
    assert spec["integrity"]["mode"] == "Enforce"
    assert "env" not in spec
    assert "command" not in spec


def test_delete_is_for_the_owner_collaborators_and_tenant_admins(
    tenant_space: TenantSpace, other_tenant: TenantSpace
) -> None:
    space = tenant_space
    owner, teammate, admin = space.as_("owner"), space.as_("teammate"), space.as_("admin")
    for name in ("a", "b", "c"):
        space.apply(space.job(name), *owner)

    refused = kubectl(space, "delete", "tj", "a", *teammate)
    assert refused.returncode != 0
    assert JOB_GUARD in refused.stderr
    assert f"{space.user('teammate')!r} may not delete TrainingJob 'a'" in refused.stderr
    assert f"ask its owner {space.user('owner')!r}" in refused.stderr
    outsider = [
        "--as",
        other_tenant.user("owner"),
        "--as-group",
        f"group-{other_tenant.tenant.removeprefix('tenant-')}",
    ]
    foreign = kubectl(space, "delete", "tj", "a", *outsider)
    assert foreign.returncode != 0
    assert "forbidden" in foreign.stderr.lower()

    assert kubectl(space, "delete", "tj", "b", *admin).returncode == 0

    # The teammate may not make himself a collaborator; the owner may.
    himself = {"spec": {"collaborators": {"users": [space.user("teammate")]}}}
    refused = patch(space, "a", himself, teammate)
    assert refused.returncode != 0
    assert f"{space.user('teammate')!r} may not change who acts on TrainingJob 'a'" in refused.stderr
    assert patch(space, "a", himself, owner).returncode == 0
    assert kubectl(space, "delete", "tj", "a", *teammate).returncode == 0
    assert kubectl(space, "delete", "tj", "c", *owner).returncode == 0


def test_exec_attach_and_port_forward_are_the_owners_and_collaborators_into_the_trainer_only(
    tenant_space: TenantSpace,
) -> None:
    space = tenant_space
    owner, teammate = space.as_("owner"), space.as_("teammate")
    space.apply(space.job("debuggable", integrity={"mode": "Audit"}), *owner)
    name = running(space, "debuggable")[0]["metadata"]["name"]

    for action in (["exec", name, "-c", "trainer", "--", "true"], ["attach", name, "-c", "trainer"]):
        refused = kubectl(space, *teammate, *action)
        assert CONNECT_GUARD in refused.stderr
        assert (
            f"{space.user('teammate')!r} is not the owner or a collaborator of TrainingJob 'debuggable'"
            in (refused.stderr)
        )
    forward = kubectl(space, "port-forward", f"pod/{name}", "29500:29500", *teammate)
    assert CONNECT_GUARD in forward.stderr

    # The owner passes admission; the simulated node then has no kubelet to connect to.
    allowed = kubectl(space, *owner, "exec", name, "-c", "trainer", "--", "true")
    assert "denied the request" not in allowed.stderr
    sidecar = kubectl(space, *owner, "exec", name, "-c", "integrity-sidecar", "--", "cat", "/etc/hostname")
    assert "-c integrity-sidecar: the integrity sidecar holds the job's key" in sidecar.stderr

    events = kubectl(space, "get", "events", "--field-selector", f"involvedObject.name={name}").stdout
    assert f"{space.user('owner')} was allowed pods/exec into {name}" in events
    assert f"{space.user('teammate')}: pods/exec into {name}" in events

    # An Enforce job is not to be touched by hand: nobody gets in, its owner included.
    space.apply(space.job("locked", integrity={"mode": "Enforce"}), *owner)
    locked = running(space, "locked")[0]["metadata"]["name"]
    refused = kubectl(space, *owner, "exec", locked, "-c", "trainer", "--", "true")
    assert CONNECT_GUARD in refused.stderr
    assert "does not allow debugging" in refused.stderr


def test_a_child_name_held_by_another_object_fails_the_job_and_is_never_used(
    tenant_space: TenantSpace,
) -> None:
    space = tenant_space
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "pre-output"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    space.apply(claim)
    space.apply(space.job("pre"), *space.as_("owner"))
    failed = wait_for(
        "the job to fail on the taken name",
        lambda: (c := condition(space, "pre", "Failed")) and c["status"] == "True" and c,
    )
    assert failed["reason"] == "ChildNameTaken"
    assert (
        "PersistentVolumeClaim pre-output already exists and belongs to no part of this job"
        in failed["message"]
    )
    assert space.list("pods", "trainguard.dev/job-name=pre") == []
    assert "ownerReferences" not in space.get("persistentvolumeclaim", "pre-output")["metadata"]


@pytest.fixture
def editor(tenant_space: TenantSpace) -> list[str]:
    """A user with the built-in `edit` role in the tenant namespace, as platform teams hand out."""
    user = f"editor-{uuid.uuid4().hex[:6]}"
    kubectl(tenant_space, "create", "rolebinding", user, "--clusterrole=edit", f"--user={user}")
    wait_for(
        "the edit binding",
        lambda: (
            kubectl(tenant_space, "auth", "can-i", "create", "deployments", f"--as={user}").stdout.strip()
            == "yes"
        ),
    )
    return [f"--as={user}"]


def test_pods_of_an_editors_deployment_and_batch_job_are_refused(
    tenant_space: TenantSpace, editor: list[str], tmp_path: Path
) -> None:
    """Their pods are made by kube-controller-manager, which goes through the pod guard too. The
    pods declare what Pod Security `restricted` asks, so that trainguard's own rules decide."""
    space = tenant_space
    unsigned = Registry(space.cluster.ports.registry, tmp_path).push("isolation/miner", "v1", "unsigned")
    template = {
        "metadata": {"labels": {"app": "sneaky"}},
        "spec": {
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "main",
                    "image": f"{space.cluster.registry}/isolation/miner@{unsigned}",
                    "resources": {"limits": {"nvidia.com/gpu": "8"}},
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sneaky"},
        "spec": {"selector": {"matchLabels": {"app": "sneaky"}}, "template": template},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sneaky"},
        "spec": {
            "backoffLimit": 0,
            "template": {**template, "spec": {**template["spec"], "restartPolicy": "Never"}},
        },
    }
    for manifest in (deployment, job):
        assert "created" in space.apply(manifest, *editor).stdout

    def refusals(kind: str) -> str:
        selector = f"involvedObject.kind={kind},reason=FailedCreate"
        events = json.loads(
            kubectl(space, "get", "events", "--field-selector", selector, "-o", "json").stdout
        )
        return "\n".join(e["message"] for e in events["items"] if POD_GUARD in e["message"])

    for kind in ("ReplicaSet", "Job"):
        shown = wait_for(f"the {kind}'s FailedCreate event", lambda kind=kind: refusals(kind), timeout=60)
        assert "only TrainingJobs may use GPUs in a tenant namespace" in shown
        assert "has no cosign signature" in shown
    assert space.list("pods", "app=sneaky") == []


def test_tenant_namespace_labels_are_the_operators(tenant_space: TenantSpace) -> None:
    space = tenant_space
    labels = json.loads(space.cluster.kubectl("get", "namespace", space.namespace, "-o", "json").stdout)[
        "metadata"
    ]["labels"]
    assert labels["trainguard.dev/tenant"] == space.tenant
    assert labels["pod-security.kubernetes.io/enforce"] in ("restricted", "baseline")
    for change in (
        ["trainguard.dev/tenant-"],
        ["pod-security.kubernetes.io/enforce=privileged", "--overwrite"],
    ):
        refused = space.cluster.kubectl("label", "namespace", space.namespace, *change, check=False)
        assert refused.returncode != 0, change
        assert 'admission webhook "namespace-guard.trainguard.dev" denied the request' in refused.stderr
    labels = json.loads(space.cluster.kubectl("get", "namespace", space.namespace, "-o", "json").stdout)[
        "metadata"
    ]["labels"]
    assert labels["trainguard.dev/tenant"] == space.tenant


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_with_no_operator_running_admission_fails_closed(
    tenant_space: TenantSpace, operator: OperatorProcess, tmp_path: Path, stop: str
) -> None:
    space = tenant_space
    registry = Registry(space.cluster.ports.registry, tmp_path)
    registry.push("isolation/unsigned", "v1", "nobody signed this")
    registry_image = f"{registry.host}/isolation/unsigned:v1"
    gpu_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-grab"},
        "spec": {  # within Pod Security `restricted`, so that only the (absent) pod guard stands
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "m",
                    "image": space.image,
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }
    # The pod guard covers the namespaces the operator has labelled as the tenant's: wait for the
    # label before stopping it (a namespace is not a tenant's until then).
    wait_for(
        "the operator to label the tenant namespace",
        lambda: (
            json.loads(space.cluster.kubectl("get", "namespace", space.namespace, "-o", "json").stdout)[
                "metadata"
            ]
            .get("labels", {})
            .get("trainguard.dev/tenant")
            == space.tenant
        ),
    )
    if stop == "SIGTERM":
        operator.stop()
    else:
        operator.kill()
    try:
        unsigned = space.apply(space.job("unsigned", image=registry_image), check=False)
        assert unsigned.returncode != 0
        assert "failed calling webhook" in unsigned.stderr
        grab = space.apply(gpu_pod, check=False)
        assert grab.returncode != 0
        assert "failed calling webhook" in grab.stderr
    finally:
        operator.start()
    assert "created" in space.apply(space.job("valid")).stdout
