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
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.folder / "sidecar.sock"

    @property
    def reports_path(self) -> Path:
        return self.folder / "reports.jsonl"

    def start(self) -> SidecarProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Its own folder outside the shared one, as the pod mounts the key Secret: the trainer never sees it.
        key_dir = self.folder.parent / f"key-{self.replica}"
        key_dir.mkdir(exist_ok=True)
        key_file = key_dir / "key"
        key_file.write_bytes(self.key)
        key_file.chmod(0o600)
        argv = [sys.executable, "-m", "trainguard.sidecar", "--socket", str(self.socket),
                "--key-file", str(key_file), "--replica", str(self.replica), "--mode", self.mode,
                "--report", str(self.reports_path)]  # fmt: skip
        if self.report_url:
            argv += ["--report-url", self.report_url]
        log = (self.folder.parent / f"sidecar-{self.replica}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        wait_for("the sidecar socket", lambda: self.socket.exists() or self._died())
        return self

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the sidecar exited with {self.proc.returncode}")
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
