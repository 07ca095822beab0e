"""The weight fingerprint on the GPU: a Triton kernel that follows `integrity/fingerprint.py` word for word.

One program per 16 KiB chunk. It reads the chunk as 2048 little-endian 64-bit pairs (even word in
the low half, odd word in the high half): contiguous, so 128-bit loads, with an evict-first hint
since each byte is read once. The key table is laid out for it on the host (`lane_key_pairs`):
one 16 KiB row of pairs per Toeplitz lane, row l holding K[2l], K[2l+1], …, so both lanes' keys
are 128-bit loads too, issued with the data before any arithmetic (32 KiB, L2-resident). Each
lane adds its keys to the words (mod 2^32), multiplies the halves into 64 bits, and one reduction
sums both lanes; each lane's sum is multiplied by the chunk's secret odd multiplier (splitmix64,
computed in the kernel). The host adds the per-chunk results (mod 2^64) and finishes with the same
HMAC as the CPU reference, so the two give bit-identical fingerprints;
`tests/data/fingerprint_vectors.json` checks both.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), which
is how the CPU-only test suite checks the kernel's arithmetic (`tests/tools/test_fingerprint_triton.py`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import torch
import triton
import triton.language as tl

from trainguard.integrity.fingerprint import (
    CHUNK_BYTES,
    CHUNK_WORDS,
    FORMAT_VERSION,
    GOLDEN,
    MASK64,
    FingerprintKey,
)

SPLITMIX_C1 = 0xBF58476D1CE4E5B9
SPLITMIX_C2 = 0x94D049BB133111EB
CHUNK_PAIRS = CHUNK_WORDS // 2  # 64-bit loads per chunk
PAIR_ALIGN = 8  # bytes: the data must be readable as 64-bit pairs


def lane_key_pairs(key: FingerprintKey) -> npt.NDArray[np.int64]:
    """The key table as `_nh_chunks` reads it: 2 rows (lanes) of CHUNK_PAIRS 64-bit pairs, where
    row l, pair p holds K[2p + 2l] in its low half and K[2p + 1 + 2l] in its high half (lane 1 is
    the table shifted by two words, so each lane gets a 16 KiB row of its own, 16-byte aligned)."""
    rows = np.stack([key.table[2 * lane : 2 * lane + CHUNK_WORDS] for lane in (0, 1)]).astype("<u4")
    return rows.view("<i8")


# Triton reads a kernel's annotations itself (tl.constexpr), so these stay unannotated for mypy.
@triton.jit  # type: ignore[untyped-decorator]
def load_chunk_pairs(words, chunk, PAIRS: tl.constexpr):  # type: ignore[no-untyped-def]
    """Chunk `chunk` of `words` (int64 pairs) as one contiguous, streamed-once read. The read-only
    baseline in `bench/gpu_fingerprint.py` loads through this too, so both read the same way."""
    offsets = chunk.to(tl.int64) * PAIRS + tl.arange(0, PAIRS)
    return tl.load(words + offsets, eviction_policy="evict_first").to(tl.uint64, bitcast=True)


@triton.jit
def _nh_terms(low, high, keys):  # type: ignore[no-untyped-def]
    """One lane's NH terms: (even + K) mod 2^32 times (odd + K') mod 2^32, in 64 bits."""
    a = (low + keys.to(tl.uint32)).to(tl.uint64)
    b = (high + (keys >> 32).to(tl.uint32)).to(tl.uint64)
    return a * b


@triton.jit  # type: ignore[untyped-decorator]
def _nh_chunks(  # type: ignore[no-untyped-def]
    words,  # int64[n_chunks * PAIRS]: the data as 64-bit pairs
    keys,  # int64[2, PAIRS]: lane_key_pairs
    out,  # uint64[n_chunks, 2] (as int64 storage)
    first_chunk,
    seed0,
    seed1,
    golden,
    c1,
    c2,
    PAIRS: tl.constexpr,
):
    pid = tl.program_id(0)
    pairs = tl.arange(0, PAIRS)
    data = load_chunk_pairs(words, pid, PAIRS)
    keys0 = tl.load(keys + pairs).to(tl.uint64, bitcast=True)
    keys1 = tl.load(keys + PAIRS + pairs).to(tl.uint64, bitcast=True)
    low = data.to(tl.uint32)
    high = (data >> 32).to(tl.uint32)
    terms = tl.join(_nh_terms(low, high, keys0), _nh_terms(low, high, keys1))  # [PAIRS, 2 lanes]
    nh = tl.sum(terms, axis=0)
    lane = tl.arange(0, 2)
    z = tl.where(lane == 0, seed0.to(tl.uint64), seed1.to(tl.uint64))
    z += (first_chunk + pid + 1).to(tl.uint64) * golden.to(tl.uint64)
    z = (z ^ (z >> 30)) * c1.to(tl.uint64)
    z = (z ^ (z >> 27)) * c2.to(tl.uint64)
    z = (z ^ (z >> 31)) | 1
    tl.store(out + pid.to(tl.int64) * 2 + lane, (nh * z).to(tl.int64, bitcast=True))


def _as_pairs(raw: torch.Tensor) -> torch.Tensor:
    """Bytes -> int64 pairs of 32-bit words (same bits), zero-padded to whole chunks."""
    n = raw.numel()
    chunks = max(1, -(-n // CHUNK_BYTES))
    if n == chunks * CHUNK_BYTES and raw.data_ptr() % PAIR_ALIGN == raw.storage_offset() % PAIR_ALIGN == 0:
        return raw.view(torch.int64)
    padded = torch.zeros(chunks * CHUNK_BYTES, dtype=torch.uint8, device=raw.device)
    padded[:n] = raw
    return padded.view(torch.int64)


class _GpuAccumulator:
    def __init__(self, key: FingerprintKey, device: torch.device, keep_chunks: bool = False) -> None:
        self.key = key
        self.keep_chunks = keep_chunks
        self.kept: list[torch.Tensor] = []
        self.device = device
        self.keys = torch.from_numpy(lane_key_pairs(key)).to(device)
        self.sums = [0, 0]
        self.chunk = 0
        self.lengths: list[int] = []

    def add_pairs(self, pairs: torch.Tensor) -> None:
        count = pairs.numel() // CHUNK_PAIRS
        out = torch.empty((count, 2), dtype=torch.int64, device=self.device)
        _nh_chunks[(count,)](
            pairs, self.keys, out, self.chunk, self.key.seeds[0], self.key.seeds[1],
            GOLDEN, SPLITMIX_C1, SPLITMIX_C2, PAIRS=CHUNK_PAIRS,
        )  # fmt: skip
        if self.keep_chunks:
            self.kept.append(out)
        lanes = out.sum(dim=0).tolist()  # int64 addition wraps like uint64
        for lane in (0, 1):
            self.sums[lane] = (self.sums[lane] + (lanes[lane] & MASK64)) & MASK64
        self.chunk += count

    def add_tensor(self, tensor: torch.Tensor) -> None:
        raw = tensor.detach().contiguous().view(-1).view(torch.uint8)
        n = raw.numel()
        self.lengths.append(n)
        full = n // CHUNK_BYTES
        if full:
            # A view that does not start on a pair boundary is copied once (fresh allocations are).
            self.add_pairs(_as_pairs(raw[: full * CHUNK_BYTES]))
        if n % CHUNK_BYTES or n == 0:
            self.add_pairs(_as_pairs(raw[full * CHUNK_BYTES :]))

    def finish(self) -> str:
        trailer = torch.tensor([FORMAT_VERSION, len(self.lengths), *self.lengths], dtype=torch.int64)
        self.add_pairs(_as_pairs(trailer.view(torch.uint8).to(self.device)))
        message = (
            b"trainguard-fp-v1" + self.sums[0].to_bytes(8, "little") + self.sums[1].to_bytes(8, "little")
        )
        return hmac.new(self.key.secret, message, hashlib.sha256).hexdigest()


def fingerprint_tensors(key: FingerprintKey, tensors: Iterable[torch.Tensor], device: torch.device) -> str:
    """The fingerprint of `tensors` (all on `device`), identical to `fingerprint.fingerprint`."""
    acc = _GpuAccumulator(key, device)
    for tensor in tensors:
        acc.add_tensor(tensor)
    return acc.finish()


def fingerprint_with_chunks(
    key: FingerprintKey, buffer: torch.Tensor, device: torch.device
) -> tuple[str, torch.Tensor]:
    """`fingerprint.fingerprint_with_chunks` on the GPU: the terms stay on the device."""
    acc = _GpuAccumulator(key, device, keep_chunks=True)
    acc.add_tensor(buffer)
    data_chunks = acc.chunk
    digest = acc.finish()
    return digest, torch.cat(acc.kept)[:data_chunks]
