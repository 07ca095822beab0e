"""Admission rules for TrainingJobs that need other objects (the Tenant): pure, all errors at once.

Static rules (types, ranges, enums, immutability) live in the CRD schema and its CEL rules.
"""

from __future__ import annotations

from trainguard.api.models import Tenant, TrainingJob
from trainguard.policy.errors import FieldError

# Annotations and labels that claim a verification happened are never trusted: trainguard keeps
# what it verified in status, which only the operator can write.
UNTRUSTED_CLAIM_PREFIXES = ("trainguard.dev/verified", "trainguard.dev/signature", "trainguard.dev/pinned")


def validate_training_job(
    job: TrainingJob, tenant: Tenant | None, user: str = "", groups: tuple[str, ...] = ()
) -> list[FieldError]:
    """Every reason `job` may not run under its tenant; empty when it may (perhaps after queueing)."""
    spec = job.spec
    if tenant is None:
        return [
            FieldError(
                "spec.tenant",
                "TenantNotFound",
                f"Tenant {spec.tenant!r} does not exist",
                "ask the platform team to create it, or name an existing tenant",
            )
        ]
    errors: list[FieldError] = []
    if job.namespace not in tenant.spec.namespaces:
        errors.append(
            FieldError(
                "metadata.namespace",
                "NamespaceNotOwned",
                f"namespace {job.namespace!r} does not belong to tenant {spec.tenant!r}",
                f"create the job in one of the tenant's namespaces: {', '.join(tenant.spec.namespaces)}",
            )
        )
    if user and not tenant.spec.members.includes(user, list(groups)):
        errors.append(
            FieldError(
                "spec.tenant",
                "NotATenantMember",
                f"user {user!r} is not a member of tenant {spec.tenant!r}",
                "ask the platform team to add you (or one of your groups) to the tenant's members",
            )
        )
    known = ", ".join(s.name for s in tenant.spec.shared_storage) or "none"
    for i, mount in enumerate(spec.shared_storage):
        if tenant.spec.storage(mount.name) is None:
            errors.append(
                FieldError(
                    f"spec.sharedStorage[{i}].name",
                    "UnknownSharedStorage",
                    f"{mount.name!r} is not shared storage of tenant {spec.tenant!r}",
                    f"use one of: {known}",
                )
            )
    quota = tenant.spec.quota
    if spec.total_gpus > quota.max_gpus:
        errors.append(
            FieldError(
                "spec.replicas",
                "ExceedsTenantQuota",
                f"replicas x gpusPerReplica = {spec.replicas} x {spec.resources.gpus_per_replica}"
                f" = {spec.total_gpus} GPUs exceeds what tenant {spec.tenant!r} can ever hold "
                f"({quota.nominal_gpus} nominal + {quota.borrowing_limit_gpus} borrowable"
                f" = {quota.max_gpus})",
                f"ask for at most {quota.max_gpus} GPUs, or ask the platform team for more quota",
            )
        )
    claims = sorted(
        k
        for k in {**job.metadata.annotations, **job.metadata.labels}
        if k.startswith(UNTRUSTED_CLAIM_PREFIXES)
    )
    for key in claims:
        errors.append(
            FieldError(
                f"metadata.annotations[{key}]",
                "ForgedVerificationClaim",
                "trainguard never trusts verification claims written into an object",
                "remove it; trainguard verifies the image itself and records the result in status",
            )
        )
    return errors
