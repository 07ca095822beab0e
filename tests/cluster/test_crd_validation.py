"""The API server itself rejects bad TrainingJobs with the CRD's own messages (no operator needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.cluster.harness import TenantSpace


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
        (
            {"sharedStorage": [{"name": "a", "mountPath": "/d", "verification": "Yes"}]},
            'spec.sharedStorage[0].verification: Unsupported value: "Yes": supported values: "Off", '
            '"SignedManifest"',
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant", "team-y"),
        ("replicas", 4),
        ("image", "registry.example.com/other:v2"),
        ("resources", {"gpusPerReplica": 8}),
        ("failurePolicy", {"maxRestarts": 100}),
        ("owner", {"user": "someone-else"}),
    ],
)
def test_what_decides_a_run_cannot_change_after_creation(
    tenant_space: TenantSpace, field: str, value: Any
) -> None:
    """The API server's own rules (CEL), before any webhook: the message names the field."""
    space = tenant_space
    space.apply(space.job("bad"))
    body = json.dumps({"spec": {field: value}})
    changed = space.cluster.kubectl(
        "patch", "tj", "bad", "-n", space.namespace, "--type=merge", "-p", body, check=False
    )
    assert changed.returncode != 0
    assert f"spec.{field} cannot change after the job is created" in changed.stderr
    assert "create a new TrainingJob instead" in changed.stderr


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
