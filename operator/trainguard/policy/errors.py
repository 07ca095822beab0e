"""Field-path errors: what is wrong, where, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. spec.sharedStorage[1].name
    reason: str  # CamelCase, for events and metrics
    message: str  # why
    fix: str  # how to fix it

    def __str__(self) -> str:
        return f"{self.path}: {self.message}; {self.fix}"


def format_errors(kind: str, name: str, errors: list[FieldError]) -> str:
    """All problems of one request at once, in the shape kubectl users know."""
    lines = [f'{kind} "{name}" is not allowed ({len(errors)} problem{"s" if len(errors) != 1 else ""}):']
    lines += [f"* {error}" for error in errors]
    return "\n".join(lines)


def schema_errors(exc: ValidationError) -> list[FieldError]:
    """A body the models refuse, as field errors (the CRD schema normally catches these first)."""
    return [
        FieldError(
            ".".join(str(p) for p in e["loc"]), "InvalidField", e["msg"], "see `kubectl explain tj.spec`"
        )
        for e in exc.errors()
    ]
