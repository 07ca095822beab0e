"""Checkpoint manifests, replica comparison and the shared-buffer layout. Pure."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest

from trainguard.integrity.manifest import build_manifest, verify_manifest
from trainguard.integrity.protocol import (
    ALIGN,
    CudaHandle,
    ProtocolError,
    StepSequence,
    layout,
    parse_region,
    tensors_in_chunks,
)
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
    assert verify_manifest(KEY, manifest, {"model.pt": "aa"}) == ["optim.pt is missing"]
    forged = {**manifest, "files": {"model.pt": "ab", "optim.pt": "bb"}}
    assert (
        "not written by this job's sidecar"
        in verify_manifest(KEY, forged, {"model.pt": "ab", "optim.pt": "bb"})[0]
    )
    assert "not written by this job's sidecar" in verify_manifest(b"x" * 32, manifest, {"model.pt": "aa"})[0]
    assert verify_manifest(KEY, {"nonsense": 1}, {}) == ["the manifest is malformed"]


def test_a_manifest_vouches_for_its_path_too() -> None:
    manifest = build_manifest(KEY, {"step-20": "aa"}, step=10, path="/output/step-10")
    assert verify_manifest(KEY, manifest, {"step-20": "aa"}, path="/output/step-10") == []
    assert verify_manifest(KEY, manifest, {"step-20": "aa"}, path="/output/latest") == [
        "it was saved as /output/step-10 (step 10): a checkpoint copied from elsewhere"
    ]
    moved = {**manifest, "path": "/output/latest"}  # the path is under the signature
    assert "not written by this job's sidecar" in verify_manifest(KEY, moved, {}, path="/output/latest")[0]


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


def test_a_region_is_checked_before_the_sidecar_opens_it(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    good = {"name": "parameters@cpu", "nbytes": 128, "slots": [{"name": "w", "offset": 64, "nbytes": 64}],
            "path": str(folder / "parameters-cpu-0.bin")}  # fmt: skip
    region = parse_region(good, folder)
    assert (region.kind, region.nbytes, region.slots[0].offset) == ("parameters", 128, 64)
    cases = {
        "must be <kind>@<device>": {**good, "name": "weights@cpu"},
        "outside the 128-byte buffer": {**good, "slots": [{"name": "w", "offset": 100, "nbytes": 64}]},
        "positive integer": {**good, "nbytes": 0},
        "not a file of the shared folder": {**good, "path": str(tmp_path / "elsewhere.bin")},
        "region.slots must be a list": {**good, "slots": "w"},
        "region.cuda must be an object": {**good, "name": "parameters@cuda:0"},
    }
    for message, data in cases.items():
        with pytest.raises(ProtocolError, match=message):
            parse_region(data, folder)


def test_cuda_handles_travel_as_json_and_are_checked(tmp_path: Path) -> None:
    handle = CudaHandle(uuid="GPU-1234", handle=bytes(range(64)))
    assert CudaHandle.model_validate(json.loads(json.dumps(handle.wire()))) == handle
    region = {"name": "optimizer@cuda:1", "nbytes": 4096, "slots": [], "cuda": handle.wire()}
    assert parse_region(region, tmp_path).cuda == handle
    cases = {
        r"region\.cuda\.uuid": {**handle.wire(), "uuid": ""},
        "must be a 64-byte CUDA IPC handle": {**handle.wire(), "handle": "AAAA"},
        "must be base64 text": {**handle.wire(), "handle": "not base64!"},
    }
    for message, cuda in cases.items():
        with pytest.raises(ProtocolError, match=message):
            parse_region({**region, "cuda": cuda}, tmp_path)


def test_without_a_gpu_driver_cuda_sharing_fails_with_a_clear_error() -> None:
    """This machine has no NVIDIA driver: asking for a GPU region names the missing library."""
    from trainguard.gpu import cuda_ipc

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        with pytest.raises(cuda_ipc.CudaIpcError, match="the CUDA driver library is not available"):
            cuda_ipc.driver()
    else:
        assert cuda_ipc.driver().open_handle is not None


def test_changed_chunks_name_the_tensors_they_hold() -> None:
    slots, _ = layout([("a", 100), ("b", 3 * 1024), ("c", 10_000), ("empty", 0), ("d", 64)])
    # a: [0, 100) b: [128, 3200) c: [3200, 13200) d: [13248, 13312) with 4 KiB chunks
    assert tensors_in_chunks(slots, [0], 4096) == ["a", "b", "c"]
    assert tensors_in_chunks(slots, [2], 4096) == ["c"]
    assert tensors_in_chunks(slots, [3], 4096) == ["c", "d"]
    assert tensors_in_chunks(slots, [7, 9], 4096) == []  # past every tensor: padding only
    assert tensors_in_chunks(slots, [], 4096) == []


def test_the_step_sequence_refuses_every_way_of_moving_the_baseline() -> None:
    s = StepSequence()
    assert s.end(9) is None  # the first message may take the loaded state as step 9's baseline
    assert s.begin(10) is None
    assert s.end(10) is None
    assert s.end(10) == "end(10) with no begin(10) (end(10) came last)"  # a second end would re-baseline
    assert s.begin(12) == "begin(12) after end(10) skips a step: the next step is 11"
    assert s.begin(13) == "begin(13) while step 12 has not ended (end(12) is missing)"
    assert s.end(14) == "end(14) during step 13 (begun with begin(13))"
    assert s.begin(3) == "begin(3) after end(14) goes backwards: the next step is 15"
    # After each report the sequence follows what it was told, so a job in Audit stays checked.
    assert s.end(3) is None
    assert s.begin(4) is None
    fresh = StepSequence()
    assert fresh.begin(0) is None  # a job may start at any step (a resumed run)
    assert fresh.end(0) is None
    assert StepSequence().begin(5) is None
