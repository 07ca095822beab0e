"""A real Prometheus scraping the operator, with the chart's rules loaded, after a small scenario:
a tenant; an unsigned image refused three times; a signed two-replica job admitted, its sidecars
reporting verified steps, then a weight changed between steps (the job fails: Enforce).

Then: the trainguard series are in Prometheus, the rules loaded and the integrity alert fires,
every panel of the chart's Grafana dashboard returns data, and its main panels are drawn
(TRAINGUARD_DASHBOARD_PICTURE=docs/dashboard.png keeps the picture)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from e2e import dashboard
from e2e.cluster.harness import OperatorProcess, SignedImage, TenantSpace, make_tenant
from e2e.cluster.integrity import SidecarProcess
from e2e.cluster.integrity_keys import job_pods, key_url, pod_token
from e2e.cluster.localcluster import Cluster
from e2e.cluster.prometheus import RULES, LocalPrometheus
from e2e.cluster.registry import Registry
from e2e.cluster.waiting import wait_for
from trainguard.trainer import IntegrityGuard, IntegrityViolation

RATE_INTERVAL = "10s"  # what $__rate_interval stands for: Grafana's 4 x the 1 s scrape interval, rounded up


@dataclass(frozen=True)
class Scenario:
    prometheus: LocalPrometheus
    space: TenantSpace
    start: float
    end: float


def conditions(space: TenantSpace, name: str) -> dict[str, dict[str, Any]]:
    status = space.get("trainingjob", name).get("status", {})
    return {c["type"]: c for c in status.get("conditions", [])}


def train_and_tamper(
    folder: Path, space: TenantSpace, name: str, operator: OperatorProcess, steps: int
) -> None:
    """Two replicas (a sidecar process each, as in the pods) train `steps` steps, one per scrape
    interval or so; then a third process flips a bit of replica 1's weights between steps."""
    uid = space.get("trainingjob", name)["metadata"]["uid"]
    sidecars = [
        SidecarProcess(
            folder / f"r{r}",
            replica=r,
            report_url=f"{operator.integrity_url}/{space.namespace}/{name}",
            key_url=key_url(operator.integrity_url, space, name),
            token=pod_token(space, name, pod),
            job_uid=uid,
        ).start()
        for r, pod in enumerate(job_pods(space, name, 2))
    ]
    try:
        torch.manual_seed(0)
        nets = [torch.nn.Linear(8, 8) for _ in (0, 1)]
        nets[1].load_state_dict(nets[0].state_dict())
        guards = [IntegrityGuard(nets[r], socket_path=sidecars[r].socket) for r in (0, 1)]
        optimizers = [torch.optim.SGD(n.parameters(), lr=0.1) for n in nets]
        for step in range(steps):
            for r in (0, 1):
                guards[r].begin(step)
                optimizers[r].zero_grad()
                nets[r](torch.ones(2, 8)).sum().backward()
                optimizers[r].step()
                guards[r].end(step)
            time.sleep(1.2)  # rates need increments that different scrapes see
        tamper = (
            "import mmap, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR); m = mmap.mmap(fd, 0); m[8] ^= 0x80\n"
        )
        subprocess.run([sys.executable, "-c", tamper, str(guards[1].buffer_path)], check=True, timeout=30)
        guards[0].begin(steps)
        with pytest.raises(IntegrityViolation):
            guards[1].begin(steps)
        wait_for("the job to fail (Enforce)", lambda: conditions(space, name).get("Failed"), timeout=60)
    finally:
        for sidecar in sidecars:
            sidecar.stop()


@pytest.fixture(scope="module")
def scenario(
    crds: Cluster, operator: OperatorProcess, signed: SignedImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    folder = tmp_path_factory.mktemp("prometheus")
    prometheus = LocalPrometheus(folder / "prometheus", [f"127.0.0.1:{operator.metrics_port}"]).start()
    space = make_tenant(crds, "tj", signed)
    try:
        prometheus.wait_scraped()
        start = time.time()
        tenant = f'tenant="{space.tenant}"'
        wait_for(
            "the tenant's quota and job series in Prometheus",
            lambda: (
                prometheus.query(f"trainguard_quota_gpus{{{tenant}}}")
                and prometheus.query(f"trainguard_jobs{{{tenant}}}")
            ),
            timeout=60,
        )
        prometheus.settle()  # the tenant's zeros are stored before anything counts

        # Refused three times: an unsigned image.
        registry = Registry(crds.ports.registry, folder)
        name = f"prometheus/{uuid.uuid4().hex[:8]}"
        registry.push(name, "v1", "unsigned")
        for _ in range(3):
            refused = space.apply(space.job("unsigned", image=f"{registry.host}/{name}:v1"), check=False)
            assert refused.returncode != 0
            assert "has no cosign signature" in refused.stderr
            prometheus.settle()

        # Admitted: a signed image, two replicas whose weights are checked.
        space.apply(space.job("guarded", replicas=2, integrity={"mode": "Enforce"}))
        wait_for(
            "the job to run",
            lambda: conditions(space, "guarded").get("Running", {}).get("status") == "True",
            timeout=60,
        )
        train_and_tamper(folder / "replicas", space, "guarded", operator, steps=6)
        wait_for(
            "Prometheus to see the failed job",
            lambda: prometheus.value(f'trainguard_jobs{{{tenant},state="Failed"}}') == 1,
            timeout=60,
        )
        end = prometheus.settle()
        yield Scenario(prometheus, space, start, end)
    finally:
        prometheus.stop()
        crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
        crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)


