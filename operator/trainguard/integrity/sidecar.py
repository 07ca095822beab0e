"""The weight-verification sidecar: its own process (and container), the only holder of the key.

    python -m trainguard.integrity.sidecar --socket /run/trainguard/sidecar.sock \\
        --key-file /var/run/trainguard-key/key --replica 0 --mode Enforce \\
        --report /run/trainguard/reports.jsonl

The trainer shares its weights once (one flat buffer in a file on the shared emptyDir, mapped by
both processes) and signals step boundaries. At the end of step t and at the start of step t+1 the
sidecar fingerprints the weights; a difference means something changed them between steps.
Checkpoints get a manifest of file hashes signed with the key; loading verifies it first.
Every result is appended to the report stream as a line signed with the key, which the trainer
cannot forge (it never sees the key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from trainguard.integrity.fingerprint import FingerprintKey, fingerprint
from trainguard.integrity.manifest import MANIFEST_SUFFIX, build_manifest, verify_manifest
from trainguard.integrity.protocol import LineReader, Slot, send, slots_from_json
from trainguard.integrity.reports import open_report, sign_report

MODES = ("Off", "Audit", "Enforce")


def read_reports(key: bytes, path: Path) -> list[dict[str, Any]]:
    """Reports whose signature verifies; a forged or altered line raises ForgedReport."""
    return [open_report(key, json.loads(line)) for line in path.read_text().splitlines()]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Sidecar:
    def __init__(
        self,
        key: bytes,
        replica: int,
        mode: str,
        every_steps: int,
        report_path: Path | None,
        report_url: str | None = None,
    ) -> None:
        if report_url and not report_url.startswith(("http://", "https://")):
            raise ValueError(f"--report-url must be http(s), got {report_url!r}")
        self.report_url = report_url
        self.key = key
        self.fp_key = FingerprintKey.from_secret(key)
        self.replica = replica
        self.mode = mode
        self.every = every_steps
        self.report_path = report_path
        self.buffer: mmap.mmap | None = None
        self.slots: list[Slot] = []
        self.at_end: dict[int, str] = {}

    # ----------------------------------------------------------------- results
    def report(self, kind: str, step: int | None, **details: Any) -> None:
        entry = {"replica": self.replica, "kind": kind, "step": step, "time": time.time(), **details}
        line = sign_report(self.key, entry)
        if self.report_path is not None:
            with self.report_path.open("a") as f:
                f.write(line + "\n")
        if self.report_url:
            request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
                self.report_url,
                data=line.encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                urllib.request.urlopen(request, timeout=2).close()  # noqa: S310 - the operator's endpoint
            except OSError as exc:  # the operator is down: the local report stream still has it
                print(f"sidecar: report not delivered: {exc}", file=sys.stderr, flush=True)

    def violation(self, kind: str, step: int | None, message: str) -> dict[str, Any]:
        self.report("Violation", step, violation=kind, message=message)
        return {"ok": self.mode != "Enforce", "violation": {"kind": kind, "step": step, "message": message}}

    # ----------------------------------------------------------------- weights
    def weights_fingerprint(self) -> str:
        assert self.buffer is not None, "the trainer has not registered its weights"
        data = np.frombuffer(self.buffer, dtype=np.uint8)
        return fingerprint(self.fp_key, (data[s.offset : s.offset + s.nbytes] for s in self.slots))

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        raw_step = message.get("step")
        step = int(raw_step) if raw_step is not None else -1
        if op == "register":
            fd = os.open(message["path"], os.O_RDONLY)
            try:
                self.buffer = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            self.slots = slots_from_json(message["slots"])
            self.report("Registered", None, tensors=len(self.slots), bytes=sum(s.nbytes for s in self.slots))
            return {"ok": True}
        if op == "end":
            if step % self.every == 0:
                fp = self.weights_fingerprint()
                self.at_end = {step: fp}  # only the latest step is compared
                self.report("StepEnd", step, fingerprint=fp)
            return {"ok": True}
        if op == "begin":
            previous = self.at_end.get(step - 1)
            if previous is None:
                return {"ok": True}
            fp = self.weights_fingerprint()
            if fp != previous:
                return self.violation(
                    "ModifiedBetweenSteps",
                    step,
                    f"replica {self.replica}: the weights changed between the end of step {step - 1} "
                    f"and the start of step {step}",
                )
            self.report("Verified", step - 1)
            return {"ok": True}
        if op == "checkpoint":
            path = Path(message["path"])
            manifest = build_manifest(self.key, {path.name: file_sha256(path)}, raw_step)
            Path(str(path) + MANIFEST_SUFFIX).write_text(json.dumps(manifest, indent=1))
            self.report("CheckpointSigned", raw_step, file=path.name)
            return {"ok": True}
        if op == "verify":
            path = Path(message["path"])
            manifest_path = Path(str(path) + MANIFEST_SUFFIX)
            if not manifest_path.exists():
                return self.violation("CheckpointUnsigned", raw_step, f"{path.name} has no signed manifest")
            problems = verify_manifest(
                self.key, json.loads(manifest_path.read_text()), {path.name: file_sha256(path)}
            )
            if problems:
                return self.violation("CheckpointModified", raw_step, f"{path.name}: {'; '.join(problems)}")
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def serve(self, socket_path: Path) -> None:
        socket_path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(socket_path))
        server.listen(1)
        while True:
            conn, _ = server.accept()
            with conn:
                reader = LineReader(conn)
                while (message := reader.read()) is not None:
                    send(conn, self.handle(message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainguard-sidecar")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--key-file", type=Path, required=True, help="the job's 32-byte integrity key")
    parser.add_argument("--replica", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="Audit")
    parser.add_argument("--every-steps", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="append signed reports here")
    parser.add_argument("--report-url", default=None, help="POST signed reports to the operator here")
    args = parser.parse_args(argv)
    key = args.key_file.read_bytes()
    Sidecar(key, args.replica, args.mode, args.every_steps, args.report, args.report_url).serve(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
