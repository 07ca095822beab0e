"""Running the integrity sidecar as its own process, wired as a pod wires it (shared directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from e2e.cluster.waiting import die_with_parent, wait_for
from trainguard.integrity.reports import Report, read_reports

R = TypeVar("R")


@dataclass
class SidecarProcess:
    folder: Path  # plays the pod's shared emptyDir
    key: bytes = field(default_factory=lambda: os.urandom(32))
    replica: int = 0
    mode: str = "Enforce"
    report_url: str | None = None  # the operator's endpoint for this job, as the pod spec sets it
    job_uid: str = ""  # what the pod spec passes: every report names the job and its attempt
    attempt: int = 0
    # As in a pod: ask the operator (`key_url`) for the job's key with a pod-bound token instead
    # of reading `key` from a file (`key` is then not the job's key).
    key_url: str | None = None
    token: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.folder / "sidecar.sock"

    @property
    def reports_path(self) -> Path:
        # The sidecar's own record, outside the shared folder (the pod gives it a volume the trainer
        # does not mount): the trainer can neither read when a check ran nor edit the record.
        return self.folder.parent / f"record-{self.replica}" / "reports.jsonl"

    def start(self) -> SidecarProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.reports_path.parent.mkdir(exist_ok=True)
        # Its own folder outside the shared one, as the pod mounts the key Secret: the trainer never sees it.
        key_dir = self.folder.parent / f"key-{self.replica}"
        key_dir.mkdir(exist_ok=True)
        if self.key_url:
            assert self.token, "a sidecar that asks for its key needs its pod's token"
            token_file = key_dir / "token"
            token_file.write_text(self.token)
            token_file.chmod(0o600)
            source = ["--key-url", self.key_url, "--token-file", str(token_file)]
        else:
            key_file = key_dir / "key"
            key_file.write_bytes(self.key)
            key_file.chmod(0o600)
            source = ["--key-file", str(key_file)]
        argv = [sys.executable, "-m", "trainguard.sidecar", "--socket", str(self.socket), *source,
                "--replica", str(self.replica), "--mode", self.mode,
                "--job-uid", self.job_uid, "--attempt", str(self.attempt),
                "--report", str(self.reports_path)]  # fmt: skip
        if self.report_url:
            argv += ["--report-url", self.report_url]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        wait_for("the sidecar socket", lambda: self.socket.exists() or self._died())
        return self

    @property
    def log_path(self) -> Path:
        return self.folder.parent / f"sidecar-{self.replica}.log"

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            output = self.log_path.read_text(errors="replace")[-2000:]
            raise AssertionError(f"the sidecar exited with {self.proc.returncode}:\n{output}")
        return False

    def reports(self) -> list[Report]:
        """Every report the sidecar wrote so far, its signature checked."""
        return read_reports(self.key, self.reports_path) if self.reports_path.exists() else []

    def reports_of(self, kind: type[R]) -> list[R]:
        """The reports of one kind (`trainguard.integrity.reports.StepEnd`, ...), in order."""
        return [r for r in self.reports() if isinstance(r, kind)]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
