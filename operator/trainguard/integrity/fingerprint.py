"""A keyed fingerprint of model weights: NH universal hashing (as in UMAC), CPU reference.

Construction (format 2)
-----------------------
* Key: a 32-byte secret held only by the integrity sidecar. From it, with SHA-256 in counter
  mode, come a table K of CHUNK_WORDS + 2 words of 32 bits (16 KiB, small enough to stay in a GPU's
  L2 cache) and, per lane l (l = 0, 1), four tables of elements of the field F_p, p = 2^61 - 1:
  A_l, B_l, C_l of 2048 elements and D_l of 1024 (`FIELD_ROW` = 7168 per lane, 56 KiB), each
  element uniform in [0, p) (61-bit values from the stream, the one value p itself skipped).
* Input: tensors in a fixed order. Each tensor's raw bytes (C order, any dtype) are zero-padded to
  whole chunks of CHUNK_WORDS little-endian 32-bit words (16 KiB); chunks are numbered globally
  across tensors. A trailer chunk records the format, the number of tensors and each byte length,
  so padding, order and boundaries cannot be traded against each other.
* Per chunk j and lane l, with words w_0 … w_{n-1}:
      NH_l(j) = sum over even i of ((w_i + K_{i+2l}) mod 2^32) * ((w_{i+1} + K_{i+1+2l}) mod 2^32)  mod 2^64
  (lane 1 uses the key table shifted by two words: UMAC's Toeplitz construction).
* Each NH value is split into its 32-bit halves, hi and lo (each < 2^32 < p), and becomes the
  chunk's term in F_p, with the chunk number written in digits j = x + 2^11 y + 2^22 z
  (x, y < 2^11, z < 2^10; at most 2^32 chunks, 64 TiB, per fingerprint):
      T_l(j) = (hi * A_l[x] + lo * B_l[x]) * C_l[y] * D_l[z]  mod p
      H_l = sum_j T_l(j)  mod p
  Everything is exact 64-bit integer arithmetic without wrap-around (`mulmod61`: 32-bit limbs and
  2^61 = 1 mod p), so a GPU kernel needs no 128-bit multiply.
* The fingerprint is HMAC-SHA256(key, "trainguard-fp-v2" || n || t || H_0 || H_1), n the number
  of chunks (trailer included) and t the number of tensors, each as 8 little-endian bytes, so a
  reported fingerprint reveals nothing of the internal sums.

Everything before the HMAC is integer arithmetic, so a GPU kernel that follows the same definition
gives bit-identical results; `tests/data/fingerprint_vectors.json` holds the shared test vectors,
and `reference_fingerprint` is a slow, line-by-line version of the formulas.

CPU paths: the NH sums come from a loop compiled by numba (`nh_native.py`, in the `integrity`
extra; no system compiler) where it loads, else from numpy, several times slower, with the same
results (the field layer too: a second compiled loop, or numpy). `cpu_backend()` names the one in
use; the first fingerprint logs it, and why numba is not used where it is not.
`backend="numpy"` forces the fallback.

Collision bound
---------------
For a key unknown to the adversary (K and the field tables modelled as uniform and independent:
they come from SHA-256 of the secret) and two different inputs X, Y chosen without seeing anything
keyed, the fingerprints agree with probability at most

    eps = 2^-64 + 2 * 2^-32 * (3/p) + (3/p)^2  <  2^-64 * (1 + 2^-26)

(plus HMAC-SHA256's own collisions). Proof sketch:
1. Different numbers of chunks or tensors: the HMAC messages differ. Equal numbers: the trailers
   have the same size and the same place (the last chunks), so different length lists differ
   there, and equal ones lay the data out alike, so some data chunk differs. Either way there is
   a chunk j* where X and Y differ, at the same position in both.
2. NH over 32-bit words is 2^-32-almost-universal for messages of equal length, and the Toeplitz
   pair of lanes is 2^-64-almost-universal (Black, Halevi, Krawczyk, Krovetz, Rogaway: "UMAC: fast
   and secure message authentication", CRYPTO 1999, NH and its Toeplitz extension). So
   Pr[NH_0(j*) and NH_1(j*) both equal] <= 2^-64 and Pr[NH_l(j*) equal] <= 2^-32 for each lane.
3. Fix K (so every NH value), and a lane l whose NH values differ in some chunk. Then
   H_l(X) - H_l(Y) is a polynomial in the entries of A_l, B_l, C_l, D_l: the sum over chunks of
   (dhi_j A_l[x] + dlo_j B_l[x]) C_l[y] D_l[z], where dhi_j, dlo_j are differences of 32-bit halves,
   so integers of absolute value < 2^32 < p, nonzero mod p when nonzero. Distinct (j, half) give
   distinct monomials, so the polynomial is nonzero, of degree 3; the tables are independent of K,
   and by Schwartz-Zippel it vanishes with probability <= 3/p. The lanes' tables are independent.
4. Let E_l be "lane l's NH values are equal in every chunk" (an event of K alone). A collision
   needs E_0 and E_1 (<= 2^-64, by 2 at j*); or E_0, not E_1 and lane 1's field layer vanishing
   (<= 2^-32 * 3/p, by 2 and 3), or the same with the lanes swapped; or neither E_l and both
   field layers vanishing (<= (3/p)^2). Summing gives eps.

Why not format 1's combination, H_l = sum_j NH_l(j) * M_l(j) mod 2^64 with a secret odd M_l(j):
for a change in one chunk it keeps NH's 2^-64, but over several chunks powers of two cancel. Flip
the sign bit of one fp32 in two chunks whose partner words are equal: each lane's difference is
2^31 * b * (s_1 M_1 + s_2 M_2) for the same b = partner word + key, which vanishes mod 2^64 with
probability (w + 2) / 2^(w + 1) per lane, w = 32, about 2^-28, so about 2^-56 for both lanes.
`tests/unit/test_fingerprint_bound.py` checks both statements exactly on a scaled-down model
(3-bit words) by enumerating every key.

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
from trainguard.integrity.nh_native import Compiled

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
DOMAIN = b"trainguard-fp-v2"  # the HMAC's domain string: names the format
CHUNK_WORDS = 4096  # 32-bit words per chunk: 16 KiB of data
CHUNK_BYTES = CHUNK_WORDS * 4
KEY_BYTES = 32
MASK32 = (1 << 32) - 1
P61 = (1 << 61) - 1  # the field layer's prime
# The chunk number j in digits x + 2^11 y + 2^22 z, one key table per digit (see the docstring).
FIELD_DIGIT_BITS = (11, 11, 10)
FIELD_A, FIELD_B, FIELD_C, FIELD_D = 0, 2048, 4096, 6144  # offsets of the tables in a lane's row
FIELD_ROW = 7168  # field elements per lane
MAX_CHUNKS = 1 << 32  # chunks per fingerprint that the digits can number (64 TiB)
_BLOCK_CHUNKS = 8  # chunks processed per step: keeps temporaries in the CPU's L2 cache

U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
Backend = Literal["auto", "numba", "numpy"]


def _stream(secret: bytes, label: bytes, nbytes: int) -> bytes:
    """SHA-256 of the secret, a label and a counter, concatenated: the key schedule's one generator."""
    blocks = -(-nbytes // 32)
    return b"".join(hashlib.sha256(secret + label + i.to_bytes(4, "big")).digest() for i in range(blocks))[
        :nbytes
    ]


def _field_elements(secret: bytes, label: bytes, count: int) -> U64:
    """`count` elements uniform in [0, P61): 61-bit values of the stream, skipping the value P61."""
    extra = 8  # P61 comes once in 2^61 draws: a few spare draws make another round all but impossible
    while True:
        raw: U64 = np.frombuffer(_stream(secret, label, 8 * (count + extra)), dtype="<u8").astype(np.uint64)
        kept: U64 = raw[(raw & np.uint64(P61)) != np.uint64(P61)] & np.uint64(P61)
        if kept.size >= count:
            return kept[:count].copy()
        extra *= 2


@dataclass(frozen=True)
class FingerprintKey:
    secret: bytes
    table: U32  # CHUNK_WORDS + 2 words of NH key
    field: U64  # 2 lanes x FIELD_ROW elements of F_p: tables A, B, C, D at FIELD_A … FIELD_D

    @classmethod
    def from_secret(cls, secret: bytes) -> FingerprintKey:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"the fingerprint key must be {KEY_BYTES} bytes, got {len(secret)}")
        stream = _stream(secret, b"trainguard-nh-table", (CHUNK_WORDS + 2) * 4)
        table = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
        field = _field_elements(secret, b"trainguard-fp-field", 2 * FIELD_ROW).reshape(2, FIELD_ROW)
        return cls(secret, table, field)


