"""Each admission decision as an audit record: who, what, which tenant, the answer and why."""

from __future__ import annotations

import json
import logging

from kopf._core.actions.loggers import ObjectJsonFormatter

from trainguard.admission.decisions import decision_of

JOB_CREATE = {
    "uid": "u-1",
    "operation": "CREATE",
    "resource": {"group": "trainguard.dev", "version": "v1alpha1", "resource": "trainingjobs"},
    "namespace": "team-a-ml",
    "name": "llm",
    "userInfo": {"username": "alice", "groups": ["researchers"]},
    "object": {"metadata": {"name": "llm"}, "spec": {"tenant": "team-a"}},
}
DENIED = {
    "response": {"allowed": False, "status": {"code": 403, "message": 'TrainingJob "llm" is not allowed'}}
}


def test_a_denied_job_names_who_what_tenant_and_why() -> None:
    record = decision_of(JOB_CREATE, DENIED, reasons=["UnsignedImage", "UnsignedImage", "NotAMember"])
    assert record.fields() == {
        "decision": "denied",
        "user": "alice",
        "operation": "CREATE",
        "resource": "trainingjobs",
        "namespace": "team-a-ml",
        "objectName": "llm",
        "tenant": "team-a",
        "reasons": ["UnsignedImage", "NotAMember"],
        "detail": 'TrainingJob "llm" is not allowed',
        "dryRun": False,
        "uid": "u-1",
    }
    assert record.line() == (
        "admission denied: alice CREATE trainingjobs team-a-ml/llm of tenant team-a: "
        'TrainingJob "llm" is not allowed'
    )


def test_the_tenant_of_a_pod_is_its_namespaces_and_subresources_are_named() -> None:
    request = {
        "operation": "CONNECT",
        "resource": {"resource": "pods"},
        "subResource": "exec",
        "namespace": "team-a-ml",
        "name": "llm-0",
        "userInfo": {"username": "mallory"},
        "object": {"kind": "PodExecOptions", "command": ["sh"]},
        "dryRun": False,
    }
    record = decision_of(request, {"response": {"allowed": True}}, tenant_of_namespace="team-a")
    assert (record.decision, record.resource, record.tenant, record.name) == (
        "allowed",
        "pods/exec",
        "team-a",
        "llm-0",
    )
    assert record.message == ""


def test_a_failed_handler_is_an_error_not_a_denial() -> None:
    answer = {"response": {"allowed": False, "status": {"code": 500, "message": "boom"}}}
    assert decision_of(JOB_CREATE, answer).decision == "error"
    assert decision_of(JOB_CREATE, {}).decision == "error"  # no answer at all (the handler raised)


def test_the_json_log_line_carries_the_fields_as_keys() -> None:
    record = decision_of(JOB_CREATE, DENIED, reasons=["UnsignedImage"])
    logged = logging.LogRecord(
        "trainguard.admission", logging.WARNING, __file__, 1, "%s", (record.line(),), None
    )
    for key, value in record.fields().items():
        setattr(logged, key, value)
    line = json.loads(ObjectJsonFormatter().format(logged))
    assert line["message"].startswith("admission denied: alice CREATE trainingjobs team-a-ml/llm")
    assert (line["user"], line["tenant"], line["reasons"], line["decision"]) == (
        "alice",
        "team-a",
        ["UnsignedImage"],
        "denied",
    )
    assert line["severity"] == "warn"
