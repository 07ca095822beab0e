"""Latency under concurrency: the one measuring loop every benchmark here uses."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


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