def mulmod61(x: U64, y: U64) -> U64:
    """x * y mod P61, element-wise, for x, y < P61, in 64-bit arithmetic that never wraps.

    With 32-bit limbs x = x1 2^32 + x0, y = y1 2^32 + y0 (x1, y1 < 2^29) and 2^61 = 1 mod p:
    x1 y1 2^64 = 8 x1 y1; the middle m = x1 y0 + x0 y1 < 2^62 gives m 2^32 = (m >> 29) + (m mod 2^29) 2^32;
    x0 y0 < 2^64 gives (x0 y0 mod 2^61) + (x0 y0 >> 61). The five parts sum to < 2^63."""
    low, shift = np.uint64(MASK32), np.uint64(32)
    x1, x0, y1, y0 = x >> shift, x & low, y >> shift, y & low
    mid = x1 * y0 + x0 * y1
    ll = x0 * y0
    s = ((x1 * y1) << np.uint64(3)) + (mid >> np.uint64(29)) + ((mid & np.uint64((1 << 29) - 1)) << shift)
    s += (ll & np.uint64(P61)) + (ll >> np.uint64(61))
    s = (s & np.uint64(P61)) + (s >> np.uint64(61))
    return _below_p(s)


def _below_p(s: U64) -> U64:
    """s mod P61 for s < 2 P61: one conditional subtraction."""
    reduced: U64 = np.where(s >= np.uint64(P61), s - np.uint64(P61), s)
    return reduced