def test_the_operators_series_are_scraped(scenario: Scenario) -> None:
    prom, tenant = scenario.prometheus, scenario.space.tenant
    names = set(prom.api("label/__name__/values"))
    expected = {
        "trainguard_admission_reviews_total",
        "trainguard_admission_duration_seconds_bucket",
        "trainguard_admission_denied_total",
        "trainguard_image_verifications_total",
        "trainguard_image_verification_duration_seconds_bucket",
        "trainguard_jobs",
        "trainguard_quota_gpus",
        "trainguard_quota_jobs_waiting",
        "trainguard_quota_admission_wait_seconds_bucket",
        "trainguard_reconcile_duration_seconds_bucket",
        "trainguard_integrity_key_requests_total",
        "trainguard_integrity_reports_total",
        "trainguard_integrity_verified_steps_total",
        "trainguard_integrity_violations_total",
        "trainguard_integrity_fingerprint_duration_seconds_bucket",
        "trainguard_integrity_report_gap_seconds_bucket",
        "tenant_kind:trainguard_integrity_violations:increase10m",
    }
    assert expected - names == set()
    assert (prom.value('sum(trainguard_admission_denied_total{reason="Unsigned"})') or 0) >= 3
    denied = prom.value('sum(trainguard_admission_reviews_total{resource="trainingjobs",outcome="denied"})')
    assert (denied or 0) >= 3
    assert (prom.value('sum(trainguard_image_verification_duration_seconds_count{cache="hit"})') or 0) >= 1
    assert prom.value(f'trainguard_jobs{{tenant="{tenant}",state="Failed"}}') == 1
    assert (prom.value(f'trainguard_integrity_verified_steps_total{{tenant="{tenant}"}}') or 0) >= 3
    fingerprints = f'trainguard_integrity_fingerprint_duration_seconds_count{{tenant="{tenant}"}}'
    assert (prom.value(fingerprints) or 0) >= 6  # a StepEnd per replica and step


def test_the_rules_load_and_the_integrity_alert_fires(scenario: Scenario) -> None:
    prom, tenant = scenario.prometheus, scenario.space.tenant
    groups = {g["name"]: g for g in prom.rule_groups()}
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    assert set(groups) == {g["name"] for g in shipped}
    for group in shipped:
        loaded = groups[group["name"]]["rules"]
        assert [r["name"] for r in loaded] == [r.get("alert") or r.get("record") for r in group["rules"]]
        assert all(r["health"] == "ok" for r in loaded), [r for r in loaded if r["health"] != "ok"]

    def firing() -> list[dict[str, Any]]:
        return [
            a
            for a in prom.alerts()
            if a["labels"]["alertname"] == "TrainguardIntegrityViolation"
            and a["labels"].get("tenant") == tenant
            and a["state"] == "firing"
        ]

    (alert,) = wait_for("the integrity alert to fire", firing)
    assert alert["labels"]["kind"] == "ModifiedBetweenSteps"
    assert alert["labels"]["severity"] == "critical"


def test_every_dashboard_panel_returns_data(scenario: Scenario) -> None:
    prom, tenant = scenario.prometheus, scenario.space.tenant
    board = dashboard.load()
    variables = {"tenant": tenant, "__rate_interval": RATE_INTERVAL}
    assert set(dashboard.template_variables(board)) <= set(variables)
    tenants = prom.api("label/tenant/values", **{"match[]": "trainguard_jobs"})
    assert tenant in tenants, "the tenant variable's query (label_values(trainguard_jobs, tenant)) finds it"
    panels = dashboard.panels(board, variables)
    assert len(panels) >= 15
    empty = []
    for panel in panels:
        for query in panel.queries:
            series = prom.query_range(query.expr, scenario.start, scenario.end, 1.0)
            values = [float(v) for s in series for _, v in s["values"]]
            if not [v for v in values if not math.isnan(v)]:
                empty.append(f"{panel.title}: {query.expr}")
    assert empty == [], "panels with no data"


def test_the_main_panels_are_drawn(scenario: Scenario, tmp_path: Path) -> None:
    out = Path(os.environ.get("TRAINGUARD_DASHBOARD_PICTURE") or tmp_path / "dashboard.png")
    variables = {"tenant": scenario.space.tenant, "__rate_interval": RATE_INTERVAL}
    dashboard.picture(scenario.prometheus, out, scenario.start - 5, scenario.end, variables)
    assert out.exists()
    assert 10_000 < out.stat().st_size < 300_000
