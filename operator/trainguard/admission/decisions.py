"""One admission decision as a record for the audit log: who asked, to do what to which object of
which tenant, what trainguard answered and why (pure: the review and the answer in, fields out).

The operator logs each record as one line; with `--log-format json` its fields are the line's JSON
keys (`decision`, `user`, `operation`, `resource`, `namespace`, `objectName`, `tenant`, `reasons`,
`detail`, `dryRun`, `uid`; `message` is the line in words), so a log pipeline can filter on them
without parsing prose. (`name` and `message` are Python's own LogRecord attributes.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    decision: str  # allowed | denied | error
    user: str
    operation: str
    resource: str  # plural, with its subresource: pods/exec
    namespace: str
    name: str
    tenant: str  # "" when the object names none and its namespace is no tenant's
    reasons: tuple[str, ...]
    message: str
    dry_run: bool
    uid: str

    def fields(self) -> dict[str, Any]:
        """The record as log fields (JSON keys)."""
        return {
            "decision": self.decision,
            "user": self.user,
            "operation": self.operation,
            "resource": self.resource,
            "namespace": self.namespace,
            "objectName": self.name,
            "tenant": self.tenant,
            "reasons": list(self.reasons),
            "detail": self.message,
            "dryRun": self.dry_run,
            "uid": self.uid,
        }

    def line(self) -> str:
        """The same record in words, for the plain log format."""
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        head = (
            f"admission {self.decision}: {self.user} {self.operation} {self.resource} {where}"
            f"{' (dry run)' if self.dry_run else ''}"
            f"{f' of tenant {self.tenant}' if self.tenant else ''}"
        )
        return f"{head}: {self.message}" if self.message else head


def decision_of(
    request: Mapping[str, Any],
    answer: Mapping[str, Any],
    *,
    reasons: Iterable[str] = (),
    tenant_of_namespace: str = "",
) -> Decision:
    """The record of one review (`request`: the AdmissionReview's `request`) and its answer (the
    AdmissionReview trainguard returned); `reasons`: the refusal reasons the rules gave (CamelCase,
    as in Events and metrics). The tenant is the object's `spec.tenant` (a TrainingJob, or its old
    version on DELETE), else the namespace's."""
    response = answer.get("response") or {}
    status = response.get("status") or {}
    if response.get("allowed"):
        decision = "allowed"
    else:
        decision = "error" if int(status.get("code") or 500) >= 500 else "denied"
    message = "" if decision == "allowed" else str(status.get("message") or "")
    obj = request.get("object") or request.get("oldObject") or {}
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    tenant = spec.get("tenant") if isinstance(spec, Mapping) else None
    resource = str((request.get("resource") or {}).get("resource") or "")
    if request.get("subResource"):
        resource = f"{resource}/{request['subResource']}"
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = str(request.get("name") or (meta or {}).get("name") or (meta or {}).get("generateName") or "")
    return Decision(
        decision=decision,
        user=str((request.get("userInfo") or {}).get("username") or ""),
        operation=str(request.get("operation") or ""),
        resource=resource,
        namespace=str(request.get("namespace") or ""),
        name=name,
        tenant=str(tenant) if isinstance(tenant, str) and tenant else tenant_of_namespace,
        reasons=tuple(dict.fromkeys(reasons)),
        message=message,
        dry_run=bool(request.get("dryRun")),
        uid=str(request.get("uid") or ""),
    )
