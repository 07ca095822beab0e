"""CPU throughput of the weight fingerprint on one core, beside xxh3 and SHA-256 on the same buffer.

Writes bench/results/fingerprint_cpu.json. The GPU figures come from a prepared script run on a
CUDA machine (not part of this benchmark).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import xxhash

from bench.load import write_report
from trainguard.integrity.fingerprint import FingerprintKey, fingerprint

SIZE = 256 * 1024 * 1024
REPEATS = 3


def best_gbps(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return SIZE / best / 1e9


def main() -> int:
    buffer = np.random.default_rng(0).integers(0, 2**32, size=SIZE // 4, dtype=np.uint32)
    raw = buffer.tobytes()
    key = FingerprintKey.from_secret(os.urandom(32))
    results = {
        "trainguard_fingerprint": best_gbps(lambda: fingerprint(key, [buffer])),
        "xxh3_64": best_gbps(lambda: xxhash.xxh3_64(raw).digest()),
        "sha256": best_gbps(lambda: hashlib.sha256(raw).digest()),
    }
    report = {
        "buffer_bytes": SIZE,
        "cores": 1,
        "gb_per_second": results,
        "ratio_to_sha256": {k: v / results["sha256"] for k, v in results.items()},
        "ratio_to_xxh3": {k: v / results["xxh3_64"] for k, v in results.items()},
        "target_gb_per_second": 1.0,
    }
    write_report("fingerprint_cpu.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
