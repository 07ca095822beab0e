"""The typed edges of weight integrity: socket messages and signed reports, parsed once where they
enter, refused with a clear error when malformed, written as the same JSON as before. Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from trainguard.integrity.protocol import (
    Begin,
    Checkpoint,
    End,
    ProtocolError,
    Region,
    Register,
    Reply,
    Slot,
    Verify,
    ViolationNotice,
    WireModel,
    parse_reply,
    parse_request,
)
from trainguard.integrity.reports import (
    ForgedReport,
    JobIntegrity,
    Registered,
    StaleReport,
    StepEnd,
    Verified,
    Violation,
    open_report,
    read_reports,
    sign_report,
)

KEY = b"k" * 32


def test_requests_and_replies_are_the_json_the_trainer_and_sidecar_exchanged_before(tmp_path: Path) -> None:
    region = Region(
        name="parameters@cpu", nbytes=64, slots=[Slot(name="w", offset=0, nbytes=8)], path="/x/p.bin"
    )
    expected: list[tuple[WireModel, str]] = [
        (Begin(step=3), '{"op": "begin", "step": 3}'),
        (End(step=3), '{"op": "end", "step": 3}'),
        (Checkpoint(path="/out/c.pt"), '{"op": "checkpoint", "path": "/out/c.pt", "step": null}'),
        (Verify(path="/out/c.pt"), '{"op": "verify", "path": "/out/c.pt"}'),
        (
            Register(region=region),
            '{"op": "register", "region": {"name": "parameters@cpu", "nbytes": 64, '
            '"slots": [{"name": "w", "offset": 0, "nbytes": 8}], "path": "/x/p.bin", "cuda": null}}',
        ),
        (Reply(ok=True), '{"ok": true}'),
        (Reply(ok=False, error="no"), '{"ok": false, "error": "no"}'),
        (Reply(ok=True, manifest={"format": 1}), '{"ok": true, "manifest": {"format": 1}}'),
        (
            Reply(ok=False, violation=ViolationNotice(kind="K", step=None, message="m")),
            '{"ok": false, "violation": {"kind": "K", "step": null, "message": "m"}}',
        ),
    ]
    for message, line in expected:
        assert json.dumps(message.wire()) == line
    (tmp_path / "p.bin").touch()
    sent = {**Register(region=region).wire(), "region": {**region.wire(), "path": str(tmp_path / "p.bin")}}
    parsed = parse_request(json.loads(json.dumps(sent)), tmp_path)
    assert isinstance(parsed, Register)
    assert parsed.region.slots == [Slot(name="w", offset=0, nbytes=8)]
    assert parse_request({"op": "end", "step": 7}, tmp_path) == End(step=7)
    assert parse_reply({"ok": True, "manifest": {"format": 1}}).manifest == {"format": 1}


def test_a_malformed_request_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    cases: dict[str, object] = {
        "a message must be a JSON object": [1, 2],
        "unknown op 'dance'": {"op": "dance"},
        "unknown op None": {"step": 1},
        "step must be an integer": {"op": "begin", "step": True},
        "step: Field required": {"op": "end"},
        "path must be a string": {"op": "verify", "path": 3},
        "extra: Extra inputs are not permitted": {"op": "begin", "step": 1, "extra": 1},
        "region.slots.0.offset: Input should be a valid integer": {
            "op": "register",
            "region": {
                "name": "parameters@cpu",
                "nbytes": 64,
                "path": str(tmp_path / "p.bin"),
                "slots": [{"name": "w", "offset": "0", "nbytes": 8}],
            },
        },
        "region.path is for CPU regions only": {
            "op": "register",
            "region": {
                "name": "parameters@cuda:0",
                "nbytes": 64,
                "slots": [],
                "path": "/x",
                "cuda": {"uuid": "GPU-1", "handle": base64.b64encode(bytes(64)).decode()},
            },
        },
    }
    for message, data in cases.items():
        with pytest.raises(ProtocolError) as refused:
            parse_request(data, tmp_path)
        assert str(refused.value) == message
    with pytest.raises(ProtocolError, match="a reply must be a JSON object"):
        parse_reply("ok")
    with pytest.raises(ProtocolError, match="ok: Input should be a valid boolean"):
        parse_reply({"ok": 1})


# What every report carries under the signature (format v2): its job, attempt and sequence.
STAMP = {"job": "uid-1", "attempt": 0, "boot": "b0", "seq": 1}


def v2_signed(key: bytes, report: dict[str, Any]) -> str:
    """A signed report line as format v2 defines it (what operators and report streams read)."""
    body = json.dumps(report, sort_keys=True).encode()
    mac = hmac.new(key, b"trainguard-report-v2" + body, hashlib.sha256).hexdigest()
    return json.dumps({"report": report, "mac": mac}, sort_keys=True)


def test_reports_are_signed_in_format_v2_and_opened_into_their_model() -> None:
    step_end = {
        **STAMP,
        "replica": 1,
        "kind": "StepEnd",
        "step": 4,
        "time": 12.5,
        "fingerprint": "ab",
        "regions": {"parameters@cpu": "ab"},
    }
    violation = {
        **STAMP,
        "replica": 0,
        "kind": "Violation",
        "step": None,
        "time": 1.0,
        "violation": "CheckpointUnsigned",
        "message": "c.pt has no signed manifest",
    }
    registered = {
        **STAMP,
        "replica": 0,
        "kind": "Registered",
        "step": None,
        "time": 1.0,
        "region": "buffers@cpu",
        "tensors": 2,
        "bytes": 128,
    }
    for report in (step_end, violation, registered):
        line = json.dumps(sign_report(KEY, report), sort_keys=True)
        assert line == v2_signed(KEY, report)
        assert open_report(KEY, json.loads(line)).wire() == report
    model = StepEnd(**STAMP, replica=1, step=4, time=12.5, fingerprint="ab", regions={"parameters@cpu": "ab"})
    assert sign_report(KEY, model) == sign_report(KEY, step_end)
    assert open_report(KEY, json.loads(v2_signed(KEY, step_end))) == model
    assert isinstance(open_report(KEY, json.loads(v2_signed(KEY, registered))), Registered)
    with pytest.raises(ValueError, match="not a report: Input tag 'Nope'"):
        sign_report(KEY, {**step_end, "kind": "Nope"})


def test_a_forged_or_malformed_report_is_refused() -> None:
    report = {**STAMP, "replica": 0, "kind": "Verified", "step": 3, "time": 1.0}
    signed = json.loads(v2_signed(KEY, report))
    cases: list[tuple[str, object]] = [
        ("not a signed report", [signed]),
        ("not a signed report: mac: Field required", {"report": report}),
        ("not a signed report: extra: Extra inputs", {**signed, "extra": 1}),
        ("not signed with the job's integrity key", {**signed, "mac": "0" * 64}),
        ("not signed with the job's integrity key", {**signed, "mac": "é"}),
        (
            "not a valid report: Verified.extra: Extra inputs are not permitted",
            json.loads(v2_signed(KEY, {**report, "extra": 1})),
        ),
        (
            "not a valid report: Verified.step: Input should be a valid integer",
            json.loads(v2_signed(KEY, {**report, "step": "3"})),
        ),
        ("not a valid report: Input tag 'Later'", json.loads(v2_signed(KEY, {**report, "kind": "Later"}))),
    ]
    for message, data in cases:
        with pytest.raises(ForgedReport, match=message):
            open_report(KEY, data)
    with pytest.raises(ForgedReport, match="not signed with the job's integrity key"):
        open_report(b"x" * 32, signed)


def test_the_report_stream_is_read_back_and_an_altered_line_is_refused(tmp_path: Path) -> None:
    stream = tmp_path / "reports.jsonl"
    lines = [
        v2_signed(KEY, {**STAMP, "replica": 0, "kind": "Verified", "step": s, "time": 1.0}) for s in (0, 1)
    ]
    stream.write_text("\n".join(lines) + "\n")
    assert [r.step for r in read_reports(KEY, stream)] == [0, 1]
    stream.write_text(lines[0].replace('"step": 0', '"step": 5') + "\n")
    with pytest.raises(ForgedReport):
        read_reports(KEY, stream)
    stream.write_text("not json\n")
    with pytest.raises(ForgedReport, match="not a signed report"):
        read_reports(KEY, stream)


def test_the_operator_concludes_verdicts_from_typed_reports() -> None:
    seq = itertools.count(1)

    def stamp(replica: int) -> dict[str, Any]:
        return {"job": "uid-1", "attempt": 0, "boot": f"b{replica}", "seq": next(seq), "replica": replica,
                "time": 0.0}  # fmt: skip

    def end(replica: int, step: int, fingerprint: str) -> StepEnd:
        return StepEnd(**stamp(replica), step=step, fingerprint=fingerprint, regions={})

    def verified(replica: int, step: int) -> Verified:
        return Verified(**stamp(replica), step=step)

    job = JobIntegrity(replicas=2)
    assert job.apply(Registered(**stamp(0), region="parameters@cpu", tensors=1, bytes=64)) == []
    assert job.apply(end(0, 1, "a")) == []
    # Both replicas' ends agree, but no sidecar has compared step 1's end with step 2's start yet.
    assert job.apply(end(1, 1, "a")) == []
    assert job.apply(verified(0, 1)) == []
    [ok] = job.apply(verified(1, 1))
    assert (ok.verified, ok.step, ok.kind) == (True, 1, "Verified")
    job.apply(end(0, 2, "a"))
    [divergence] = job.apply(end(1, 2, "b"))
    assert (divergence.verified, divergence.step, divergence.replica, divergence.kind) == (
        False,
        2,
        1,
        "ReplicaDivergence",
    )
    assert "replica 1 disagrees with the others about the weights at the end of step 2" in divergence.message
    assert job.apply(verified(0, 2)) == []  # a step that diverged is never verified
    assert job.apply(verified(1, 2)) == []
    tampered = Violation(**stamp(1), step=3, violation="ModifiedBetweenSteps", message="changed")
    [violation] = job.apply(tampered)
    assert (violation.verified, violation.step, violation.replica, violation.kind, violation.message) == (
        False,
        3,
        1,
        "ModifiedBetweenSteps",
        "changed",
    )


def test_a_replayed_reordered_or_transplanted_report_is_refused() -> None:
    job = JobIntegrity(replicas=1)

    def report(**fields: Any) -> Verified:
        base: dict[str, Any] = {**STAMP, "attempt": 2, "boot": "b0", "replica": 0, "time": 0.0, "step": 5}
        return Verified(**{**base, **fields})

    job.admit(report(seq=1), "uid-1", 2)
    job.admit(report(seq=2), "uid-1", 2)
    with pytest.raises(StaleReport, match="report 2 of replica 0's sidecar came after report 2: replayed"):
        job.admit(report(seq=2), "uid-1", 2)
    with pytest.raises(StaleReport, match="came after report 2"):
        job.admit(report(seq=1), "uid-1", 2)  # out of order
    job.admit(report(seq=1, boot="b1"), "uid-1", 2)  # a restarted sidecar starts a new sequence
    with pytest.raises(StaleReport, match="the report is of attempt 1; the job is at attempt 2"):
        job.admit(report(seq=9, attempt=1), "uid-1", 2)
    with pytest.raises(StaleReport, match="about job 'uid-0', not this one"):
        job.admit(report(seq=9, job="uid-0"), "uid-1", 2)
