"""GPU figures for the weight fingerprint: run on a CUDA machine (`python -m bench.gpu_fingerprint`).

Measures, on one buffer in the same run: a plain read-only Triton kernel (the read limit, same
grid: one program per 16 KiB chunk), trainguard's keyed NH kernel, and torch.sum on an int32
view; reports GB/s, the fraction of the read limit, and the cost per training step for a
given model size. Writes JSON to $OUT/fingerprint_gpu.json (or bench/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from bench.load import write_report
from trainguard.gpu.kernel import SPLITMIX_C1, SPLITMIX_C2, _nh_chunks, fingerprint_tensors
from trainguard.integrity.fingerprint import CHUNK_WORDS, GOLDEN, FingerprintKey, fingerprint


@triton.jit  # type: ignore[untyped-decorator]
def _read_only(words, out, CHUNK: tl.constexpr):  # type: ignore[no-untyped-def]
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
    tl.store(out + pid, tl.sum(tl.load(words + offsets), axis=0))


def gbps(fn: Callable[[], object], nbytes: int, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return nbytes / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=16.0, help="buffer size")
    parser.add_argument("--model-params", type=float, default=8e9, help="for the cost per step (bf16)")
    args = parser.parse_args()
    device = torch.device("cuda")
    n_chunks = int(args.gib * 2**30) // (CHUNK_WORDS * 4)
    words = torch.randint(-(2**31), 2**31 - 1, (n_chunks * CHUNK_WORDS,), dtype=torch.int32, device=device)
    nbytes = words.numel() * 4
    key = FingerprintKey.from_secret(os.urandom(32))
    table = torch.from_numpy(key.table.view("<i4").copy()).to(device)
    sums = torch.empty(n_chunks, dtype=torch.int32, device=device)
    out = torch.empty((n_chunks, 2), dtype=torch.int64, device=device)

    def read_only() -> None:
        _read_only[(n_chunks,)](words, sums, CHUNK=CHUNK_WORDS)

    def keyed() -> None:
        _nh_chunks[(n_chunks,)](
            words,
            table,
            out,
            0,
            key.seeds[0],
            key.seeds[1],
            GOLDEN,
            SPLITMIX_C1,
            SPLITMIX_C2,
            CHUNK=CHUNK_WORDS,
        )

    results = {
        "read_only_triton": gbps(read_only, nbytes),
        "trainguard_keyed_nh": gbps(keyed, nbytes),
        "torch_sum_int32": gbps(lambda: words.sum(), nbytes),
    }
    sample = words[: 1 << 22]
    bit_identical = fingerprint_tensors(key, [sample], device) == fingerprint(key, [sample.cpu().numpy()])
    step_bytes = args.model_params * 2
    report = {
        "device": torch.cuda.get_device_name(),
        "buffer_bytes": nbytes,
        "gb_per_second": results,
        "fraction_of_read_limit": results["trainguard_keyed_nh"] / results["read_only_triton"],
        "model_params": args.model_params,
        "ms_per_fingerprint_bf16_model": step_bytes / (results["trainguard_keyed_nh"] * 1e9) * 1000,
        "bit_identical_to_cpu_reference": bit_identical,
        "target_fraction": 0.9,
    }
    write_report("fingerprint_gpu.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
