"""The weight fingerprint on the GPU: a Triton kernel that follows `integrity/fingerprint.py` word for word.

One program per 16 KiB chunk. It reads the chunk as 2048 little-endian 64-bit pairs (even word in
the low half, odd word in the high half): contiguous, so 128-bit loads, with an evict-first hint
since each byte is read once. The key table is laid out for it on the host (`lane_key_pairs`):
one 16 KiB row of pairs per Toeplitz lane, row l holding K[2l], K[2l+1], …, so both lanes' keys
are 128-bit loads too, issued with the data before any arithmetic (32 KiB, L2-resident). Each
lane adds its keys to the words (mod 2^32), multiplies the halves into 64 bits, and one reduction
sums both lanes; the program stores the chunk's NH values and ends (a streaming pass with nothing
after its reduction). A second, small pass (`_field_terms`, 1,024 chunks per program, 16 bytes
read and written per 16 KiB chunk) applies the field layer in place: the NH value's 32-bit halves
times the chunk's keys in F_p, p = 2^61 - 1 (four table loads, four `_mulmod61`, all 64-bit
without wrap-around), giving the chunk's term. The host sums the terms mod p (high and low
32 bits apart, so nothing wraps) and finishes with the same HMAC as the CPU reference, so the two
give bit-identical fingerprints; `tests/data/fingerprint_vectors.json` checks both.

The launch configuration is `LAUNCH_NUM_WARPS` (`bench/gpu_fingerprint.py` sweeps it and reports
each value's throughput against a read-only kernel launched the same way).

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
    FIELD_A,
    FIELD_B,
    FIELD_C,
    FIELD_D,
    FIELD_ROW,
    MASK32,
    P61,
    FingerprintKey,
    check_chunk_count,
    hmac_message,
    trailer_sums,
)

# Warps per program of the keyed kernel (Triton's default is 4). The kernel has no loop, so
# num_stages does not apply. Change it after a run of `bench/gpu_fingerprint.py`'s sweep.
LAUNCH_NUM_WARPS = 8  # H200: 0.99 of the read-only kernel (4: 0.87, 16: 0.86), bench/gpu_fingerprint.py
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


@triton.jit
def _mulmod61(x, y):  # type: ignore[no-untyped-def]
    """x * y mod 2^61 - 1 for uint64 x, y < 2^61 - 1: `fingerprint.mulmod61`, line for line."""
    x1 = x >> 32
    x0 = x & 0xFFFFFFFF
    y1 = y >> 32
    y0 = y & 0xFFFFFFFF
    mid = x1 * y0 + x0 * y1
    ll = x0 * y0
    s = ((x1 * y1) << 3) + (mid >> 29) + ((mid & 0x1FFFFFFF) << 32)
    s += (ll & 0x1FFFFFFFFFFFFFFF) + (ll >> 61)
    s = (s & 0x1FFFFFFFFFFFFFFF) + (s >> 61)
    return tl.where(s >= 0x1FFFFFFFFFFFFFFF, s - 0x1FFFFFFFFFFFFFFF, s)


@triton.jit  # type: ignore[untyped-decorator]
def _nh_chunks(  # type: ignore[no-untyped-def]
    words,  # int64[n_chunks * PAIRS]: the data as 64-bit pairs
    keys,  # int64[2, PAIRS]: lane_key_pairs
    out,  # uint64[n_chunks, 2] (as int64 storage): each chunk's NH value per lane
    PAIRS: tl.constexpr,
):
    """The streaming pass: one program per chunk, its NH value per lane, nothing else after the
    reduction (the field layer is `_field_terms`, over these values, a second small pass)."""
    pid = tl.program_id(0)
    pairs = tl.arange(0, PAIRS)
    data = load_chunk_pairs(words, pid, PAIRS)
    keys0 = tl.load(keys + pairs).to(tl.uint64, bitcast=True)
    keys1 = tl.load(keys + PAIRS + pairs).to(tl.uint64, bitcast=True)
    low = data.to(tl.uint32)
    high = (data >> 32).to(tl.uint32)
    terms = tl.join(_nh_terms(low, high, keys0), _nh_terms(low, high, keys1))  # [PAIRS, 2 lanes]
    nh = tl.sum(terms, axis=0)
    tl.store(out + pid.to(tl.int64) * 2 + tl.arange(0, 2), nh.to(tl.int64, bitcast=True))


@triton.jit  # type: ignore[untyped-decorator]
def _field_terms(  # type: ignore[no-untyped-def]
    out,  # uint64[count, 2] (as int64 storage): NH values in, the chunks' terms out (in place)
    field,  # int64[2, ROW]: the field tables A, B, C, D of each lane (FingerprintKey.field)
    first_chunk,
    count,
    ROW: tl.constexpr,
    A: tl.constexpr,
    B: tl.constexpr,
    C: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The field layer, BLOCK chunks per program: j = x + 2^11 y + 2^22 z;
    T = (hi A[x] + lo B[x]) C[y] D[z] mod p, per lane (`fingerprint.field_terms`)."""
    chunk = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = (chunk < count)[:, None]
    lane = tl.arange(0, 2)[None, :]
    at = out + chunk[:, None] * 2 + lane
    nh = tl.load(at, mask=inside, other=0).to(tl.uint64, bitcast=True)
    j = (chunk + first_chunk)[:, None]
    row = field + lane * ROW
    key_a = tl.load(row + A + (j & 2047), mask=inside, other=0).to(tl.uint64, bitcast=True)
    key_b = tl.load(row + B + (j & 2047), mask=inside, other=0).to(tl.uint64, bitcast=True)
    key_c = tl.load(row + C + ((j >> 11) & 2047), mask=inside, other=0).to(tl.uint64, bitcast=True)
    key_d = tl.load(row + D + (j >> 22), mask=inside, other=0).to(tl.uint64, bitcast=True)
    t = _mulmod61(nh >> 32, key_a) + _mulmod61(nh & 0xFFFFFFFF, key_b)
    t = tl.where(t >= 0x1FFFFFFFFFFFFFFF, t - 0x1FFFFFFFFFFFFFFF, t)
    t = _mulmod61(_mulmod61(t, key_c), key_d)
    tl.store(at, t.to(tl.int64, bitcast=True), mask=inside)


