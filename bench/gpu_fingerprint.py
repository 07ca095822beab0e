"""GPU figures for the weight fingerprint: run on a CUDA machine (`python -m bench.gpu_fingerprint`).

Measures, on one buffer in the same run and on the same grid (one program per 16 KiB chunk):
a read-only Triton kernel that loads the chunk exactly as the keyed kernel does (the shared
`load_chunk_pairs`: 128-bit loads, evict-first) and only sums it, the read limit the fraction is
taken against; the plain read-only kernel of earlier runs (4096 int32 loads, default cache
policy), for comparison with them; trainguard's keyed NH kernel; and torch.sum on an int32 view.
The kernels run in interleaved rounds (best and median of each). Reports GB/s, the keyed kernel's
fraction of both read-only kernels, and the cost per training step for a given model size.

Then a launch-configuration sweep: the keyed kernel and the same-loads read-only kernel each at
every `num_warps` in SWEEP_NUM_WARPS (applied to both alike; the kernels have no loop, so
num_stages does not apply), all in interleaved rounds again. Reports each configuration's GB/s and
keyed/read-only fraction, and the fraction best against best (fastest keyed configuration over
fastest read-only one). The kernel's configuration is `trainguard.gpu.kernel.LAUNCH_NUM_WARPS`;
the figures above use it.

Then checks the kernel's output against the CPU reference: the per-chunk terms of the timed
launch itself (its first chunks; every swept configuration's terms must equal them), and whole
fingerprints of a partial last chunk, a view that starts off the 8-byte boundary, and bf16. Any
difference is printed and the exit status is 1.
Writes JSON to $OUT/fingerprint_gpu.json (or bench/results/).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import numpy as np
import torch
import triton
import triton.language as tl

from bench.load import write_report
from trainguard.gpu.kernel import (
    CHUNK_PAIRS,
    LAUNCH_NUM_WARPS,
    fingerprint_tensors,
    lane_key_pairs,
    launch_nh_chunks,
    load_chunk_pairs,
)
from trainguard.gpu.tensors import cpu_fingerprint
from trainguard.integrity.fingerprint import CHUNK_BYTES, CHUNK_WORDS, FingerprintKey
from trainguard.integrity.fingerprint import fingerprint_with_chunks as cpu_fingerprint_with_chunks

TARGET_FRACTION = 0.98
CHECKED_CHUNKS = 1024  # chunks of the timed launch compared with the CPU reference (16 MiB)
SWEEP_NUM_WARPS = (4, 8, 16)


@triton.jit  # type: ignore[untyped-decorator]
def _read_only(words, out, PAIRS: tl.constexpr):  # type: ignore[no-untyped-def]
    pid = tl.program_id(0)
    tl.store(out + pid, tl.sum(load_chunk_pairs(words, pid, PAIRS), axis=0).to(tl.int64, bitcast=True))


@triton.jit  # type: ignore[untyped-decorator]
def _read_only_plain(words, out, CHUNK: tl.constexpr):  # type: ignore[no-untyped-def]
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    tl.store(out + pid, tl.sum(tl.load(words + offsets), axis=0))


def timings(fns: dict[str, Callable[[], object]], nbytes: int, rounds: int) -> dict[str, list[float]]:
    """GB/s of each fn per round; the fns take turns, so clock and thermal drift hit all alike."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    results: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            results[name].append(nbytes / (start.elapsed_time(end) / 1000) / 1e9)
    return results


def differences(key: FingerprintKey, words: torch.Tensor, terms: torch.Tensor) -> list[str]:
    """Where the GPU disagrees with the CPU reference (empty when bit-identical)."""
    device = words.device
    failures = []
    head = words[: CHECKED_CHUNKS * CHUNK_WORDS].cpu().numpy()
    _, expected = cpu_fingerprint_with_chunks(key, head)
    got = terms[:CHECKED_CHUNKS].cpu().numpy()
    if not np.array_equal(got, expected.view(np.int64)):
        bad = np.flatnonzero((got != expected.view(np.int64)).any(axis=1))
        failures.append(f"per-chunk terms of the timed launch: {bad.size} of {CHECKED_CHUNKS} chunks differ")
    raw = words.view(torch.uint8)
    samples = {
        "16 MiB and a partial last chunk": [raw[: 1024 * CHUNK_BYTES + 1000]],
        "a view off the 8-byte boundary": [raw[4 : 3 * CHUNK_BYTES + 4]],
        "bf16, a strided view, int8": [
            torch.randn(1000, 3000, device=device).to(torch.bfloat16),
            torch.randn(64, 64, device=device).t()[::2],
            torch.arange(7, dtype=torch.int8, device=device),
        ],
    }
    for name, tensors in samples.items():
        if fingerprint_tensors(key, tensors, device) != cpu_fingerprint(key, tensors):
            failures.append(f"fingerprint of {name}")
    return failures


