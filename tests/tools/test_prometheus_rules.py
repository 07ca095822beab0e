"""The alert rules and the dashboard shipped with the chart: `promtool check rules`, the rules'
unit tests (`promtool test rules`), and the chart templates that carry them from their one source."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster.localcluster import bin_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "trainguard"
RULES = CHART / "files" / "trainguard-rules.yaml"
RULES_TESTS = ROOT / "tests" / "data" / "prometheus" / "trainguard-rules.test.yaml"
DASHBOARD = CHART / "dashboards" / "trainguard.json"
# The Kubernetes version the local cluster runs: `helm template` checks the chart's kubeVersion.
VERSIONS = (ROOT / "e2e" / "cluster" / "versions.env").read_text()
K8S_VERSION = next(line.split("=", 1)[1] for line in VERSIONS.splitlines() if line.startswith("K8S_VERSION="))


def tool(name: str) -> str:
    path = bin_dir() / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make build` (e2e/cluster/build.sh) first", pytrace=False)
    return str(path)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)


def test_rules_are_valid() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert alerts - tested == set(), "alerts that no test sees firing"


def template(*values: str) -> list[dict[str, Any]]:
    argv = [tool("helm"), "template", "trainguard", str(CHART), "--namespace", "trainguard-system"]
    argv += ["--kube-version", K8S_VERSION, "--set", "kueue.enabled=false"]
    for value in values:
        argv += ["--set", value]
    result = run(*argv)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_prometheus_rule_is_rendered_from_the_rules_file() -> None:
    assert not [d for d in template() if d["kind"] == "PrometheusRule"], "off by default"
    (rule,) = [d for d in template("prometheusRule.enabled=true") if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def dashboards(*values: str) -> list[dict[str, Any]]:
    return [d for d in template(*values) if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]


def test_dashboard_config_map_carries_the_dashboard() -> None:
    assert not dashboards(), "off by default"
    (config_map,) = dashboards("grafanaDashboard.enabled=true")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["trainguard.json"]) == json.loads(DASHBOARD.read_text())
