"""Many trainer processes (ranks) per pod: the hello message, descriptors beside messages on the
channel, the operator's comparison of rank r across replica pods, and the check of a CUDA
region's declared size against its allocation. Pure, or one socket pair."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from trainguard.channel import LineReader, send
from trainguard.gpu.cuda_ipc import extent_problem
from trainguard.integrity.protocol import Begin, End, Hello, ProtocolError, parse_request
from trainguard.integrity.reports import JobIntegrity, StepEnd, Verified, open_report, sign_report

KEY = b"k" * 32


def test_hello_names_a_rank_and_whether_it_is_a_replica(tmp_path: Path) -> None:
    assert parse_request({"op": "hello", "rank": 3}, tmp_path) == Hello(rank=3, replicated=True)
    assert Hello(rank=2, replicated=False).wire() == {"op": "hello", "rank": 2, "replicated": False}
    for bad in (-1, 4096, True, "1"):
        with pytest.raises(ProtocolError, match="rank must be an integer from 0 to 4095"):
            parse_request({"op": "hello", "rank": bad}, tmp_path)


def test_descriptors_belong_to_the_message_they_came_with(tmp_path: Path) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    files = [os.open(tmp_path / name, os.O_RDWR | os.O_CREAT) for name in ("a", "b")]
    try:
        # Sent back to back, before anything is read: the reader attributes each descriptor to
        # its message even when one read takes several messages.
        send(left, Begin(step=1))
        send(left, End(step=1), [files[0]])
        send(left, Begin(step=2))
        send(left, End(step=2), [files[1]])
        reader = LineReader(right)
        got = [reader.read_with_fds() for _ in range(4)]
        sent = (Begin(step=1), End(step=1), Begin(step=2), End(step=2))
        assert [message for message, _ in got] == [m.wire() for m in sent]
        counts = [len(fds) for _, fds in got]
        assert counts == [0, 1, 0, 1]
        for (_, fds), original in zip([got[1], got[3]], files, strict=True):
            assert os.fstat(fds[0]).st_ino == os.fstat(original).st_ino
            os.close(fds[0])
        left.close()
        assert reader.read_with_fds() == (None, [])
    finally:
        for fd in files:
            os.close(fd)
        right.close()


def test_the_operator_compares_each_rank_across_the_replica_pods() -> None:
    seq = itertools.count(1)

    def stamp(replica: int, rank: int) -> dict[str, Any]:
        return {"job": "uid-1", "attempt": 0, "boot": f"b{replica}", "seq": next(seq), "replica": replica,
                "rank": rank, "time": 0.0}  # fmt: skip

    def end(replica: int, rank: int, step: int, fingerprint: str) -> StepEnd:
        return StepEnd(**stamp(replica, rank), step=step, fingerprint=fingerprint, regions={})

    job = JobIntegrity(replicas=2)
    # Ranks of a pod may hold different shards (tensor parallel): only rank r of each pod compares.
    assert job.apply(end(0, 0, 1, "a")) == []
    assert job.apply(end(0, 1, 1, "z")) == []
    assert job.apply(end(1, 0, 1, "a")) == []
    assert job.apply(end(1, 1, 1, "z")) == []
    for replica, rank in [(0, 0), (0, 1), (1, 0)]:
        assert job.apply(Verified(**stamp(replica, rank), step=1)) == []
    [ok] = job.apply(Verified(**stamp(1, 1), step=1))  # the last (replica, rank) compared
    assert (ok.verified, ok.step) == (True, 1)
    job.apply(end(0, 1, 2, "z"))
    [divergence] = job.apply(end(1, 1, 2, "y"))
    assert (divergence.kind, divergence.step, divergence.replica) == ("ReplicaDivergence", 2, 1)
    assert "replica 1 disagrees with the others about the weights (rank 1 of each pod)" in divergence.message


def test_a_report_names_its_rank_and_rank_0_reads_as_before_ranks() -> None:
    base: dict[str, Any] = {
        "job": "u",
        "attempt": 0,
        "boot": "b",
        "seq": 1,
        "replica": 0,
        "time": 1.0,
        "step": 2,
    }
    assert "rank" not in Verified(**base).wire()
    assert Verified(**base, rank=3).wire()["rank"] == 3
    assert open_report(KEY, sign_report(KEY, {**base, "kind": "Verified", "rank": 3})).rank == 3
    assert open_report(KEY, sign_report(KEY, {**base, "kind": "Verified"})).rank == 0


def test_a_cuda_region_larger_than_its_allocation_is_refused() -> None:
    assert extent_problem(1024, 0x1000, 0x1000, 1024) is None
    assert extent_problem(512, 0x1200, 0x1000, 1024) is None
    assert extent_problem(1025, 0x1000, 0x1000, 1024) == (
        "the region declares 1025 bytes but its allocation holds 1024 from the handle's address"
    )
    assert "lies outside its allocation" in (extent_problem(1, 0x2000, 0x1000, 1024) or "")
