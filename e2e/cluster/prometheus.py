"""A real Prometheus on loopback (built by build.sh), scraping the operator's /metrics with the
chart's rules loaded: what the cluster tests and the dashboard picture query.

    with LocalPrometheus(folder, [f"127.0.0.1:{operator.metrics_port}"]) as prom:
        prom.query('trainguard_jobs{state="Running"}')
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from e2e.cluster.localcluster import bin_dir
from e2e.cluster.waiting import answers_ok, die_with_parent, free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "trainguard" / "files" / "trainguard-rules.yaml"
JOB = "trainguard"  # the scrape job's name: the rules' `up{job=~".*trainguard.*"}` finds it


class PrometheusError(Exception):
    pass


class PrometheusAPI:
    """The few calls of Prometheus's HTTP API (/api/v1) the tests and the dashboard picture make."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def api(self, path: str, **params: str | float) -> Any:
        """`data` of a /api/v1 answer; PrometheusError with Prometheus's message if it failed."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - a URL we were given
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's samples: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query's series: [{"metric": {...}, "values": [[t, "v"], ...]}, ...]."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The first sample of `expr` now, None when it has none."""
        samples = self.query(expr)
        return float(samples[0]["value"][1]) if samples else None

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets


class LocalPrometheus(PrometheusAPI):
    """`prometheus` as a process on loopback, its data in `folder`, scraping `targets` (host:port of
    each /metrics endpoint) every `interval` and evaluating `rules` as often."""

    def __init__(
        self, folder: Path, targets: list[str], *, interval: str = "1s", rules: Path = RULES
    ) -> None:
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.folder, self.targets_wanted, self.interval, self.rules = folder, targets, interval, rules
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / "prometheus.log"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(self.rules)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets_wanted}]}],
        }

    def start(self) -> LocalPrometheus:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        argv = [
            str(bin_dir() / "prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, preexec_fn=die_with_parent)
        wait_for("Prometheus to be ready", self._ready, timeout=60)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        return answers_ok(f"{self.url}/-/ready", self.proc, self.log_path, "prometheus")

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Until every target has been scraped successfully."""

        def all_up() -> bool:
            targets = self.targets()
            return len(targets) == len(self.targets_wanted) and all(t["health"] == "up" for t in targets)

        wait_for("Prometheus to scrape every target", all_up, timeout=timeout)

    def settle(self) -> float:
        """Wait two scrape and evaluation intervals, so that what just happened is stored; now."""
        time.sleep(2 * _seconds(self.interval) + 0.5)
        return time.time()


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(duration)