def _halves_times(hi: U64, lo: U64, a: U64, b: U64) -> U64:
    """(hi * a + lo * b) mod P61 for hi, lo < 2^32 and a, b < P61: `mulmod61` with x1 = 0, both
    products sharing one reduction. m = hi a1 + lo b1 < 2^62 gives m 2^32 as in `mulmod61`; each
    low product, < 2^64, is folded alone (their sum could wrap)."""
    low, shift = np.uint64(MASK32), np.uint64(32)
    m = hi * (a >> shift) + lo * (b >> shift)
    ha, lb = hi * (a & low), lo * (b & low)
    s = (m >> np.uint64(29)) + ((m & np.uint64((1 << 29) - 1)) << shift)
    s += (ha & np.uint64(P61)) + (ha >> np.uint64(61)) + (lb & np.uint64(P61)) + (lb >> np.uint64(61))
    s = (s & np.uint64(P61)) + (s >> np.uint64(61))
    return _below_p(s)


def check_chunk_count(chunks: int) -> None:
    if chunks > MAX_CHUNKS:
        raise ValueError(f"a fingerprint covers at most {MAX_CHUNKS} chunks of {CHUNK_BYTES} bytes")


def field_terms(field: U64, nh: U64, first: int) -> U64:
    """T_l(j) for chunks j = first, first + 1, …: nh is 2 lanes x chunks of NH values; same shape out.

    Taken 2048 chunks at a time, those with the same y and z: the block's C[y] D[z] is one number,
    and the temporaries (16 KiB each) stay in the CPU's cache."""
    count = nh.shape[1]
    check_chunk_count(first + count)
    out = np.empty_like(nh)
    start = 0
    while start < count:
        j = first + start
        upper = j >> 11  # y + 2^11 z
        stop = min(count, start + 2048 - (j & 2047))
        x = np.arange(j & 2047, (j & 2047) + stop - start)
        for lane in (0, 1):
            row = field[lane]
            cd = int(row[FIELD_C + (upper & 2047)]) * int(row[FIELD_D + (upper >> 11)]) % P61
            hi, lo = nh[lane, start:stop] >> np.uint64(32), nh[lane, start:stop] & np.uint64(MASK32)
            t = _halves_times(hi, lo, row[FIELD_A + x], row[FIELD_B + x])
            out[lane, start:stop] = mulmod61(t, np.full_like(t, cd))
        start = stop
    return out