FIELD_BLOCK = 1024  # chunks per program of the field pass


def launch_nh_chunks(
    pairs: torch.Tensor,
    keys: torch.Tensor,
    field: torch.Tensor,
    out: torch.Tensor,
    first_chunk: int,
    num_warps: int = LAUNCH_NUM_WARPS,
) -> None:
    """The keyed kernel over every chunk of `pairs`, terms into `out` (chunks x 2, int64 storage)."""
    count = pairs.numel() // CHUNK_PAIRS
    check_chunk_count(first_chunk + count)
    _nh_chunks[(count,)](pairs, keys, out, PAIRS=CHUNK_PAIRS, num_warps=num_warps)
    _field_terms[(triton.cdiv(count, FIELD_BLOCK),)](
        out, field, first_chunk, count,
        ROW=FIELD_ROW, A=FIELD_A, B=FIELD_B, C=FIELD_C, D=FIELD_D, BLOCK=FIELD_BLOCK,
    )  # fmt: skip


def sum_terms_mod_p(terms: torch.Tensor) -> list[int]:
    """Each lane's exact sum of terms (chunks x 2, each < 2^61) mod p, on the device: the high and
    low 32 bits are summed apart (int64 holds 2^31 chunks of either), so nothing wraps."""
    high, low = torch.stack((terms >> 32, terms & MASK32)).sum(dim=1).tolist()  # one copy to the host
    return [((h << 32) + lo) % P61 for h, lo in zip(high, low, strict=True)]


def _as_pairs(raw: torch.Tensor) -> torch.Tensor:
    """Bytes -> int64 pairs of 32-bit words (same bits), zero-padded to whole chunks."""
    n = raw.numel()
    chunks = max(1, -(-n // CHUNK_BYTES))
    if n == chunks * CHUNK_BYTES and raw.data_ptr() % PAIR_ALIGN == raw.storage_offset() % PAIR_ALIGN == 0:
        return raw.view(torch.int64)
    padded = torch.zeros(chunks * CHUNK_BYTES, dtype=torch.uint8, device=raw.device)
    padded[:n] = raw
    return padded.view(torch.int64)


_TABLES: dict[tuple[bytes, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _device_tables(key: FingerprintKey, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The key's NH table (as lane pairs) and field tables on `device`, copied there once per key
    and device (a sidecar fingerprints every region of every step with the same key)."""
    found = _TABLES.get((key.secret, device))
    if found is None:
        keys = torch.from_numpy(lane_key_pairs(key)).to(device)
        field = torch.from_numpy(key.field.view(np.int64)).to(device)
        found = _TABLES[(key.secret, device)] = (keys, field)
    return found


class _GpuAccumulator:
    def __init__(self, key: FingerprintKey, device: torch.device, keep_chunks: bool = False) -> None:
        self.key = key
        self.keep_chunks = keep_chunks
        self.kept: list[torch.Tensor] = []
        self.device = device
        self.keys, self.field = _device_tables(key, device)
        self.sums = [0, 0]
        self.chunk = 0
        self.lengths: list[int] = []

    def add_pairs(self, pairs: torch.Tensor) -> None:
        count = pairs.numel() // CHUNK_PAIRS
        out = torch.empty((count, 2), dtype=torch.int64, device=self.device)
        launch_nh_chunks(pairs, self.keys, self.field, out, self.chunk)
        if self.keep_chunks:
            self.kept.append(out)
        for lane, total in enumerate(sum_terms_mod_p(out)):
            self.sums[lane] = (self.sums[lane] + total) % P61
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
        sums, count = trailer_sums(self.key, self.lengths, self.chunk)
        self.sums = [(mine + tail) % P61 for mine, tail in zip(self.sums, sums, strict=True)]
        self.chunk += count
        message = hmac_message(self.chunk, len(self.lengths), self.sums)
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
    digest = acc.finish()  # the trailer's terms are the CPU's, never kept
    return digest, acc.kept[0] if len(acc.kept) == 1 else torch.cat(acc.kept)
