"""What every benchmark here shares: the latency-under-concurrency loop, and writing results."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def measure(fn: Callable[[int], object], concurrency: int, requests: int) -> dict[str, float]:
    """p50/p99 latency and throughput of `requests` calls of fn(i) from `concurrency` threads,
    after one untimed round that opens connections and warms caches."""

    def timed(i: int) -> float:
        start = time.perf_counter()
        fn(i)
        return time.perf_counter() - start

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(concurrency)))
        start = time.perf_counter()
        latencies = sorted(pool.map(timed, range(requests)))
        wall = time.perf_counter() - start
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "requests_per_second": requests / wall,
    }


def latency_report(
    concurrency: int, requests: int, results: dict[str, dict[str, float]], baseline: str, **extra: Any
) -> dict[str, Any]:
    """The report of a latency benchmark: every result and its p99 as a ratio to `baseline`'s."""
    base = results[baseline]["p99_ms"]
    return {
        "concurrency": concurrency,
        "requests": requests,
        **extra,
        "results": results,
        "p99_ratio_to_baseline": {k: v["p99_ms"] / base for k, v in results.items()},
        "targets_ms": {"warm_p99": 50, "cold_p99": 250},
    }


def write_report(name: str, report: dict[str, Any]) -> None:
    """Print `report` and write it as JSON to `name` in $OUT (a device machine) or bench/results/."""
    folder = Path(os.environ.get("OUT") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    (folder / name).write_text(text)
    print(text, end="")
