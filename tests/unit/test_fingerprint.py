"""The keyed weight fingerprint: shared test vectors, the reference definition, and sensitivity."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.integrity import nh_native
from trainguard.integrity.fingerprint import (
    CHUNK_BYTES,
    CHUNK_WORDS,
    FORMAT_VERSION,
    Backend,
    FingerprintKey,
    cpu_backend,
    fingerprint,
    fingerprint_with_chunks,
    reference_fingerprint,
)

VECTORS = Path(__file__).resolve().parents[1] / "data" / "fingerprint_vectors.json"
KEY = FingerprintKey.from_secret(bytes(range(32)))


def build(spec: dict[str, Any]) -> np.ndarray:  # type: ignore[type-arg]
    """A tensor from its description in the vectors file (portable to the GPU implementation)."""
    dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
    count = int(np.prod(shape))
    if spec["fill"] == "zeros":
        return np.zeros(shape, dtype)
    if spec["fill"] == "arange":
        return np.arange(count).astype(dtype).reshape(shape)
    if spec["fill"] == "bytes":  # byte i has value (i * 131 + 7) mod 256
        raw = ((np.arange(count * dtype.itemsize) * 131 + 7) % 256).astype(np.uint8)
        return raw.view(dtype).reshape(shape)
    raise ValueError(spec["fill"])


@pytest.mark.parametrize("backend", ["auto", "numba", "numpy"])
def test_shared_vectors(backend: Backend) -> None:
    data = json.loads(VECTORS.read_text())
    assert data["format"] == FORMAT_VERSION
    for case in data["cases"]:
        key = FingerprintKey.from_secret(bytes.fromhex(case["key"]))
        tensors = [build(spec) for spec in case["tensors"]]
        assert fingerprint(key, tensors, backend=backend) == case["fingerprint"], case["name"]


def test_the_compiled_path_is_the_default() -> None:
    # numba comes with the `integrity` extra (`make venv` installs it); without it the numpy path
    # still works (every test here passes with backend="numpy"), only slower.
    assert cpu_backend() == "numba"


def test_without_numba_the_loader_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    kernel, about = nh_native.load()
    assert kernel is None
    assert "numba is not installed" in about


def test_compiled_and_numpy_paths_agree_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    sizes = [0, 1, 7, 8, 4 * 1024, CHUNK_BYTES - 4, CHUNK_BYTES, CHUNK_BYTES + 3, 5 * CHUNK_BYTES]
    sizes += [9 * CHUNK_BYTES + 1234, 100_001, 1 << 20]
    buffers = [rng.integers(0, 256, size=n, dtype=np.uint8) for n in sizes]
    buffers.append(np.full(3 * CHUNK_BYTES + 5, 0xFF, np.uint8))  # largest products: every sum wraps
    buffers += [buffers[-2][1:], buffers[-2][4:]]  # views whose 64-bit pairs are not 8-byte aligned
    for buffer in buffers:
        fast, fast_terms = fingerprint_with_chunks(KEY, buffer, backend="numba")
        slow, slow_terms = fingerprint_with_chunks(KEY, buffer, backend="numpy")
        assert fast == slow, buffer.size
        assert fast_terms.dtype == slow_terms.dtype
        assert np.array_equal(fast_terms, slow_terms), buffer.size
    read_only = np.frombuffer(buffers[-4].tobytes(), dtype=np.float32)
    assert fingerprint(KEY, [read_only], backend="numba") == fingerprint(KEY, [read_only], backend="numpy")
    tensors = [*buffers, rng.standard_normal((33, 517)).astype(np.float16), np.arange(12345, dtype=np.int64)]
    other = FingerprintKey.from_secret(rng.bytes(32))
    assert fingerprint(other, tensors, backend="numba") == fingerprint(other, tensors, backend="numpy")


def test_fast_path_matches_the_word_by_word_definition() -> None:
    rng = np.random.default_rng(7)
    for sizes in ([], [0], [1], [3, 5], [CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1]):
        tensors = [rng.integers(0, 256, size=n, dtype=np.uint8) for n in sizes]
        assert fingerprint(KEY, tensors) == reference_fingerprint(KEY, [t.tobytes() for t in tensors]), sizes


def test_every_single_bit_flip_changes_the_fingerprint() -> None:
    buffer = ((np.arange(256) * 131 + 7) % 256).astype(np.uint8)
    base = fingerprint(KEY, [buffer])
    seen = {base}
    for byte in range(buffer.size):
        for bit in range(8):
            flipped = buffer.copy()
            flipped[byte] ^= np.uint8(1 << bit)
            seen.add(fingerprint(KEY, [flipped]))
    assert len(seen) == 1 + 256 * 8, "some bit flips collide"


def test_order_boundaries_padding_and_key_all_matter() -> None:
    a, b = np.arange(10, dtype=np.float32), np.arange(10, 20, dtype=np.float32)
    base = fingerprint(KEY, [a, b])
    assert fingerprint(KEY, [b, a]) != base
    assert fingerprint(KEY, [np.concatenate([a, b])]) != base  # same bytes, other boundaries
    assert fingerprint(KEY, [a, b, np.zeros(0, np.uint8)]) != base
    assert fingerprint(KEY, [np.zeros(3, np.uint8)]) != fingerprint(KEY, [np.zeros(4, np.uint8)])
    other = FingerprintKey.from_secret(bytes(31) + b"\x01")
    assert fingerprint(other, [a, b]) != base


def test_any_dtype_shape_and_non_contiguous_views_hash_their_logical_bytes() -> None:
    matrix = np.arange(64, dtype=np.float64).reshape(8, 8)
    view = matrix.T[::2]  # non-contiguous
    assert fingerprint(KEY, [view]) == fingerprint(KEY, [np.ascontiguousarray(view)])
    for dtype in (np.float16, np.float32, np.int8, np.uint64, np.bool_):
        tensor = np.ones((3, 5), dtype)
        assert fingerprint(KEY, [tensor]) == reference_fingerprint(KEY, [tensor.tobytes()])


def test_keys_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="must be 32 bytes"):
        FingerprintKey.from_secret(b"short")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=600), min_size=1, max_size=3), st.data())
def test_changing_any_byte_changes_the_fingerprint(chunks: list[bytes], data: st.DataObject) -> None:
    tensors = [np.frombuffer(c, dtype=np.uint8) for c in chunks]
    target = data.draw(st.integers(0, len(tensors) - 1))
    if not len(tensors[target]):
        return
    position = data.draw(st.integers(0, len(tensors[target]) - 1))
    delta = data.draw(st.integers(1, 255))
    changed = [t.copy() for t in tensors]
    changed[target][position] = (int(changed[target][position]) + delta) % 256
    assert fingerprint(KEY, changed) != fingerprint(KEY, tensors)


def test_chunk_terms_locate_a_change() -> None:
    buffer = np.random.default_rng(2).integers(0, 256, size=4 * CHUNK_BYTES + 10, dtype=np.uint8)
    digest, terms = fingerprint_with_chunks(KEY, buffer)
    assert digest == fingerprint(KEY, [buffer])
    assert terms.shape == (5, 2)  # four whole chunks and the padded tail
    changed = buffer.copy()
    changed[3 * CHUNK_BYTES + 17] ^= 0x40
    other, other_terms = fingerprint_with_chunks(KEY, changed)
    assert other != digest
    assert np.flatnonzero((terms != other_terms).any(axis=1)).tolist() == [3]


def test_the_gpu_key_table_holds_each_lanes_key_words_as_pairs() -> None:
    from trainguard.gpu.kernel import CHUNK_PAIRS, lane_key_pairs

    keys = lane_key_pairs(KEY).view(np.uint64)
    assert keys.shape == (2, CHUNK_PAIRS)
    assert keys.flags.c_contiguous
    table = KEY.table.astype(np.uint64)
    for lane in (0, 1):  # pair p of lane l: K[2p + 2l] in the low half, K[2p + 1 + 2l] in the high half
        low = table[2 * lane : 2 * lane + CHUNK_WORDS : 2]
        high = table[2 * lane + 1 : 2 * lane + CHUNK_WORDS : 2]
        assert np.array_equal(keys[lane], low | (high << np.uint64(32))), lane


def test_the_field_layer_is_exact_at_every_digit_and_extreme_values() -> None:
    """The compiled and numpy field layers against Python integers, where x, y and z wrap and
    near the last chunk number, with NH values 0 and 2^64 - 1 (the largest halves)."""
    from trainguard.integrity.fingerprint import P61, field_terms, mulmod61

    compiled = nh_native.load()[0]
    assert compiled is not None
    rng = np.random.default_rng(5)
    nh = rng.integers(0, 2**64, (2, 80), dtype=np.uint64)
    nh[:, :3], nh[:, 3:6] = np.uint64(2**64 - 1), np.uint64(0)
    rows = [[int(v) for v in row] for row in KEY.field]
    for first in (0, 2048 - 40, 2**22 - 40, 2**32 - 80):
        fast = np.empty_like(nh)
        compiled.field(nh, KEY.field, first, fast)
        slow = field_terms(KEY.field, nh, first)
        for lane, row in enumerate(rows):
            for c in range(nh.shape[1]):
                j, value = first + c, int(nh[lane, c])
                x, y, z = j % 2**11, j // 2**11 % 2**11, j // 2**22
                term = (value >> 32) * row[x] + (value & 0xFFFFFFFF) * row[2048 + x]
                term = term * row[4096 + y] * row[6144 + z] % P61
                assert int(fast[lane, c]) == int(slow[lane, c]) == term, (first, lane, c)
    with pytest.raises(ValueError, match="at most"):
        field_terms(KEY.field, nh, 2**32 - 79)
    edge = np.array([0, 1, 2**32 - 1, 2**32, P61 - 1], dtype=np.uint64)
    products = mulmod61(edge[:, None] * np.ones(5, np.uint64), np.ones(5, np.uint64)[:, None] * edge)
    assert products.tolist() == [[int(a) * int(b) % P61 for b in edge] for a in edge]
