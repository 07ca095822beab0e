"""The fingerprint's collision bound, checked exactly on a scaled-down model of the construction.

The model keeps every part of `integrity/fingerprint.py` but shrinks the numbers: words of
W = 3 bits (for 32), NH mod 2^(2W), chunks of two pairs, two Toeplitz lanes (the key table is
three pairs: 2^18 keys, every one enumerated), three chunks. Format 1 combined the chunks with a
secret odd multiplier per chunk and lane, mod 2^(2W); format 2 splits each NH value into halves
of W bits and combines them in the field F_Q with tabulated keys, the chunk number in digits
j = x + 2y: T(j) = (hi A[x] + lo B[x]) C[y] (two digits here, three in the real layout).

The difference is the issue's: the sign bit of word 0 flipped in chunks 1 and 2, whose partner
words (word 1) are equal. Rates are exact fractions over all keys (NH tables, multipliers, field
tables), so each assertion can fail.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import numpy.typing as npt

W = 3  # bits per word
WORD = (1 << W) - 1
NH_MOD = 1 << (2 * W)
Q = 17  # the model's field: a prime above 2^W, so a nonzero difference of halves is nonzero mod Q
SIGN = 1 << (W - 1)
I64 = npt.NDArray[np.int64]

# Three chunks of four words; chunks 1 and 2 share word 1, the partner of the flipped word 0.
BEFORE = np.array([[5, 3, 1, 6], [2, 6, 7, 0], [4, 6, 3, 1]], dtype=np.int64)
BOTH = BEFORE.copy()
BOTH[1:, 0] ^= SIGN  # the change: the sign bit in two chunks
ONE = BEFORE.copy()
ONE[1, 0] ^= SIGN  # the same change in one chunk only


def nh_keys() -> I64:
    """Every key table of the model: three pairs of W-bit words (lane 1 starts one pair later)."""
    return np.indices((1 << W,) * 6).reshape(6, -1).T.astype(np.int64)


def nh(chunks: I64, keys: I64) -> I64:
    """NH of each chunk, lane and key: shape (lanes, keys, chunks), values mod 2^(2W)."""
    out = np.zeros((2, keys.shape[0], chunks.shape[0]), dtype=np.int64)
    for lane in (0, 1):
        for j, words in enumerate(chunks):
            for i in range(0, words.size, 2):
                a = (words[i] + keys[:, i + 2 * lane]) & WORD
                b = (words[i + 1] + keys[:, i + 1 + 2 * lane]) & WORD
                out[lane, :, j] += a * b
    return out % NH_MOD


def grouped(rows: I64, base: int) -> tuple[I64, I64]:
    """The distinct rows (small non-negative ints, below `base`) and each row's index among them."""
    codes = np.zeros(rows.shape[0], dtype=np.int64)
    for column in rows.T:
        codes = codes * base + column
    distinct, inverse = np.unique(codes, return_inverse=True)
    first = np.zeros(distinct.size, dtype=np.int64)
    first[inverse] = np.arange(rows.shape[0])
    return rows[first], inverse.reshape(-1)


def multiplier_zero_counts(differences: I64) -> I64:
    """Format 1, per lane: for each row of NH differences (one per chunk, mod 2^(2W)), how many
    choices of odd multipliers make sum_j d_j M_j vanish mod 2^(2W), out of 2^(2W-1) per chunk."""
    odd = np.arange(1, NH_MOD, 2)
    # spread[d][r]: how many odd M give d * M = r; the sum's distribution is their convolution
    spread = np.stack([np.bincount(d * odd % NH_MOD, minlength=NH_MOD) for d in range(NH_MOD)])
    shifted = (np.arange(NH_MOD)[:, None] - np.arange(NH_MOD)[None, :]) % NH_MOD  # [r, s] = r - s
    counts = []
    for row in differences:
        total = np.zeros(NH_MOD, dtype=np.int64)
        total[0] = 1  # the empty sum
        for d in row:
            total = (total[shifted] * spread[d][None, :]).sum(axis=1)
        counts.append(int(total[0]))
    return np.array(counts, dtype=np.int64)


