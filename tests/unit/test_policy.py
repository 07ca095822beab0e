"""Admission rules that need the Tenant: every problem at once, each with its field and fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from trainguard.api.models import Tenant, TrainingJob
from trainguard.policy.errors import format_errors
from trainguard.policy.pods import NamespaceView, validate_foreign_pod
from trainguard.policy.trainingjob import validate_training_job

TENANT = Tenant.model_validate(
    {
        "metadata": {"name": "team-a"},
        "spec": {
            "namespaces": ["team-a"],
            "members": {"users": ["alice"], "groups": ["team-a"]},
            "quota": {"nominalGPUs": 8, "borrowingLimitGPUs": 8, "cohort": "research"},
            "sharedStorage": [{"name": "imagenet", "kind": "Dataset", "claimName": "imagenet"}],
        },
    }
)


def job(namespace: str = "team-a", annotations: dict[str, str] | None = None, **spec: Any) -> TrainingJob:
    body = {
        "metadata": {"name": "j", "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "tenant": "team-a",
            "image": "r.io/t:v1",
            "replicas": 1,
            "resources": {"gpusPerReplica": 8},
            **spec,
        },
    }
    return TrainingJob.model_validate(body)


def test_a_valid_job_has_no_errors() -> None:
    assert (
        validate_training_job(job(sharedStorage=[{"name": "imagenet", "mountPath": "/d"}]), TENANT, "alice")
        == []
    )
    assert validate_training_job(job(), TENANT, "bob", ("team-a",)) == []


def test_every_problem_is_reported_at_once_with_field_and_fix() -> None:
    bad = job(
        namespace="team-b",
        annotations={"trainguard.dev/verified": "true"},
        replicas=3,
        sharedStorage=[{"name": "imagenet", "mountPath": "/a"}, {"name": "secrets", "mountPath": "/b"}],
    )
    errors = validate_training_job(bad, TENANT, "mallory", ("team-b",))
    assert [(e.path, e.reason) for e in errors] == [
        ("metadata.namespace", "NamespaceNotOwned"),
        ("spec.tenant", "NotATenantMember"),
        ("spec.sharedStorage[1].name", "UnknownSharedStorage"),
        ("spec.replicas", "ExceedsTenantQuota"),
        ("metadata.annotations[trainguard.dev/verified]", "ForgedVerificationClaim"),
    ]
    text = format_errors("TrainingJob", "j", errors)
    assert text.startswith('TrainingJob "j" is not allowed (5 problems):')
    unknown = "* spec.sharedStorage[1].name: 'secrets' is not shared storage of tenant 'team-a'"
    assert f"{unknown}; use one of: imagenet" in text
    assert (
        "3 x 8 = 24 GPUs exceeds what tenant 'team-a' can ever hold (8 nominal + 8 borrowable = 16)" in text
    )
    assert "ask for at most 16 GPUs" in text


def test_a_missing_tenant_is_the_only_error() -> None:
    errors = validate_training_job(job(), None)
    assert [e.reason for e in errors] == ["TenantNotFound"]
    assert "ask the platform team to create it" in str(errors[0])


def test_env_names_that_trainguard_sets_are_reserved() -> None:
    with pytest.raises(ValidationError, match="TRAINGUARD_INTEGRITY_SOCKET: env names starting with"):
        job(env=[{"name": "TRAINGUARD_INTEGRITY_SOCKET", "value": "/tmp/mine.sock"}])
    with pytest.raises(ValidationError, match="NVIDIA_VISIBLE_DEVICES: env names"):
        job(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    assert job(env=[{"name": "NCCL_DEBUG", "value": "INFO"}]).spec.env[0].name == "NCCL_DEBUG"


def test_plain_pods_may_not_ask_the_nvidia_runtime_for_gpus() -> None:
    pod = {
        "spec": {
            # Non-root (the pod guard's allowlist), so the variable is the pod's only problem.
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "containers": [
                {"name": "m", "image": "x", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}
            ],
        }
    }
    errors = validate_foreign_pod(pod, NamespaceView(shared_claims={}))
    assert [(e.path, e.reason) for e in errors] == [("spec.containers[0].env[0]", "GPUOutsideJob")]
