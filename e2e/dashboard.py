"""The chart's Grafana dashboard, read as data: every panel's queries with the template variables
filled in, run against a Prometheus, and a picture of the main panels drawn from the answers.

    python -m e2e.dashboard --prometheus http://127.0.0.1:9090 --minutes 15 --out docs/dashboard.png

The cluster test (tests/cluster/test_prometheus.py) runs every query against the local Prometheus
after a scenario, and draws the picture; with TRAINGUARD_DASHBOARD_PICTURE=<path> it keeps it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster.prometheus import PrometheusAPI

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "trainguard" / "dashboards" / "trainguard.json"

# The panels of the picture in docs/: the ones an operator looks at first.
MAIN_PANELS = (
    "Jobs by state",
    "Admission reviews by outcome",
    "Admission latency",
    "Denials by reason",
    "Verification latency (p99)",
    "Verdict cache hit ratio",
    "Integrity violations (last 10 min)",
    "Fingerprint time (p90)",
)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str  # Grafana's legendFormat: {{label}} placeholders


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any], variables: dict[str, str]) -> list[Panel]:
    """Every panel with queries (rows aside, nested ones included), `$name` and `${name}` replaced
    by `variables` (Grafana's own, such as `__rate_interval`, included)."""
    found: list[Panel] = []
    for raw in dashboard["panels"]:
        for panel in [raw, *raw.get("panels", [])]:
            targets = panel.get("targets") or []
            if not targets:
                continue
            queries = tuple(
                Query(substitute(t["expr"], variables), t.get("legendFormat", "")) for t in targets
            )
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
            found.append(Panel(panel["title"], unit, queries))
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"the dashboard uses ${name}, which has no value here")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def template_variables(dashboard: dict[str, Any]) -> list[str]:
    """The names of the dashboard's own variables (the datasource's aside)."""
    return [v["name"] for v in dashboard["templating"]["list"] if v["type"] != "datasource"]


def legend(query: Query, metric: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), query.legend)
    return text or json.dumps(metric)


Series = list[tuple[str, list[tuple[float, float]]]]  # (legend, [(time, value)]) per series


def run(prometheus: PrometheusAPI, panel: Panel, start: float, end: float, step: float) -> Series:
    """Each query's series over [start, end], NaN points dropped."""
    out: Series = []
    for query in panel.queries:
        for series in prometheus.query_range(query.expr, start, end, step):
            points = [(float(t), float(v)) for t, v in series["values"] if not math.isnan(float(v))]
            if points:
                out.append((legend(query, series["metric"]), points))
    return out


def draw(results: list[tuple[Panel, Series]], out: Path, title: str, start: float, end: float) -> None:
    """The panels as a grid of small time series charts over [start, end], in one PNG. Series
    that stay at zero are left out when others are not (a state no job is in, say)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def when(t: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(t, datetime.UTC)

    columns = 2
    rows = math.ceil(len(results) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(11, 2.3 * rows), squeeze=False)
    for ax, (panel, series) in zip(axes.flat, results, strict=False):
        shown = [s for s in series if any(v != 0 for _, v in s[1])] or series
        for name, points in shown:
            times = [when(t) for t, _ in points]
            ax.plot(times, [v for _, v in points], label=name, linewidth=1.4, drawstyle="steps-post")
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.set_ylabel(_unit_label(panel.unit), fontsize=8)
        ax.set_xlim(when(start), when(end))
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=7, loc="upper left", frameon=False)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", fontsize=9, color="grey")
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)


def _unit_label(unit: str) -> str:
    return {"s": "seconds", "reqps": "per second", "ops": "per second", "percentunit": "ratio"}.get(unit, "")


def picture(
    prometheus: PrometheusAPI, out: Path, start: float, end: float, variables: dict[str, str]
) -> None:
    step = max((end - start) / 200, 1.0)
    chosen = {p.title: p for p in panels(load(), variables)}
    results = [(chosen[t], run(prometheus, chosen[t], start, end, step)) for t in MAIN_PANELS]
    draw(results, out, "trainguard dashboard, main panels (times in UTC)", start, end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--minutes", type=float, default=15.0, help="how far back to draw")
    parser.add_argument("--tenant", default=".*", help="regex of the tenants to show")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval stands for")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    end = time.time()
    start = end - args.minutes * 60
    variables = {"tenant": args.tenant, "__rate_interval": args.rate_interval}
    picture(PrometheusAPI(args.prometheus), args.out, start, end, variables)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
