"""What the integrity checks cost a training step, end to end: trainer guard -> socket -> sidecar
process -> fingerprint of every shared region -> signed report, at the end of step t and the
start of step t+1. Baseline, same run and same bytes: one fingerprint of the parameters computed
in-process (the kernel alone, no sidecar, no socket).

    python -m bench.guard_bench              # CPU model, part of `make bench`
    python -m bench.guard_bench --cuda       # GPU model (bench/gpu_check.sh runs it)

Writes guard_<device>.json to $OUT or bench/results/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.load import write_report
from e2e.cluster.integrity import SidecarProcess
from trainguard.gpu.tensors import cpu_fingerprint
from trainguard.integrity.fingerprint import FingerprintKey
from trainguard.trainer import IntegrityGuard


def model(gib: float, device: torch.device) -> torch.nn.Module:
    width = 4096 if device.type == "cpu" else 8192
    layers = max(1, round(gib * 2**30 / (width * width * 2)))
    return torch.nn.Sequential(
        *[
            torch.nn.Linear(width, width, bias=False, device=device, dtype=torch.bfloat16)
            for _ in range(layers)
        ]
    )


def in_process(net: torch.nn.Module, device: torch.device) -> float:
    """Seconds for one fingerprint of the parameters in this process (the baseline)."""
    key = FingerprintKey.from_secret(os.urandom(32))
    params = [p.detach() for p in net.parameters()]
    if device.type == "cuda":
        from trainguard.gpu.kernel import fingerprint_tensors

        def run() -> object:
            return fingerprint_tensors(key, params, device)
    else:

        def run() -> object:
            return cpu_fingerprint(key, params)

    run()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--gib", type=float, default=None, help="parameter bytes (default 0.25 CPU, 8 GPU)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if args.cuda else "cpu")
    gib = args.gib if args.gib is not None else (8.0 if args.cuda else 0.25)
    net = model(gib, device)
    nbytes = sum(p.numel() * p.element_size() for p in net.parameters())
    baseline = in_process(net, device)
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = SidecarProcess(Path(tmp) / "shared").start()
        try:
            guard = IntegrityGuard(net, socket_path=sidecar.socket)
            guard.end(0)  # the first call compiles the kernel in the sidecar (GPU)
            guard.begin(1)
            boundaries = []
            first = next(net.parameters())
            for step in range(1, args.steps + 1):
                with (
                    torch.no_grad()
                ):  # the update of step `step` (untimed): weights that never change are reported
                    first.view(-1)[0] += 1
                start = time.perf_counter()
                guard.end(step)
                guard.begin(step + 1)
                boundaries.append(time.perf_counter() - start)
            guard.close()
        finally:
            sidecar.stop()
    median = statistics.median(boundaries)
    report = {
        "device": torch.cuda.get_device_name() if args.cuda else "cpu",
        "parameter_bytes": nbytes,
        "baseline_in_process_fingerprint_ms": baseline * 1000,
        "step_boundary_ms_median": median * 1000,
        "step_boundary_ms_max": max(boundaries) * 1000,
        # A boundary fingerprints twice (end of t, start of t+1): 2.0 means no overhead beyond that.
        "ratio_to_baseline": median / baseline,
        "effective_gb_per_second": 2 * nbytes / median / 1e9,
    }
    write_report(f"guard_{device.type}.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
