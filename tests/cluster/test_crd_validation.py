"""The API server itself rejects bad TrainingJobs with the CRD's own messages (no operator needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.cluster.harness import TenantSpace
from e2e.cluster.waiting import wait_for


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"replicas": -1},
            "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 1",
        ),
        (
            {"integrity": {"mode": "Paranoid"}},
            'spec.integrity.mode: Unsupported value: "Paranoid": supported values: "Off", "Audit", "Enforce"',
        ),
        ({"resources": {"gpusPerReplica": 17}}, "spec.resources.gpusPerReplica: Invalid value: 17"),
        (
            {"sharedStorage": [{"name": "a", "mountPath": "/out"}], "output": {"mountPath": "/out"}},
            "a spec.sharedStorage mountPath equals spec.output.mountPath",
        ),
        (
            {"sharedStorage": [{"name": "a", "mountPath": "/d", "readOnly": False}]},
            'unknown field "spec.sharedStorage[0].readOnly"',
        ),
        (  # a job that pointed its hook at a socket of its own would fool its own integrity checks
            {"env": [{"name": "TRAINGUARD_INTEGRITY_SOCKET", "value": "/tmp/fake.sock"}]},
            "spec.env[0].name: Invalid value: env names starting with TRAINGUARD_ or NVIDIA_ are reserved",
        ),
        (
            {"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]},
            "env names starting with TRAINGUARD_ or NVIDIA_ are reserved",
        ),
    ],
)
def test_schema_violations_are_rejected_by_the_api_server(
    tenant_space: TenantSpace, spec: dict[str, Any], message: str
) -> None:
    result = tenant_space.apply(tenant_space.job("bad", **spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def patch_status(space: TenantSpace, status: dict[str, Any]) -> None:
    """Write status as the operator would (the status subresource)."""
    patch = ["patch", "trainingjob", "bad", "-n", space.namespace, "--subresource=status", "--type=merge"]
    space.cluster.kubectl(*patch, "-p", json.dumps(status))


def test_tenant_cannot_change(tenant_space: TenantSpace) -> None:
    tenant_space.apply(tenant_space.job("bad"))
    changed = tenant_space.apply(tenant_space.job("bad", tenant="team-y"), check=False)
    assert changed.returncode != 0
    assert "spec.tenant is immutable" in changed.stderr


def test_replicas_cannot_change_while_running(tenant_space: TenantSpace) -> None:
    space = tenant_space
    space.apply(space.job("bad"))

    def running() -> bool:
        conditions = space.get("trainingjob", "bad").get("status", {}).get("conditions", [])
        return any(c["type"] == "Running" and c["status"] == "True" for c in conditions)

    wait_for("the operator to report the job Running", running)
    resized = space.apply(space.job("bad", replicas=4), check=False)
    assert resized.returncode != 0
    assert (
        "spec.replicas and spec.resources.gpusPerReplica cannot change while the job is running"
        in resized.stderr
    )


def test_image_is_immutable_once_pinned(tenant_space: TenantSpace) -> None:
    space = tenant_space
    space.apply(space.job("bad"))
    pinned = {"status": {"image": {"reference": space.image, "digest": "sha256:" + "a" * 64}}}
    patch_status(space, pinned)
    swapped = space.apply(space.job("bad", image=space.image.replace(":v1", ":v2")), check=False)
    assert swapped.returncode != 0
    assert "spec.image is immutable once pinned" in swapped.stderr


def test_tenant_borrowing_needs_a_cohort(crds: Any) -> None:
    body = {
        "apiVersion": "trainguard.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "no-cohort"},
        "spec": {"namespaces": ["x"], "quota": {"nominalGPUs": 8, "borrowingLimitGPUs": 8}},
    }
    result = crds.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0
    assert "quota.borrowingLimitGPUs needs quota.cohort" in result.stderr
