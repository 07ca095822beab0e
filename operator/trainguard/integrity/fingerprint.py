"""A keyed fingerprint of model weights: NH universal hashing (as in UMAC), CPU reference.

Construction (format 1)
-----------------------
* Key: a 32-byte secret held only by the integrity sidecar. From it, with SHA-256 in counter
  mode, come a table K of CHUNK_WORDS + 2 words of 32 bits (16 KiB, small enough to stay in a GPU's
  L2 cache) and two 64-bit seeds, one per lane.
* Input: tensors in a fixed order. Each tensor's raw bytes (C order, any dtype) are zero-padded to
  whole chunks of CHUNK_WORDS little-endian 32-bit words (16 KiB); chunks are numbered globally
  across tensors. A trailer chunk records the format, the number of tensors and each byte length,
  so padding, order and boundaries cannot be traded against each other.
* Per chunk j and lane l (l = 0, 1), with words w_0 … w_{n-1}:
      NH_l(j) = sum over even i of ((w_i + K_{i+2l}) mod 2^32) * ((w_{i+1} + K_{i+1+2l}) mod 2^32)  mod 2^64
  (lane 1 uses the key table shifted by two words: UMAC's Toeplitz construction).
* Chunk results are combined with a secret odd multiplier per chunk and lane,
  M_l(j) = splitmix64(seed_l + (j + 1) * 0x9E3779B97F4A7C15) | 1:
      H_l = sum_j NH_l(j) * M_l(j)  mod 2^64
* The fingerprint is HMAC-SHA256(key, "trainguard-fp-v1" || H_0 || H_1), so a reported
  fingerprint reveals nothing of the internal sums.

Everything before the HMAC is integer arithmetic with wrap-around, so a GPU kernel that follows
the same definition gives bit-identical results; `tests/data/fingerprint_vectors.json` holds the
shared test vectors, and `reference_fingerprint` is a slow, line-by-line version of the formulas.

CPU paths: the NH sums come from a loop compiled by numba (`nh_native.py`, in the `integrity`
extra; no system compiler) where it loads, else from numpy, several times slower, with the same
results. `cpu_backend()` names the one in use; the first fingerprint logs it, and why numba is not
used where it is not. `backend="numpy"` forces the fallback.

Collision bound: for a fixed key unknown to the adversary, NH over 32-bit words is
2^-32-almost-universal per lane, and two Toeplitz lanes give about 2^-64 for two different inputs
of the same length; different lengths differ in the trailer. A secret odd multiplier per chunk
keeps a change confined to one chunk from cancelling.

What it does not protect against: anyone who holds the key (the sidecar's memory); changes made
and undone between two fingerprints (it checks states, not every instant); differences the
training itself produces (replicas that legitimately diverge, e.g. on non-deterministic
kernels, are reported as disagreeing); code or data changes (signed images and read-only storage
cover those).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from trainguard.integrity import nh_native
from trainguard.integrity.nh_native import NhKernel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_WORDS = 4096  # 32-bit words per chunk: 16 KiB of data
CHUNK_BYTES = CHUNK_WORDS * 4
KEY_BYTES = 32
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1
_BLOCK_CHUNKS = 8  # chunks processed per step: keeps temporaries in the CPU's L2 cache

U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
Backend = Literal["auto", "numba", "numpy"]


@dataclass(frozen=True)
class FingerprintKey:
    secret: bytes
    table: U32  # CHUNK_WORDS + 2 words
    seeds: tuple[int, int]

    @classmethod
    def from_secret(cls, secret: bytes) -> FingerprintKey:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"the fingerprint key must be {KEY_BYTES} bytes, got {len(secret)}")
        stream = b"".join(
            hashlib.sha256(secret + b"trainguard-nh-table" + i.to_bytes(4, "big")).digest()
            for i in range((CHUNK_WORDS + 2) * 4 // 32 + 1)
        )
        table = np.frombuffer(stream[: (CHUNK_WORDS + 2) * 4], dtype="<u4").astype(np.uint32)
        seed_bytes = hashlib.sha256(secret + b"trainguard-nh-multipliers").digest()
        seeds = (int.from_bytes(seed_bytes[:8], "little"), int.from_bytes(seed_bytes[8:16], "little"))
        return cls(secret, table, seeds)


def splitmix64(x: U64) -> U64:
    """The splitmix64 finaliser, element-wise, with 64-bit wrap-around."""
    with np.errstate(over="ignore"):
        z = x.copy()
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def chunk_multipliers(seed: int, first: int, count: int) -> U64:
    """M(j) for j in [first, first + count): odd, secret, cheap to compute anywhere."""
    j = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        state = np.uint64(seed) + j * np.uint64(GOLDEN)
    return splitmix64(state) | np.uint64(1)


def as_bytes(array: object) -> memoryview:
    """Raw bytes of an array in C order: numpy arrays, or anything numpy reads (bytes, memoryviews).

    PyTorch tensors of any dtype (bf16 too) go through `trainguard.gpu.tensors.tensor_bytes`."""
    contiguous = np.ascontiguousarray(array)
    return contiguous.reshape(-1).view(np.uint8).data


def _words(data: memoryview) -> U32:
    """Little-endian 32-bit words of `data`, zero-padded to whole chunks."""
    n = len(data)
    chunks = max(1, -(-n // CHUNK_BYTES))
    words = np.zeros(chunks * CHUNK_WORDS, dtype=np.uint32)
    words.view(np.uint8)[:n] = np.frombuffer(data, dtype=np.uint8)
    return words


@functools.cache
def _native_kernel() -> NhKernel | None:
    """The compiled NH loop, loaded (compiled, or read from numba's cache) once per process."""
    kernel, about = nh_native.load()
    if kernel is None:
        log.warning("fingerprint CPU path: numpy fallback, several times slower (%s)", about)
    else:
        log.info("fingerprint CPU path: compiled NH loop (%s)", about)
    return kernel


def cpu_backend() -> Literal["numba", "numpy"]:
    """The CPU path `fingerprint` takes by default: "numba" (compiled loop) or "numpy" (fallback)."""
    return "numba" if _native_kernel() is not None else "numpy"


def _kernel_for(backend: Backend) -> NhKernel | None:
    if backend == "numpy":
        return None
    kernel = _native_kernel()
    if kernel is None and backend == "numba":
        raise RuntimeError("the numba fingerprint path is not available: see the log for why")
    return kernel


class _Accumulator:
    def __init__(self, key: FingerprintKey, keep_chunks: bool = False, backend: Backend = "auto") -> None:
        self.key = key
        self.keep_chunks = keep_chunks
        self.kept: list[U64] = []
        self.sums = [0, 0]
        self.chunk = 0
        self.lengths: list[int] = []
        self._kernel = _kernel_for(backend)
        if self._kernel is not None:
            # K_{2i} and K_{2i+1} per 64-bit pair i; lane 1 starts one pair later (Toeplitz).
            wide = key.table.astype(np.uint64)
            self._key_even, self._key_odd = wide[0::2].copy(), wide[1::2].copy()
        else:
            self._tmp = np.empty((_BLOCK_CHUNKS, CHUNK_WORDS), dtype=np.uint32)
            self._a = np.empty((_BLOCK_CHUNKS, CHUNK_WORDS // 2), dtype=np.uint64)
            self._b = np.empty_like(self._a)

    def add_words(self, words: U32) -> None:
        chunks = words.reshape(-1, CHUNK_WORDS)
        count = chunks.shape[0]
        nh = np.empty((2, count), dtype=np.uint64)
        if self._kernel is not None:
            self._native_nh(self._kernel, words, nh)
        else:
            self._numpy_nh(chunks, nh)
        products = []
        for lane in (0, 1):
            mult = chunk_multipliers(self.key.seeds[lane], self.chunk, count)
            with np.errstate(over="ignore"):
                product = nh[lane] * mult
            products.append(product)
            self.sums[lane] = (self.sums[lane] + int(product.sum(dtype=np.uint64))) & MASK64
        if self.keep_chunks:
            self.kept.append(np.stack(products, axis=1))
        self.chunk += count

    def _native_nh(self, kernel: NhKernel, words: U32, nh: U64) -> None:
        pairs = words.reshape(-1).view(np.uint64)  # little-endian: the low half is the even word
        if not pairs.flags.aligned:
            pairs = pairs.copy()
        pairs = pairs.view()
        pairs.flags.writeable = False  # the loop's one signature takes read-only data (tensor memory)
        kernel(pairs, self._key_even, self._key_odd, nh)

    def _numpy_nh(self, chunks: U32, nh: U64) -> None:
        low = np.uint64(0xFFFFFFFF)
        for start in range(0, chunks.shape[0], _BLOCK_CHUNKS):
            block = chunks[start : start + _BLOCK_CHUNKS]
            n = block.shape[0]
            tmp, a, b = self._tmp[:n], self._a[:n], self._b[:n]
            for lane in (0, 1):
                np.add(block, self.key.table[2 * lane : 2 * lane + CHUNK_WORDS], out=tmp)
                pairs = tmp.view(np.uint64)  # little-endian: the low half is the even word
                np.bitwise_and(pairs, low, out=a)
                np.right_shift(pairs, np.uint64(32), out=b)
                np.multiply(a, b, out=a)
                a.sum(axis=1, dtype=np.uint64, out=nh[lane, start : start + n])

    def add_tensor(self, data: memoryview) -> None:
        """Whole chunks straight from the tensor's memory (no copy); only the tail is padded."""
        n = len(data)
        self.lengths.append(n)
        full = n // CHUNK_BYTES
        if full:
            self.add_words(
                np.frombuffer(data, dtype="<u4", count=full * CHUNK_WORDS).astype(np.uint32, copy=False)
            )
        if n % CHUNK_BYTES or n == 0:
            self.add_words(_words(data[full * CHUNK_BYTES :]))

    def finish(self) -> str:
        trailer = np.array([FORMAT_VERSION, len(self.lengths), *self.lengths], dtype="<u8")
        self.add_words(_words(trailer.view(np.uint8).data))
        message = (
            b"trainguard-fp-v1" + self.sums[0].to_bytes(8, "little") + self.sums[1].to_bytes(8, "little")
        )
        return hmac.new(self.key.secret, message, hashlib.sha256).hexdigest()


def fingerprint(key: FingerprintKey, tensors: Iterable[object], backend: Backend = "auto") -> str:
    """The fingerprint (64 hex digits) of `tensors` (arrays, see `as_bytes`), in order.

    `backend`: "auto" (the compiled loop where it loads, else numpy), "numba" (fails without it)
    or "numpy"; all give the same fingerprint."""
    acc = _Accumulator(key, backend=backend)
    for tensor in tensors:
        acc.add_tensor(as_bytes(tensor))
    return acc.finish()


def fingerprint_with_chunks(
    key: FingerprintKey, buffer: object, backend: Backend = "auto"
) -> tuple[str, U64]:
    """The fingerprint of one buffer, and its keyed per-chunk terms (chunks x 2 lanes).

    Comparing the terms of two fingerprints of the same buffer tells which 16 KiB chunks
    changed, so a violation can name the tensors. The terms are secret-keyed: they stay in the
    sidecar's memory and are never reported."""
    acc = _Accumulator(key, keep_chunks=True, backend=backend)
    acc.add_tensor(as_bytes(buffer))
    data_chunks = acc.chunk
    digest = acc.finish()
    return digest, np.concatenate(acc.kept)[:data_chunks]


def reference_fingerprint(key: FingerprintKey, tensors: Sequence[bytes]) -> str:
    """The definition above, word by word in Python integers: slow, for checking the fast paths."""
    table = [int(x) for x in key.table]
    sums = [0, 0]
    chunk = 0

    def absorb(data: bytes) -> None:
        nonlocal chunk
        chunks = max(1, -(-len(data) // CHUNK_BYTES))
        padded = data.ljust(chunks * CHUNK_BYTES, b"\0")
        for offset in range(0, len(padded), CHUNK_BYTES):
            words = [
                int.from_bytes(padded[offset + 4 * i : offset + 4 * i + 4], "little")
                for i in range(CHUNK_WORDS)
            ]
            for lane in (0, 1):
                nh = 0
                for i in range(0, CHUNK_WORDS, 2):
                    a = (words[i] + table[i + 2 * lane]) & 0xFFFFFFFF
                    b = (words[i + 1] + table[i + 1 + 2 * lane]) & 0xFFFFFFFF
                    nh = (nh + a * b) & MASK64
                z = (key.seeds[lane] + (chunk + 1) * GOLDEN) & MASK64
                z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
                z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
                mult = (z ^ (z >> 31)) | 1
                sums[lane] = (sums[lane] + nh * mult) & MASK64
            chunk += 1

    for data in tensors:
        absorb(data)
    trailer = b"".join(x.to_bytes(8, "little") for x in [FORMAT_VERSION, len(tensors), *map(len, tensors)])
    absorb(trailer)
    message = b"trainguard-fp-v1" + sums[0].to_bytes(8, "little") + sums[1].to_bytes(8, "little")
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()
