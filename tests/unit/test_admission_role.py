"""`trainguard run --role=admission` and `--webhooks=chart`: what such a process registers with
kopf, and which settings it refuses."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest
from pydantic import ValidationError

import trainguard.handlers
from trainguard.handlers import jobs, serve_admission_only, tenants
from trainguard.settings import Role, Settings, WebhookConfigurations

PARTS = ("_activities", "_indexing", "_watching", "_spawning", "_changing", "_webhooks")


def _copy_of_default() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    default = kopf.get_default_registry()
    for part in PARTS:
        getattr(registry, part)._handlers[:] = getattr(default, part)._handlers
    return registry


def test_admission_only_keeps_indexes_and_drops_every_reconciler() -> None:
    assert trainguard.handlers.jobs is jobs
    registry = _copy_of_default()
    assert registry._spawning._handlers, "the reconcile daemon is registered to begin with"
    serve_admission_only(registry)
    kept_indexes = {handler.fn for handler in registry._indexing._handlers}
    # The webhooks answer from these; a job's pods and Workload are the reconciler's to watch.
    assert kept_indexes == {tenants.tenants_by_name, tenants.tenant_namespaces, jobs.jobs_by_namespace}
    assert registry._spawning._handlers == []  # no daemon, no timer: nothing needs a finalizer
    assert registry._changing._handlers == []
    assert registry._watching._handlers == []
    kept = {handler.fn for handler in registry._activities._handlers}
    assert kept == {jobs.login, jobs.configure, tenants.build_context}
    # The process-wide registry is untouched by pruning a copy.
    assert kopf.get_default_registry()._spawning._handlers


def test_chart_mode_needs_the_mounted_certificate(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="webhook_cert_dir"):
        Settings(webhooks=WebhookConfigurations.CHART)
    settings = Settings(webhooks="chart", webhook_cert_dir=tmp_path)
    assert settings.webhooks is WebhookConfigurations.CHART
    assert Settings().webhooks is WebhookConfigurations.SELF, "the local cluster's mode stays the default"


def test_admission_role_needs_a_webhook_port() -> None:
    with pytest.raises(ValidationError, match="webhook_port"):
        Settings(role=Role.ADMISSION, webhook_port=0)
    assert Settings(role="admission").role is Role.ADMISSION
    assert Settings().role is Role.ALL


def test_no_change_handlers_so_kopf_keeps_no_essences() -> None:
    """`jobs.NoChangeDiffs` hands kopf empty essences: right only while trainguard registers no
    on.create/update/delete/field handler (a job has a daemon; the rest are events and indexes)."""
    assert kopf.get_default_registry()._changing._handlers == []
    body = kopf.Body({"metadata": {"name": "j", "annotations": {"a": "b"}}, "spec": {"image": "x"}})
    assert jobs.NoChangeDiffs().build(body=body) == {}
