"""Comparing the fingerprints of data-parallel replicas for one step. Pure."""

from __future__ import annotations

from collections import Counter


def diverging_replicas(fingerprints: dict[int, str]) -> list[int]:
    """Replicas whose fingerprint differs from the majority (rank 0's when there is no majority)."""
    if len(set(fingerprints.values())) <= 1:
        return []
    counts = Counter(fingerprints.values()).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        reference = fingerprints[min(fingerprints)]
    else:
        reference = counts[0][0]
    return sorted(rank for rank, fp in fingerprints.items() if fp != reference)
