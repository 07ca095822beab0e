"""The metrics, alert rules and dashboard agree: every series the rules and the dashboard's panels
name is one trainguard exports; a job's state for `trainguard_jobs` is its printer column's."""

from __future__ import annotations

import re

import pytest
import yaml
from prometheus_client import REGISTRY

from e2e import dashboard
from e2e.cluster.prometheus import RULES
from trainguard import metrics
from trainguard.api.conditions import Condition, Status, job_state

NOW = "2026-01-01T00:00:00Z"


def cond(kind: str, status: Status = "True") -> Condition:
    return Condition(type=kind, status=status, reason="R", last_transition_time=NOW)


@pytest.mark.parametrize(
    ("conditions", "state"),
    [
        ([], "Pending"),
        ([cond("Admitted", "False")], "NotAdmitted"),
        ([cond("Admitted")], "Admitted"),
        ([cond("Queued"), cond("Admitted")], "Queued"),
        ([cond("Running"), cond("Admitted"), cond("IntegrityVerified")], "Running"),
        ([cond("Running", "False"), cond("Queued"), cond("Admitted")], "Queued"),
        ([cond("Failed"), cond("IntegrityViolation"), cond("Admitted")], "Failed"),
        ([cond("IntegrityViolation"), cond("Running")], "IntegrityViolation"),
    ],
)
def test_job_state_is_the_first_true_condition(conditions: list[Condition], state: str) -> None:
    assert job_state(conditions) == state
    assert state in metrics.JOB_STATES


def exported() -> set[str]:
    """Every sample name trainguard's metrics module registers, with the suffixes of its type."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("trainguard_"):
            names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def named_series(expr: str) -> set[str]:
    """The trainguard series `expr` reads (the recording rules' own names aside)."""
    for name in recorded():
        expr = expr.replace(name, "")
    return set(re.findall(r"\btrainguard_[a-z_]+\b", expr))


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def test_the_rules_name_only_exported_series() -> None:
    assert metrics.JOBS  # imported: its series are registered
    named = set().union(*(named_series(e) for e in rule_exprs()))
    assert named
    assert named - exported() == set()


def test_the_dashboard_names_only_exported_series_and_fills_every_variable() -> None:
    board = dashboard.load()
    variables = {"tenant": "team-a", "__rate_interval": "1m"}
    assert set(dashboard.template_variables(board)) <= set(variables)
    panels = dashboard.panels(board, variables)
    exprs = [q.expr for p in panels for q in p.queries]
    assert not [e for e in exprs if "$" in e]
    named = set().union(*(named_series(e) for e in exprs))
    assert named - exported() == set()
    assert {p.title for p in panels} >= set(dashboard.MAIN_PANELS)
    assert any(r in e for r in recorded() for e in exprs), "the violations panel reads the recording rule"


def test_panel_ids_and_positions_are_unique() -> None:
    board = dashboard.load()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
    assert len(cells) == len(set(cells))
