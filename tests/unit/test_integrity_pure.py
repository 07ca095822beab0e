"""Checkpoint manifests, replica comparison and the shared-buffer layout. Pure."""

from __future__ import annotations

from trainguard.integrity.manifest import build_manifest, verify_manifest
from trainguard.integrity.protocol import ALIGN, layout
from trainguard.integrity.replicas import diverging_replicas

KEY = b"k" * 32


def test_manifest_accepts_the_signed_files_only() -> None:
    manifest = build_manifest(KEY, {"model.pt": "aa", "optim.pt": "bb"}, step=3)
    assert verify_manifest(KEY, manifest, {"model.pt": "aa", "optim.pt": "bb"}) == []
    assert verify_manifest(KEY, manifest, {"model.pt": "ab", "optim.pt": "bb"}) == [
        "model.pt changed after it was saved"
    ]
    assert verify_manifest(KEY, manifest, {"model.pt": "aa", "optim.pt": "bb", "x.pt": "cc"}) == [
        "x.pt is not in the manifest"
    ]
    forged = {**manifest, "files": {"model.pt": "ab", "optim.pt": "bb"}}
    assert (
        "not written by this job's sidecar"
        in verify_manifest(KEY, forged, {"model.pt": "ab", "optim.pt": "bb"})[0]
    )
    assert "not written by this job's sidecar" in verify_manifest(b"x" * 32, manifest, {"model.pt": "aa"})[0]
    assert verify_manifest(KEY, {"nonsense": 1}, {}) == ["the manifest is malformed"]


def test_the_minority_replica_is_named_and_rank_zero_breaks_ties() -> None:
    assert diverging_replicas({0: "a", 1: "a", 2: "a"}) == []
    assert diverging_replicas({0: "a", 1: "b", 2: "a"}) == [1]
    assert diverging_replicas({0: "b", 1: "a", 2: "a"}) == [0]
    assert diverging_replicas({0: "a", 1: "b"}) == [1]


def test_slots_are_aligned_and_disjoint() -> None:
    slots, total = layout([("w", 10), ("b", 64), ("c", 1)])
    assert [s.offset for s in slots] == [0, ALIGN, 2 * ALIGN]
    assert total == 3 * ALIGN
    assert all(s.offset % ALIGN == 0 for s in slots)
