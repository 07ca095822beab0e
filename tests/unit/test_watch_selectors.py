"""The operator's watches are filtered by the API server (`handlers.jobs.WATCH_LABEL_SELECTORS`,
`WATCH_FIELD_SELECTORS`): no handler may want an object those selectors keep away, and what the
operator makes must pass them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
import pytest

import trainguard.handlers  # noqa: F401  (registers every handler with kopf's default registry)
from tests.unit.manifests import SETTINGS, load
from trainguard.api.models import Tenant, TrainingJob
from trainguard.handlers import jobs
from trainguard.quota.queueing import build_workload
from trainguard.quota.render import gpu_ceiling, local_queue
from trainguard.workload import builders as b

WATCHING_PARTS = ("_indexing", "_watching", "_spawning", "_changing")


def _requirements(selector: str) -> dict[str, str | None]:
    """A label selector of `key` and `key=value` terms: key -> value (None: only present)."""
    terms = {}
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        terms[key] = value if sep else None
    return terms


def _passes(selector: str, labels: Mapping[str, str]) -> bool:
    return all(
        key in labels and (value is None or labels[key] == value)
        for key, value in _requirements(selector).items()
    )


def _handlers_of(group: str, version: str, plural: str) -> list[Any]:
    resource = kopf.Resource(group, version, plural)
    registry = kopf.get_default_registry()
    return [
        handler
        for part in WATCHING_PARTS
        for handler in getattr(registry, part)._handlers
        if handler.selector is not None and handler.selector.check(resource)
    ]


@pytest.mark.parametrize("key", list(jobs.WATCH_LABEL_SELECTORS), ids="/".join)
def test_every_handler_of_a_label_filtered_resource_filters_on_as_much(key: tuple[str, str, str]) -> None:
    handlers = _handlers_of(*key)
    assert handlers, f"no handler watches {key}: its selector is dead configuration"
    for handler in handlers:
        labels = handler.labels or {}
        for label, value in _requirements(jobs.WATCH_LABEL_SELECTORS[key]).items():
            assert label in labels, f"{handler.id} would miss objects without {label}"
            if value is not None:
                assert labels[label] == value, f"{handler.id} wants {label}={labels[label]}, not {value}"


@pytest.mark.parametrize("key", list(jobs.WATCH_FIELD_SELECTORS), ids="/".join)
def test_every_handler_of_a_field_filtered_resource_filters_on_as_much(key: tuple[str, str, str]) -> None:
    handlers = _handlers_of(*key)
    assert handlers, f"no handler watches {key}: its selector is dead configuration"
    field, _sep, value = jobs.WATCH_FIELD_SELECTORS[key].partition("=")
    for handler in handlers:
        assert handler.field == tuple(field.split(".")), f"{handler.id} is not filtered on {field}"
        assert handler.value == value, f"{handler.id} wants {field}={handler.value}, not {value}"


def test_kopf_sends_the_selectors_with_the_watches_of_those_resources_only() -> None:
    settings = kopf.OperatorSettings()
    jobs.filter_watches(settings)
    pods = kopf.Resource("", "v1", "pods")
    both = "trainguard.dev/job-name,trainguard.dev/job-uid"
    assert settings.watching.label_selectors.collect(pods) == [both]
    quotas = kopf.Resource("", "v1", "resourcequotas")
    assert settings.watching.field_selectors.collect(quotas) == ["metadata.name=trainguard-gpu-ceiling"]
    workloads = kopf.Resource("kueue.x-k8s.io", "v1beta2", "workloads")
    assert settings.watching.label_selectors.collect(workloads) == ["app.kubernetes.io/managed-by=trainguard"]
    for unfiltered in (
        kopf.Resource("", "v1", "namespaces"),
        kopf.Resource("trainguard.dev", "v1alpha1", "trainingjobs"),
        kopf.Resource("kueue.x-k8s.io", "v1beta2", "clusterqueues"),  # drift of any queue is reverted
    ):
        assert settings.watching.label_selectors.collect(unfiltered) == []
        assert settings.watching.field_selectors.collect(unfiltered) == []


def test_what_the_operator_makes_passes_the_selectors() -> None:
    job = TrainingJob.model_validate(
        load("examples/trainingjob-llm.yaml", uid="11111111-2222-3333-4444-555555555555", generation=1)
    )
    tenant = Tenant.model_validate(load("examples/tenant-team-a.yaml", uid="tenant-uid"))
    pods = b.build_pods(job, tenant, 0, SETTINGS)
    assert pods
    for pod in pods:
        assert _passes(jobs.WATCH_LABEL_SELECTORS["", "v1", "pods"], pod["metadata"]["labels"])
    workload_labels = build_workload(job)["metadata"]["labels"]
    assert _passes(jobs.WATCH_LABEL_SELECTORS["kueue.x-k8s.io", "v1beta2", "workloads"], workload_labels)
    namespace = tenant.spec.namespaces[0]
    for manifest, key in (
        (local_queue(tenant, namespace), ("kueue.x-k8s.io", "v1beta2", "localqueues")),
        (gpu_ceiling(tenant, namespace), ("", "v1", "resourcequotas")),
    ):
        assert jobs.WATCH_FIELD_SELECTORS[key] == f"metadata.name={manifest['metadata']['name']}"


def test_a_pod_of_someone_else_does_not_pass() -> None:
    selector = jobs.WATCH_LABEL_SELECTORS["", "v1", "pods"]
    assert not _passes(selector, {"app": "notebook"})
    assert not _passes(selector, {"trainguard.dev/job-name": "llm"})  # both labels, or none of ours
    assert not _passes(
        jobs.WATCH_LABEL_SELECTORS["kueue.x-k8s.io", "v1beta2", "workloads"],
        {"app.kubernetes.io/managed-by": "kueue"},
    )
