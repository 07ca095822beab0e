"""Standard Kubernetes conditions: the only way TrainingJob status says what state it is in."""

from __future__ import annotations

import datetime
import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ConditionType(enum.StrEnum):
    """Listed, and written, most decisive first: the printer column shows the first True one."""

    FAILED = "Failed"
    SUCCEEDED = "Succeeded"
    INTEGRITY_VIOLATION = "IntegrityViolation"
    RUNNING = "Running"
    PREEMPTED = "Preempted"
    QUEUED = "Queued"
    ADMITTED = "Admitted"
    INTEGRITY_VERIFIED = "IntegrityVerified"


Status = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)
    type: str
    status: Status
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes times."""
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def find(conditions: list[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


def is_true(conditions: list[Condition], kind: str) -> bool:
    found = find(conditions, kind)
    return found is not None and found.status == "True"


def job_state(conditions: list[Condition]) -> str:
    """A job's state in one word: its first True condition in the printer column's order
    (IntegrityVerified, which accompanies the others, aside); else NotAdmitted when admission
    turned it down, else Pending."""
    for kind in ConditionType:
        if kind is not ConditionType.INTEGRITY_VERIFIED and is_true(conditions, kind.value):
            return kind.value
    admitted = find(conditions, ConditionType.ADMITTED.value)
    return "NotAdmitted" if admitted is not None and admitted.status == "False" else "Pending"


def set_condition(
    conditions: list[Condition],
    kind: str,
    status: Status,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Return `conditions` with `kind` set; lastTransitionTime moves only when the status changes."""
    old = find(conditions, kind)
    transition = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )
    out = [c for c in conditions if c.type != kind]
    out.append(new)
    order = {t.value: i for i, t in enumerate(ConditionType)}
    return sorted(out, key=lambda c: order.get(c.type, len(order)))