def sum_mod_p(terms: U64) -> int:
    """The exact sum of field elements (< 2^61 each) mod P61: halves summed apart, so nothing wraps."""
    high = int((terms >> np.uint64(32)).sum(dtype=np.uint64))
    low = int((terms & np.uint64(MASK32)).sum(dtype=np.uint64))
    return ((high << 32) + low) % P61


def hmac_message(chunks: int, tensors: int, sums: Sequence[int]) -> bytes:
    """What the HMAC finishes: the domain, the number of chunks and of tensors, H_0 and H_1."""
    return DOMAIN + b"".join(v.to_bytes(8, "little") for v in (chunks, tensors, *sums))


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
def _native_kernel() -> Compiled | None:
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


def _kernel_for(backend: Backend) -> Compiled | None:
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
            terms = np.empty_like(nh)
            check_chunk_count(self.chunk + count)
            self._kernel.field(nh, self.key.field, self.chunk, terms)
        else:
            self._numpy_nh(chunks, nh)
            terms = field_terms(self.key.field, nh, self.chunk)
        for lane in (0, 1):
            self.sums[lane] = (self.sums[lane] + sum_mod_p(terms[lane])) % P61
        if self.keep_chunks:
            self.kept.append(terms.T.copy())
        self.chunk += count

    def _native_nh(self, kernel: Compiled, words: U32, nh: U64) -> None:
        pairs = words.reshape(-1).view(np.uint64)  # little-endian: the low half is the even word
        if not pairs.flags.aligned:
            pairs = pairs.copy()
        pairs = pairs.view()
        pairs.flags.writeable = False  # the loop's one signature takes read-only data (tensor memory)
        kernel.nh(pairs, self._key_even, self._key_odd, nh)

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
        self.add_words(trailer_words(self.lengths))
        message = hmac_message(self.chunk, len(self.lengths), self.sums)
        return hmac.new(self.key.secret, message, hashlib.sha256).hexdigest()


def trailer_words(lengths: Sequence[int]) -> U32:
    """The trailer chunk(s): the format, the number of tensors and each one's byte length."""
    trailer = np.array([FORMAT_VERSION, len(lengths), *lengths], dtype="<u8")
    return _words(trailer.view(np.uint8).data)


def trailer_sums(key: FingerprintKey, lengths: Sequence[int], first_chunk: int) -> tuple[list[int], int]:
    """Each lane's sum of the trailer's terms (mod p) when it starts at chunk `first_chunk`, and
    how many chunks it takes: computed here, on the CPU, by the GPU path (one small chunk is not
    worth a kernel launch and a copy each way)."""
    tail = _Accumulator(key)
    tail.chunk = first_chunk
    tail.add_words(trailer_words(lengths))
    return tail.sums, tail.chunk - first_chunk


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
    field = [[int(v) for v in row] for row in key.field]
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
            x, y, z = chunk % 2**11, chunk // 2**11 % 2**11, chunk // 2**22
            for lane in (0, 1):
                nh = 0
                for i in range(0, CHUNK_WORDS, 2):
                    a = (words[i] + table[i + 2 * lane]) % 2**32
                    b = (words[i + 1] + table[i + 1 + 2 * lane]) % 2**32
                    nh = (nh + a * b) % 2**64
                row = field[lane]
                hi, lo = nh // 2**32, nh % 2**32
                term = (hi * row[FIELD_A + x] + lo * row[FIELD_B + x]) * row[FIELD_C + y] * row[FIELD_D + z]
                sums[lane] = (sums[lane] + term) % P61
            chunk += 1

    for data in tensors:
        absorb(data)
    trailer = b"".join(x.to_bytes(8, "little") for x in [FORMAT_VERSION, len(tensors), *map(len, tensors)])
    absorb(trailer)
    message = hmac_message(chunk, len(tensors), sums)
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()
