"""Who may act on a job and its pods (policy/access.py), without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from trainguard.api.models import Tenant, TrainingJob
from trainguard.policy import access
from trainguard.policy.access import Identity

TENANT = Tenant.model_validate(
    {
        "metadata": {"name": "team-a"},
        "spec": {
            "namespaces": ["team-a"],
            "quota": {"nominalGPUs": 16},
            "members": {"users": ["alice", "bob", "carol"], "groups": ["team-a"]},
            "admins": {"users": ["lead"]},
        },
    }
)
OWNER, TEAMMATE, ADMIN = Identity("alice", ("team-a",)), Identity("bob", ("team-a",)), Identity("lead")
OPERATOR = frozenset({"system:serviceaccount:trainguard-system:trainguard"})


def raw(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "j", "namespace": "team-a", "uid": "u1"},
        "spec": {
            "tenant": "team-a",
            "image": "r.io/img@sha256:" + "a" * 64,
            "resources": {"gpusPerReplica": 1},
            "owner": {"user": "alice", "groups": ["team-a"]},
            **spec,
        },
    }


def job(**spec: Any) -> TrainingJob:
    return TrainingJob.model_validate(raw(**spec))


def test_roles_come_from_the_recorded_owner_collaborators_and_tenant_admins() -> None:
    shared = job(collaborators={"users": ["bob"]})
    assert access.roles(shared, TENANT, OWNER) == {access.Role.OWNER}
    assert access.roles(shared, TENANT, TEAMMATE) == {access.Role.COLLABORATOR}
    assert access.roles(shared, TENANT, ADMIN) == {access.Role.ADMIN}
    assert access.roles(shared, TENANT, Identity("carol", ("team-a",))) == set()


@pytest.mark.parametrize("who", [OWNER, TEAMMATE, ADMIN])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("maxRunSeconds", 60),
        ("integrity", {"mode": "Off"}),
        ("env", [{"name": "X", "value": "1"}]),
        ("command", ["sh"]),
    ],
)
def test_what_decides_a_run_is_immutable_for_everyone(who: Identity, field: str, value: Any) -> None:
    old, new = raw(), raw(**{field: value})
    errors = access.update_errors(old, new, TrainingJob.model_validate(new), TENANT, who)
    immutable = [e for e in errors if e.reason == "Immutable"]
    assert [e.path for e in immutable] == [f"spec.{field}"]
    assert "create a new TrainingJob instead" in immutable[0].fix


def test_collaborators_change_by_the_owner_or_an_admin_and_must_be_of_the_tenant() -> None:
    old, new = raw(), raw(collaborators={"users": ["bob"]})
    assert access.update_errors(old, new, TrainingJob.model_validate(new), TENANT, OWNER) == []
    assert access.update_errors(old, new, TrainingJob.model_validate(new), TENANT, ADMIN) == []
    refused = access.update_errors(old, new, TrainingJob.model_validate(new), TENANT, TEAMMATE)
    assert [e.reason for e in refused] == ["NotOwner"]
    assert "ask its owner 'alice' or the admins of tenant 'team-a'" in refused[0].fix
    stranger = raw(collaborators={"users": ["mallory"], "groups": ["team-b"]})
    errors = access.update_errors(old, stranger, TrainingJob.model_validate(stranger), TENANT, OWNER)
    assert [(e.path, e.reason) for e in errors] == [
        ("spec.collaborators.users[0]", "CollaboratorNotInTenant"),
        ("spec.collaborators.groups[0]", "CollaboratorNotInTenant"),
    ]


def test_labels_change_only_by_those_who_act_on_the_job() -> None:
    old = raw()
    new = {**raw(), "metadata": {**raw()["metadata"], "labels": {"x": "y"}}}
    assert access.update_errors(old, new, TrainingJob.model_validate(new), TENANT, OWNER) == []
    assert [
        e.reason for e in access.update_errors(old, new, TrainingJob.model_validate(new), TENANT, TEAMMATE)
    ] == ["NotOwner"]


def test_delete_is_for_owner_collaborators_and_admins() -> None:
    assert access.delete_refusal(job(), TENANT, OWNER) is None
    assert access.delete_refusal(job(), TENANT, ADMIN) is None
    assert access.delete_refusal(job(collaborators={"groups": ["team-a"]}), TENANT, TEAMMATE) is None
    refusal = access.delete_refusal(job(), TENANT, TEAMMATE)
    assert refusal is not None
    assert refusal.message == "'bob' may not delete TrainingJob 'j', its checkpoints and output"
    assert (
        refusal.fix
        == "ask its owner 'alice', its collaborators (none named) or the admins of tenant 'team-a'"
    )


def test_the_cluster_cleans_up_but_a_tenant_member_does_not() -> None:
    assert access.may_clean_up(Identity("system:serviceaccount:kube-system:namespace-controller"), OPERATOR)
    assert access.may_clean_up(Identity("system:node:n1", ("system:nodes",)), OPERATOR)
    assert access.may_clean_up(Identity("x", ("system:masters",)), OPERATOR)
    assert access.may_clean_up(Identity(next(iter(OPERATOR))), OPERATOR)
    assert not access.may_clean_up(OWNER, OPERATOR)


@pytest.mark.parametrize(
    ("spec", "who", "container", "reason"),
    [
        ({}, OWNER, "trainer", None),
        ({"collaborators": {"users": ["bob"]}}, TEAMMATE, None, None),
        ({}, TEAMMATE, "trainer", "ForeignExec"),
        ({}, ADMIN, "trainer", "ForeignExec"),
        ({}, OWNER, "integrity-sidecar", "SidecarExec"),
        ({}, OWNER, "other", "NotTheTrainer"),
        ({"integrity": {"mode": "Enforce"}}, OWNER, "trainer", "DebuggingDisallowed"),
        ({"integrity": {"mode": "Enforce"}, "debugging": "Allowed"}, OWNER, "trainer", None),
        ({"debugging": "Disallowed"}, OWNER, "trainer", "DebuggingDisallowed"),
    ],
)
def test_exec_attach_and_port_forward(
    spec: dict[str, Any], who: Identity, container: str | None, reason: str | None
) -> None:
    refusal = access.connect_refusal(job(**spec), TENANT, "j-0-a0", "exec", container, who)
    assert (refusal.reason if refusal else None) == reason


def test_tokens_of_a_jobs_service_account_are_the_kubelets() -> None:
    jobs = ["j", "k"]
    refusal = access.token_refusal("j-runner", jobs, OWNER, OPERATOR)
    assert refusal is not None
    assert refusal.reason == "JobTokenRequest"
    assert (
        access.token_refusal("j-runner", jobs, Identity("system:node:n1", ("system:nodes",)), OPERATOR)
        is None
    )
    assert access.token_refusal("default", jobs, OWNER, OPERATOR) is None
    assert access.token_refusal("x-runner", jobs, OWNER, OPERATOR) is None
