"""Signed integrity reports (sidecar -> operator) and what the operator concludes from them. Pure."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from trainguard.integrity.replicas import diverging_replicas

KEEP_STEPS = 64  # steps awaiting reports from every replica; older ones are dropped


class ForgedReport(ValueError):
    """A report whose signature is not the job's key's."""


def _mac(key: bytes, report: dict[str, Any]) -> str:
    body = json.dumps(report, sort_keys=True).encode()
    return hmac.new(key, b"trainguard-report-v1" + body, hashlib.sha256).hexdigest()


def sign_report(key: bytes, report: dict[str, Any]) -> str:
    return json.dumps({"report": report, "mac": _mac(key, report)}, sort_keys=True)


def open_report(key: bytes, signed: dict[str, Any]) -> dict[str, Any]:
    """The report inside `signed`, if the job's key signed it."""
    try:
        report, mac = signed["report"], str(signed["mac"])
    except (KeyError, TypeError) as exc:
        raise ForgedReport("not a signed report") from exc
    if not isinstance(report, dict) or not hmac.compare_digest(mac, _mac(key, report)):
        raise ForgedReport("the report is not signed with the job's integrity key")
    return report


@dataclass(frozen=True)
class Verdict:
    verified: bool
    step: int | None
    replica: int | None = None
    kind: str = "Verified"
    message: str = ""


@dataclass
class JobIntegrity:
    """What the operator knows of one job's integrity: end-of-step fingerprints per replica."""

    replicas: int
    pending: dict[int, dict[int, str]] = field(default_factory=dict)

    def apply(self, report: dict[str, Any]) -> list[Verdict]:
        kind, step, replica = report.get("kind"), report.get("step"), report.get("replica")
        if kind == "Violation":
            return [
                Verdict(False, step, replica, str(report.get("violation")), str(report.get("message", "")))
            ]
        if kind != "StepEnd" or not isinstance(step, int) or not isinstance(replica, int):
            return []
        seen = self.pending.setdefault(step, {})
        seen[replica] = str(report["fingerprint"])
        for old in sorted(self.pending)[:-KEEP_STEPS]:
            del self.pending[old]
        if len(seen) < self.replicas:
            return []
        del self.pending[step]
        odd = diverging_replicas(seen)
        if odd:
            names = ", ".join(str(r) for r in odd)
            message = f"replica {names} disagrees with the others about the weights at the end of step {step}"
            return [Verdict(False, step, odd[0], "ReplicaDivergence", message)]
        return [Verdict(True, step)]
