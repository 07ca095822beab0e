"""Signed integrity reports (sidecar -> operator) and what the operator concludes from them. Pure.

A report is one of the models below, told apart by `kind`. The sidecar signs it with the job's
key (`sign_report`) and appends it to its report stream and POSTs it to the operator, who opens
it (`open_report`): the signature is checked on the JSON as it arrived, then the report is
parsed, once, into its model. Unknown fields or kinds are refused like a bad signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError

from trainguard.api.models import IntegrityVerdict
from trainguard.integrity.protocol import WireModel, explain
from trainguard.integrity.replicas import diverging_replicas

KEEP_STEPS = 64  # steps awaiting reports from every replica; older ones are dropped

# What the operator concludes about one step (verified, step, replica, kind, message). The model is
# the API's: the job's reconcile pass (trainguard.workload) folds verdicts into the job's status.
Verdict = IntegrityVerdict


class ForgedReport(ValueError):
    """A report whose signature is not the job's key's, or that is not a report at all."""


class _Report(WireModel):
    """What every report carries under the signature, so that a signed report means one thing only:
    which job (its uid, not its name) and attempt it is about, and its place in its sidecar's
    sequence. A replayed, reordered or transplanted report is refused (`JobIntegrity.admit`)."""

    job: str  # the TrainingJob's uid
    attempt: int  # the job's attempt (restarts + preemptions) the sidecar's pod belongs to
    boot: str  # random per sidecar process: a restarted sidecar starts a new sequence
    seq: int  # 1, 2, 3, ... within one boot
    replica: int
    # The trainer process of the pod (torchrun's LOCAL_RANK) the report is about. Left out for
    # rank 0: a one-process pod's reports read as before ranks, by older operators too.
    rank: int = 0
    step: int | None
    time: float  # when the sidecar wrote it (seconds since the epoch)
    omit_when_default: ClassVar[tuple[str, ...]] = ("rank",)


class Registered(_Report):
    """The trainer shared a region (again)."""

    kind: Literal["Registered"] = "Registered"
    step: None = None
    region: str
    tensors: int
    bytes: int


class StepEnd(_Report):
    """The fingerprints at the end of a step: per region, and what replicas must agree on."""

    kind: Literal["StepEnd"] = "StepEnd"
    step: int
    fingerprint: str
    regions: dict[str, str]
    seconds: float | None = None  # how long fingerprinting every region took (for the operator's metrics)
    # What the next step will run with: every param group's hyperparameters and the watched
    # generators' seeds and offsets (the audit trail of a learning rate or a seed over time).
    controls: dict[str, int | float] | None = None
    omit_when_none: ClassVar[tuple[str, ...]] = ("seconds", "controls")


class Verified(_Report):
    """The state the end of `step` left is the state the next step started from."""

    kind: Literal["Verified"] = "Verified"
    step: int


class Violation(_Report):
    """Something changed what it must not have; `violation` names what kind of change."""

    kind: Literal["Violation"] = "Violation"
    violation: str
    message: str
    tensors: dict[str, list[str]] | None = None  # per region, the tensors that changed
    omit_when_none: ClassVar[tuple[str, ...]] = ("tensors",)


class Adjusted(_Report):
    """The training code changed hyperparameters or generators on purpose between steps (a watched
    learning-rate scheduler, or code inside `guard.adjusting()`): who, and each change."""

    kind: Literal["Adjusted"] = "Adjusted"
    reason: str
    changes: list[str]


class CheckpointSigned(_Report):
    kind: Literal["CheckpointSigned"] = "CheckpointSigned"
    checkpoint: str
    files: int


Report = Annotated[
    Registered | StepEnd | Verified | Violation | Adjusted | CheckpointSigned, Field(discriminator="kind")
]
_REPORT: TypeAdapter[Report] = TypeAdapter(Report)


class _Signed(WireModel):
    report: dict[str, Any]
    mac: str


def _mac(key: bytes, report: dict[str, Any]) -> str:
    body = json.dumps(report, sort_keys=True).encode()
    return hmac.new(key, b"trainguard-report-v2" + body, hashlib.sha256).hexdigest()


def sign_report(key: bytes, report: Report | dict[str, Any]) -> dict[str, Any]:
    """{"report": ..., "mac": ...}: the report signed with the job's key (a dict is checked first).

    The sidecar writes it as one JSON line, keys sorted."""
    if isinstance(report, dict):
        try:
            report = _REPORT.validate_python(report)
        except ValidationError as exc:
            raise ValueError(f"not a report: {explain(exc)}") from exc
    body = report.wire()
    return {"report": body, "mac": _mac(key, body)}


def open_report(key: bytes, signed: object) -> Report:
    """The report inside `signed`, if the job's key signed it and it is a report."""
    try:
        envelope = _Signed.model_validate(signed)
    except ValidationError as exc:
        raise ForgedReport(f"not a signed report: {explain(exc)}") from exc
    expected = _mac(key, envelope.report)
    if not hmac.compare_digest(envelope.mac.encode(), expected.encode()):
        raise ForgedReport("the report is not signed with the job's integrity key")
    try:
        return _REPORT.validate_python(envelope.report)
    except ValidationError as exc:
        raise ForgedReport(f"a signed report that is not a valid report: {explain(exc)}") from exc


