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
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
# (pairs: chunks * pairs_per_chunk read-only words, key_even, key_odd: pairs_per_chunk + 1 each,
#  out: 2 lanes x chunks), filled in place
NhKernel = Callable[[U64, U64, U64, U64], None]

_LOW = np.uint64(0xFFFFFFFF)
_HIGH_SHIFT = np.uint64(32)


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


def load() -> tuple[NhKernel | None, str]:
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
    signature = types.void(
        types.Array(types.uint64, 1, "C", readonly=True), words, words, types.uint64[:, ::1]
    )
    kernel: NhKernel
    try:
        try:
            kernel = numba.njit(signature, cache=True, nogil=True, error_model="numpy", boundscheck=False)(
                _nh_chunks
            )
        except RuntimeError:  # no writable cache dir (read-only package, no home): compile each start
            kernel = numba.njit(signature, cache=False, nogil=True, error_model="numpy", boundscheck=False)(
                _nh_chunks
            )
    except Exception as error:  # an LLVM or numba failure must not take the fingerprint down
        return None, f"numba could not compile the loop: {type(error).__name__}: {error}"
    return kernel, f"numba {numba.__version__}"