def field_zero_counts(coefficients: I64) -> I64:
    """Format 2, per lane: for each row (dhi_0, dhi_1, dhi_2, dlo_0, dlo_1, dlo_2) of differences of
    halves, over all Q^6 field tables A[0..1], B[0..1], C[0..1], how many make
    sum_j (dhi_j A[x] + dlo_j B[x]) C[y] vanish mod Q (x = j mod 2, y = j // 2)."""
    ab = np.indices((Q,) * 4).reshape(4, -1).astype(np.int64)  # A[0], A[1], B[0], B[1]
    c = np.indices((Q, Q)).reshape(2, -1)
    # zeros[l0, l1]: tables C with C[0] l0 + C[1] l1 = 0, counted over all Q^2 of them
    zeros = np.array([[int(((c[0] * l0 + c[1] * l1) % Q == 0).sum()) for l1 in range(Q)] for l0 in range(Q)])
    counts = []
    for row in coefficients % Q:
        sums = np.zeros((2, ab.shape[1]), dtype=np.int64)  # sum over the chunks of each y
        for j in range(3):
            x, y = j % 2, j // 2
            sums[y] += row[j] * ab[x] + row[3 + j] * ab[2 + x]
        counts.append(int(zeros[sums[0] % Q, sums[1] % Q].sum()))
    return np.array(counts, dtype=np.int64)


def format1_rate(before: I64, after: I64) -> Fraction:
    keys = nh_keys()
    differences = (nh(before, keys) - nh(after, keys)) % NH_MOD
    per_lane = []
    for lane in (0, 1):
        rows, where = grouped(differences[lane], NH_MOD)
        per_lane.append(multiplier_zero_counts(rows)[where])
    choices = (NH_MOD // 2) ** (2 * before.shape[0])  # odd multipliers, every chunk, both lanes
    return Fraction(int((per_lane[0] * per_lane[1]).sum()), keys.shape[0] * choices)


def format2_rates(before: I64, after: I64) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """The collision rate; Pr[NH equal in both lanes]; max over lanes of Pr[NH equal in one
    lane]; the largest field-layer rate over nonzero differences."""
    keys = nh_keys()
    x, y = nh(before, keys), nh(after, keys)
    halves = np.concatenate([(x >> W) - (y >> W), (x & WORD) - (y & WORD)], axis=2)  # (lane, key, 6)
    rows, where = grouped(np.concatenate([halves[0], halves[1]]) + WORD, 2 * WORD + 1)
    zero = field_zero_counts(rows - WORD)
    lanes = zero[where].reshape(2, -1)
    n, tables = keys.shape[0], Q**6
    rate = Fraction(int((lanes[0] * lanes[1]).sum()), n * tables * tables)
    equal = (x == y).all(axis=2)  # (lane, key)
    both = Fraction(int((equal[0] & equal[1]).sum()), n)
    one = max(Fraction(int(equal[lane].sum()), n) for lane in (0, 1))
    nonzero = (rows != WORD).any(axis=1)
    worst = Fraction(int(zero[nonzero].max()), tables)
    return rate, both, one, worst


def test_format1_keeps_its_bound_for_one_chunk_and_breaks_it_over_two() -> None:
    claimed = Fraction(1, 2 ** (2 * W))  # the docstring's 2^-64, scaled: 2^-2W
    assert format1_rate(BEFORE, ONE) <= claimed
    # Over two chunks each lane collides when b (partner + key, the same in both chunks) and the
    # multipliers' sum s_1 M_1 + s_2 M_2 together hold W + 1 factors of two: (W + 2) / 2^(W + 1)
    # per lane (2^-27.9 at W = 32, so about 2^-56 for both lanes: the figure).
    two_chunks = format1_rate(BEFORE, BOTH)
    assert two_chunks == Fraction(W + 2, 2 ** (W + 1)) ** 2
    assert two_chunks > 4 * claimed


def test_format2_stays_within_its_proven_bound() -> None:
    degree = 2  # the model's tabulation has two digits (the real one three: degree 3)
    field = Fraction(degree, Q)
    nh_one_lane, nh_both = Fraction(1, 2**W), Fraction(1, 2 ** (2 * W))
    bound = nh_both + 2 * nh_one_lane * field + field**2
    rates = {}
    for name, after in (("one chunk", ONE), ("two chunks", BOTH)):
        rate, both, one, worst = format2_rates(BEFORE, after)
        assert both <= nh_both, name  # step 2 of the proof: NH with its Toeplitz lanes
        assert one <= nh_one_lane, name
        assert worst <= field, name  # step 3: Schwartz-Zippel for the tabulated keys
        assert rate <= bound, name
        rates[name] = rate
    assert rates["two chunks"] < format1_rate(BEFORE, BOTH) / 2  # even with 2/Q far above 2^-W