def read_reports(key: bytes, path: Path) -> list[Report]:
    """The reports of a sidecar's report stream (one signed report per line), in order; a forged,
    altered or malformed line raises ForgedReport."""
    reports = []
    for line in path.read_text().splitlines():
        try:
            signed = json.loads(line)
        except ValueError as exc:
            raise ForgedReport(f"not a signed report: {exc}") from exc
        reports.append(open_report(key, signed))
    return reports


class StaleReport(ValueError):
    """A genuine report that must not count again or here: replayed, out of order, of another
    job or of an attempt that is over."""


@dataclass
class JobIntegrity:
    """What the operator knows of one job's integrity: end-of-step fingerprints per replica pod
    and rank, which of them compared each step's end with the next step's start, and each
    sidecar's sequence.

    Rank r of every replica pod holds the same data-parallel parameters (with tensor or pipeline
    parallelism inside the pod, the same shard): for each step, the fingerprints of one rank are
    compared across the pods. The ranks inside one pod are compared by its sidecar. A step is
    verified once every rank heard of so far agrees across every replica and was compared."""

    replicas: int
    # step -> rank -> replica -> fingerprint, until every replica reported that rank
    pending: dict[int, dict[int, dict[int, str]]] = field(default_factory=dict)
    agreed: dict[int, set[int]] = field(default_factory=dict)  # step -> ranks whose ends agreed
    compared: dict[int, set[tuple[int, int]]] = field(default_factory=dict)  # step -> (replica, rank)
    ranks: set[int] = field(default_factory=set)  # every rank a report named
    sequences: dict[tuple[int, int, str], int] = field(default_factory=dict)  # (attempt, replica, boot)

    def admit(self, report: Report, job_uid: str, attempt: int) -> None:
        """Raise StaleReport unless `report` is new, for this job and its current attempt."""
        if report.job != job_uid:
            raise StaleReport(f"the report is about job {report.job!r}, not this one ({job_uid})")
        if report.attempt != attempt:
            raise StaleReport(f"the report is of attempt {report.attempt}; the job is at attempt {attempt}")
        where = (report.attempt, report.replica, report.boot)
        last = self.sequences.get(where, 0)
        if report.seq <= last:
            raise StaleReport(
                f"report {report.seq} of replica {report.replica}'s sidecar came after report {last}: "
                "replayed or out of order"
            )
        self.sequences[where] = report.seq

    def apply(self, report: Report) -> list[Verdict]:
        self.ranks.add(report.rank)
        if isinstance(report, Violation):
            return [
                Verdict(
                    verified=False,
                    step=report.step,
                    replica=report.replica,
                    kind=report.violation,
                    message=report.message,
                )
            ]
        if isinstance(report, Verified):
            # The sidecar compared the start of step+1 with the end of `step`: only that makes
            # `step` verified, once every replica's ends agree too.
            self.compared.setdefault(report.step, set()).add((report.replica, report.rank))
            for old in sorted(self.compared)[:-KEEP_STEPS]:
                del self.compared[old]
            return self._verified(report.step)
        if not isinstance(report, StepEnd):
            return []
        step, rank = report.step, report.rank
        seen = self.pending.setdefault(step, {}).setdefault(rank, {})
        seen[report.replica] = report.fingerprint
        for old in sorted(self.pending)[:-KEEP_STEPS]:
            del self.pending[old]
        if len(seen) < self.replicas:
            return []
        del self.pending[step][rank]
        if not self.pending[step]:
            del self.pending[step]
        odd = diverging_replicas(seen)
        if odd:
            names = ", ".join(str(r) for r in odd)
            of_rank = f" (rank {rank} of each pod)" if self.ranks != {0} else ""
            message = (
                f"replica {names} disagrees with the others about the weights{of_rank} "
                f"at the end of step {step}"
            )
            return [
                Verdict(verified=False, step=step, replica=odd[0], kind="ReplicaDivergence", message=message)
            ]
        self.agreed.setdefault(step, set()).add(rank)
        for old in sorted(self.agreed)[:-KEEP_STEPS]:
            del self.agreed[old]
        return self._verified(step)

    def _verified(self, step: int) -> list[Verdict]:
        if not self.ranks <= self.agreed.get(step, set()):
            return []
        everyone = {(replica, rank) for replica in range(self.replicas) for rank in self.ranks}
        if not everyone <= self.compared.get(step, set()):
            return []
        del self.agreed[step]
        del self.compared[step]
        return [Verdict(verified=True, step=step)]