def launch_sweep(
    keyed: Callable[[torch.Tensor, int], Callable[[], object]],
    read_only: Callable[[int], Callable[[], object]],
    reference_terms: torch.Tensor,
    nbytes: int,
    rounds: int,
) -> tuple[dict[str, object], list[str]]:
    """Both kernels at every SWEEP_NUM_WARPS, interleaved; the keyed terms must not change."""
    outs = {warps: torch.empty_like(reference_terms) for warps in SWEEP_NUM_WARPS}
    fns: dict[str, Callable[[], object]] = {}
    for warps in SWEEP_NUM_WARPS:
        fns[f"keyed/{warps}"] = keyed(outs[warps], warps)
        fns[f"read_only/{warps}"] = read_only(warps)
    runs = timings(fns, nbytes, rounds)
    best = {name: max(values) for name, values in runs.items()}
    median = {name: statistics.median(values) for name, values in runs.items()}
    configs = {
        f"num_warps={warps}": {
            "keyed_gb_per_second": best[f"keyed/{warps}"],
            "read_only_gb_per_second": best[f"read_only/{warps}"],
            "fraction": best[f"keyed/{warps}"] / best[f"read_only/{warps}"],
            "fraction_median": median[f"keyed/{warps}"] / median[f"read_only/{warps}"],
        }
        for warps in SWEEP_NUM_WARPS
    }
    best_keyed = max(SWEEP_NUM_WARPS, key=lambda warps: best[f"keyed/{warps}"])
    best_read = max(SWEEP_NUM_WARPS, key=lambda warps: best[f"read_only/{warps}"])
    failures = [
        f"per-chunk terms at num_warps={warps} differ from num_warps={LAUNCH_NUM_WARPS}"
        for warps, terms in outs.items()
        if not torch.equal(terms, reference_terms)
    ]
    sweep = {
        "configs": configs,
        "best_keyed": f"num_warps={best_keyed}",
        "best_read_only": f"num_warps={best_read}",
        "fraction_best_vs_best": best[f"keyed/{best_keyed}"] / best[f"read_only/{best_read}"],
        "current": f"num_warps={LAUNCH_NUM_WARPS}",
    }
    return sweep, failures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=16.0, help="buffer size")
    parser.add_argument("--rounds", type=int, default=10, help="timed launches of each kernel")
    parser.add_argument("--model-params", type=float, default=8e9, help="for the cost per step (bf16)")
    args = parser.parse_args()
    device = torch.device("cuda")
    n_chunks = int(args.gib * 2**30) // CHUNK_BYTES
    words = torch.randint(-(2**31), 2**31 - 1, (n_chunks * CHUNK_WORDS,), dtype=torch.int32, device=device)
    pairs = words.view(torch.int64)
    nbytes = words.numel() * 4
    key = FingerprintKey.from_secret(os.urandom(32))
    keys = torch.from_numpy(lane_key_pairs(key)).to(device)
    field = torch.from_numpy(key.field.view(np.int64)).to(device)
    sums = torch.empty(n_chunks, dtype=torch.int64, device=device)
    plain_sums = torch.empty(n_chunks, dtype=torch.int32, device=device)
    out = torch.empty((n_chunks, 2), dtype=torch.int64, device=device)

    def keyed(terms: torch.Tensor, num_warps: int = LAUNCH_NUM_WARPS) -> Callable[[], object]:
        return lambda: launch_nh_chunks(pairs, keys, field, terms, 0, num_warps=num_warps)

    def read_only(num_warps: int = LAUNCH_NUM_WARPS) -> Callable[[], object]:
        return lambda: _read_only[(n_chunks,)](pairs, sums, PAIRS=CHUNK_PAIRS, num_warps=num_warps)

    runs = timings(
        {
            "read_only_triton": read_only(),
            "read_only_triton_plain": lambda: _read_only_plain[(n_chunks,)](
                words, plain_sums, CHUNK=CHUNK_WORDS
            ),
            "trainguard_keyed_nh": keyed(out),
            "torch_sum_int32": lambda: words.sum(),
        },
        nbytes,
        args.rounds,
    )
    best = {name: max(values) for name, values in runs.items()}
    median = {name: statistics.median(values) for name, values in runs.items()}
    fraction = best["trainguard_keyed_nh"] / best["read_only_triton"]
    failures = differences(key, words, out)
    sweep, sweep_failures = launch_sweep(keyed, read_only, out, nbytes, args.rounds)
    failures += sweep_failures
    step_bytes = args.model_params * 2
    report = {
        "device": torch.cuda.get_device_name(),
        "buffer_bytes": nbytes,
        "rounds": args.rounds,
        "launch_num_warps": LAUNCH_NUM_WARPS,
        "gb_per_second": best,
        "gb_per_second_median": median,
        "fraction_of_read_limit": fraction,
        "fraction_of_read_limit_median": median["trainguard_keyed_nh"] / median["read_only_triton"],
        "fraction_of_plain_read_only": best["trainguard_keyed_nh"] / best["read_only_triton_plain"],
        "target_fraction": TARGET_FRACTION,
        "meets_target": fraction >= TARGET_FRACTION,
        "launch_sweep": sweep,
        "model_params": args.model_params,
        "ms_per_fingerprint_bf16_model": step_bytes / (best["trainguard_keyed_nh"] * 1e9) * 1000,
        "bit_identical_to_cpu_reference": not failures,
        "differences": failures,
    }
    write_report("fingerprint_gpu.json", report)
    for failure in failures:
        print(f"FAIL: the GPU kernel differs from the CPU reference: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
