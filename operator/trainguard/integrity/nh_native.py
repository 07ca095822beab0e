"""The fingerprint's NH inner loop compiled by numba: the fast CPU path of `fingerprint.py`.

numba ships as wheels with its own LLVM (llvmlite), so installing `trainguard[integrity]` needs no
system compiler; the loop is compiled at first use (about a second) and cached on disk
(`cache=True`: next to this file, else numba's user cache dir; NUMBA_CACHE_DIR chooses another),
so later processes load it in a fraction of that. LLVM vectorises it into 32x32->64 multiplies
(`vpmuludq` on x86). Where numba is missing or cannot compile, `load` says why and
`fingerprint.py` keeps its numpy path, which computes the same numbers.

The loop reads each chunk as CHUNK_WORDS / 2 little-endian 64-bit pairs p = w_even | w_odd << 32:
    NH_l = sum_i ((p_i + K_{2i+2l}) mod 2^32) * (((p_i >> 32) + K_{2i+1+2l}) mod 2^32)  mod 2^64
which is the definition in `fingerprint.py` word for word (the carry of the low half's addition
into the high half is masked off). Everything is unsigned 64-bit with wrap-around.

A second compiled loop, `_field_chunks`, turns the NH values into the chunks' terms in F_p
(`fingerprint.field_terms` in numpy, `fingerprint.mulmod61` for the arithmetic): a few dozen
scalar operations per chunk, where numpy's would cost a tenth of the NH loop's time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
# (pairs: chunks * pairs_per_chunk read-only words, key_even, key_odd: pairs_per_chunk + 1 each,
#  out: 2 lanes x chunks), filled in place
NhKernel = Callable[[U64, U64, U64, U64], None]
# (nh: 2 lanes x chunks, field: 2 lanes x FIELD_ROW, first chunk number, out: like nh)
FieldKernel = Callable[[U64, U64, int, U64], None]


class Compiled(NamedTuple):
    nh: NhKernel
    field: FieldKernel


_LOW = np.uint64(0xFFFFFFFF)
_HIGH_SHIFT = np.uint64(32)
# The field layer's constants, as uint64 so numba keeps every operation unsigned 64-bit (a Python
# int beside a uint64 would make it float64). Offsets: `fingerprint.FIELD_B` … `FIELD_D`.
_P61 = np.uint64((1 << 61) - 1)
_M29 = np.uint64((1 << 29) - 1)
_S3, _S29, _S61 = np.uint64(3), np.uint64(29), np.uint64(61)
_FIELD_B, _FIELD_C, _FIELD_D = 2048, 4096, 6144


def _nh_chunks(pairs: U64, key_even: U64, key_odd: U64, out: U64) -> None:
    """Per chunk c: out[0, c], out[1, c] = NH_0, NH_1 (the Python source that numba compiles).

    Slices per chunk and per lane, not `base + i` indexing: LLVM vectorises both, but this form
    runs about 1.4x faster (fewer address computations in the inner loop)."""
    per_chunk = key_even.shape[0] - 1
    even0, odd0 = key_even[:per_chunk], key_odd[:per_chunk]
    even1, odd1 = key_even[1:], key_odd[1:]  # lane 1: the key shifted by one pair (two words)
    for chunk in range(out.shape[1]):
        data = pairs[chunk * per_chunk : (chunk + 1) * per_chunk]
        lane0 = np.uint64(0)
        lane1 = np.uint64(0)
        for i in range(per_chunk):
            pair = data[i]
            odd = pair >> _HIGH_SHIFT
            lane0 += ((pair + even0[i]) & _LOW) * ((odd + odd0[i]) & _LOW)
            lane1 += ((pair + even1[i]) & _LOW) * ((odd + odd1[i]) & _LOW)
        out[0, chunk] = lane0
        out[1, chunk] = lane1


def _field_chunks(nh: U64, field: U64, first: int, out: U64) -> None:
    """out[l, c] = T_l(first + c) from NH values: `fingerprint.field_terms`, one chunk at a time."""
    for lane in range(2):
        row = field[lane]
        for c in range(nh.shape[1]):
            j = first + c
            x, y, z = j & 2047, (j >> 11) & 2047, j >> 22
            value = nh[lane, c]
            hi, lo = value >> _HIGH_SHIFT, value & _LOW
            a, b = row[x], row[_FIELD_B + x]
            m = hi * (a >> _HIGH_SHIFT) + lo * (b >> _HIGH_SHIFT)
            ha, lb = hi * (a & _LOW), lo * (b & _LOW)
            s = (m >> _S29) + ((m & _M29) << _HIGH_SHIFT) + (ha & _P61) + (ha >> _S61)
            s += (lb & _P61) + (lb >> _S61)
            s = (s & _P61) + (s >> _S61)
            if s >= _P61:
                s -= _P61
            for key in (row[_FIELD_C + y], row[_FIELD_D + z]):  # mulmod61(s, key), twice
                x1, x0, y1, y0 = s >> _HIGH_SHIFT, s & _LOW, key >> _HIGH_SHIFT, key & _LOW
                mid = x1 * y0 + x0 * y1
                low = x0 * y0
                s = ((x1 * y1) << _S3) + (mid >> _S29) + ((mid & _M29) << _HIGH_SHIFT)
                s += (low & _P61) + (low >> _S61)
                s = (s & _P61) + (s >> _S61)
                if s >= _P61:
                    s -= _P61
            out[lane, c] = s


def load() -> tuple[Compiled | None, str]:
    """The compiled loop, or None and the reason it is not available."""
    if sys.byteorder != "little":
        return None, "the compiled loop reads little-endian words natively; this host is big-endian"
    try:
        import numba
        from numba import types
    except ImportError:
        return None, "numba is not installed (pip install 'trainguard[integrity]')"
    if getattr(numba.config, "DISABLE_JIT", 0):  # numba would run the loop as plain Python
        return None, "NUMBA_DISABLE_JIT is set"
    words = types.Array(types.uint64, 1, "C")
    lanes = types.uint64[:, ::1]
    nh_signature = types.void(types.Array(types.uint64, 1, "C", readonly=True), words, words, lanes)
    field_signature = types.void(lanes, lanes, types.int64, lanes)
    try:
        nh = _compile(numba, _nh_chunks, nh_signature)
        field = _compile(numba, _field_chunks, field_signature)
    except Exception as error:  # an LLVM or numba failure must not take the fingerprint down
        return None, f"numba could not compile the loop: {type(error).__name__}: {error}"
    return Compiled(nh, field), f"numba {numba.__version__}"


def _compile(numba: Any, function: Callable[..., None], signature: Any) -> Any:
    try:
        return numba.njit(signature, cache=True, nogil=True, error_model="numpy", boundscheck=False)(function)
    except RuntimeError:  # no writable cache dir (read-only package, no home): compile each start
        return numba.njit(signature, cache=False, nogil=True, error_model="numpy", boundscheck=False)(
            function
        )
