"""The weight fingerprint on the GPU: a Triton kernel that follows `integrity/fingerprint.py` word for word.

One program per 16 KiB chunk: it loads the chunk's even and odd 32-bit words, adds the key table
(L2-resident), multiplies the pairs into 64 bits, sums them (both Toeplitz lanes), and multiplies
each lane's sum by the chunk's secret odd multiplier (splitmix64, computed in the kernel). The host
adds the per-chunk results (mod 2^64) and finishes with the same HMAC as the CPU reference, so
the two give bit-identical fingerprints; `tests/data/fingerprint_vectors.json` checks both.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), which
is how the CPU-only test suite checks the kernel's arithmetic.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

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


# Triton reads a kernel's annotations itself (tl.constexpr), so this one stays unannotated for mypy.
@triton.jit  # type: ignore[untyped-decorator]
def _nh_chunks(  # type: ignore[no-untyped-def]
    words,  # uint32[n_chunks * CHUNK]
    table,  # uint32[CHUNK + 2]
    out,  # uint64[n_chunks, 2] (as int64 storage)
    first_chunk,
    seed0,
    seed1,
    golden,
    c1,
    c2,
    CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    pairs = tl.arange(0, CHUNK // 2)
    base = pid.to(tl.int64) * CHUNK
    even = tl.load(words + base + 2 * pairs).to(tl.uint32)
    odd = tl.load(words + base + 2 * pairs + 1).to(tl.uint32)
    index = (first_chunk + pid + 1).to(tl.uint64)
    for lane in tl.static_range(2):
        k_even = tl.load(table + 2 * pairs + 2 * lane).to(tl.uint32)
        k_odd = tl.load(table + 2 * pairs + 1 + 2 * lane).to(tl.uint32)
        a = (even + k_even).to(tl.uint64)
        b = (odd + k_odd).to(tl.uint64)
        nh = tl.sum(a * b, axis=0)
        seed = seed0 if lane == 0 else seed1
        z = seed.to(tl.uint64) + index * golden.to(tl.uint64)
        z = (z ^ (z >> 30)) * c1.to(tl.uint64)
        z = (z ^ (z >> 27)) * c2.to(tl.uint64)
        z = (z ^ (z >> 31)) | 1
        tl.store(out + pid * 2 + lane, (nh * z).to(tl.int64, bitcast=True))


def _as_words(raw: torch.Tensor) -> torch.Tensor:
    """Bytes -> int32 words (same bits as uint32), zero-padded to whole chunks."""
    n = raw.numel()
    chunks = max(1, -(-n // CHUNK_BYTES))
    if n == chunks * CHUNK_BYTES:
        return raw.view(torch.int32)
    padded = torch.zeros(chunks * CHUNK_BYTES, dtype=torch.uint8, device=raw.device)
    padded[:n] = raw
    return padded.view(torch.int32)


class _GpuAccumulator:
    def __init__(self, key: FingerprintKey, device: torch.device, keep_chunks: bool = False) -> None:
        self.key = key
        self.keep_chunks = keep_chunks
        self.kept: list[torch.Tensor] = []
        self.device = device
        self.table = torch.from_numpy(key.table.view("<i4").copy()).to(device)
        self.sums = [0, 0]
        self.chunk = 0
        self.lengths: list[int] = []

    def add_words(self, words: torch.Tensor) -> None:
        count = words.numel() // CHUNK_WORDS
        out = torch.empty((count, 2), dtype=torch.int64, device=self.device)
        _nh_chunks[(count,)](
            words, self.table, out, self.chunk, self.key.seeds[0], self.key.seeds[1],
            GOLDEN, SPLITMIX_C1, SPLITMIX_C2, CHUNK=CHUNK_WORDS,
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
            self.add_words(raw[: full * CHUNK_BYTES].view(torch.int32))
        if n % CHUNK_BYTES or n == 0:
            self.add_words(_as_words(raw[full * CHUNK_BYTES :]))

    def finish(self) -> str:
        trailer = torch.tensor([FORMAT_VERSION, len(self.lengths), *self.lengths], dtype=torch.int64)
        self.add_words(_as_words(trailer.view(torch.uint8).to(self.device)))
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
