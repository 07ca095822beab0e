"""Who may act on a TrainingJob and on its pods: the decisions RBAC cannot make, because they
depend on who created the job. Pure.

- The owner is whoever created the job (recorded at admission from the request, never from
  the body). Collaborators are users and groups of the same tenant the owner names. A tenant's
  admins are named in the Tenant.
- Changing a job: nothing that decides what runs or how it is judged changes after creation
  (the CRD's rules and this module agree); the collaborators change by the owner or an admin;
  labels and annotations by the owner, collaborators and admins.
- Deleting a job: its owner, collaborators and the tenant's admins.
- exec / attach / port-forward into a job's pod: its owner and collaborators only, into the
  trainer only, and only when the job allows debugging.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.api.constants import LABEL_JOB, SIDECAR_CONTAINER, TRAINER_CONTAINER
from trainguard.api.models import Members, Owner, Tenant, TrainingJob
from trainguard.policy.errors import FieldError

# Everything in spec but the collaborators: what runs and how it is judged.
IMMUTABLE_FIELDS = (
    "tenant",
    "image",
    "command",
    "args",
    "env",
    "replicas",
    "resources",
    "sharedStorage",
    "output",
    "priority",
    "maxRunSeconds",
    "failurePolicy",
    "integrity",
    "owner",
    "debugging",
)


class Role(enum.StrEnum):
    OWNER = "owner"
    COLLABORATOR = "collaborator"
    ADMIN = "tenant admin"


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()

    @classmethod
    def from_userinfo(cls, userinfo: Mapping[str, Any]) -> Identity:
        return cls(str(userinfo.get("username", "")), tuple(userinfo.get("groups") or ()))

    def owner(self) -> Owner:
        return Owner(user=self.user, groups=list(self.groups))


# kube-controller-manager's identities: one user, or one service account per controller.
CONTROLLER_MANAGER = "system:kube-controller-manager"
KUBE_SYSTEM_ACCOUNTS = "system:serviceaccount:kube-system:"
CLUSTER_ADMINS = "system:masters"
NODES = "system:nodes"


def is_operator(who: Identity, operator_users: frozenset[str]) -> bool:
    return who.user in operator_users


def may_clean_up(who: Identity, operator_users: frozenset[str]) -> bool:
    """Who may delete what trainguard guards beside the owners: the operator, cluster admins, the
    cluster's own controllers (garbage and namespace deletion) and nodes (which remove the pods
    they ran)."""
    return (
        is_operator(who, operator_users)
        or who.user == CONTROLLER_MANAGER
        or who.user.startswith(KUBE_SYSTEM_ACCOUNTS)
        or CLUSTER_ADMINS in who.groups
        or NODES in who.groups
    )


@dataclass(frozen=True)
class Refusal:
    reason: str  # CamelCase, for events and metrics
    message: str


def roles(job: TrainingJob, tenant: Tenant | None, who: Identity) -> set[Role]:
    """What `who` is to `job`. A job admitted before owners were recorded has none: its tenant's
    members act as its owner."""
    found: set[Role] = set()
    owner = job.spec.owner
    if owner is not None and owner.user == who.user:
        found.add(Role.OWNER)
    if owner is None and tenant is not None and tenant.spec.members.includes(who.user, list(who.groups)):
        found.add(Role.OWNER)
    if job.spec.collaborators.includes(who.user, list(who.groups)):
        found.add(Role.COLLABORATOR)
    if tenant is not None and tenant.spec.admins.includes(who.user, list(who.groups)):
        found.add(Role.ADMIN)
    return found


def who_may(job: TrainingJob, *allowed: Role) -> str:
    """The people who may act, in words, for a refusal's fix."""
    parts: list[str] = []
    if Role.OWNER in allowed:
        parts.append(f"its owner {job.spec.owner.user!r}" if job.spec.owner else "its tenant's members")
    if Role.COLLABORATOR in allowed:
        parts.append(f"its collaborators ({_names(job.spec.collaborators) or 'none named'})")
    if Role.ADMIN in allowed:
        parts.append(f"the admins of tenant {job.spec.tenant!r}")
    return ", ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1]


def _names(members: Members) -> str:
    return ", ".join([*members.users, *(f"group {g}" for g in members.groups)])


def collaborator_errors(job: TrainingJob, tenant: Tenant) -> list[FieldError]:
    """Collaborators must belong to the job's tenant: a listed member user, or a member group."""
    errors: list[FieldError] = []
    members = tenant.spec.members
    for i, user in enumerate(job.spec.collaborators.users):
        if user not in members.users:
            errors.append(
                FieldError(
                    f"spec.collaborators.users[{i}]",
                    "CollaboratorNotInTenant",
                    f"user {user!r} is not listed as a member of tenant {tenant.metadata.name!r}",
                    "name a member user or one of the tenant's member groups, or ask the platform team "
                    "to add the user to the tenant",
                )
            )
    for i, group in enumerate(job.spec.collaborators.groups):
        if group not in members.groups:
            errors.append(
                FieldError(
                    f"spec.collaborators.groups[{i}]",
                    "CollaboratorNotInTenant",
                    f"group {group!r} is not a member group of tenant {tenant.metadata.name!r}",
                    f"name one of the tenant's member groups: {', '.join(members.groups) or 'none'}",
                )
            )
    return errors


def owner_errors(job: TrainingJob, who: Identity) -> list[FieldError]:
    """At creation the owner must be the requester (the mutating webhook writes it)."""
    if job.spec.owner is not None and job.spec.owner.user == who.user:
        return []
    return [
        FieldError(
            "spec.owner",
            "OwnerNotRequester",
            "spec.owner records who created the job and is written by trainguard",
            "remove spec.owner from the manifest; trainguard sets it to you",
        )
    ]


def update_errors(
    old: Mapping[str, Any], new: Mapping[str, Any], job: TrainingJob, tenant: Tenant | None, who: Identity
) -> list[FieldError]:
    """Every reason `who` may not make this change to `job` (`old` and `new` are the raw objects)."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    errors = [
        FieldError(
            f"spec.{name}",
            "Immutable",
            f"spec.{name} cannot change after the job is created: it decides what runs and how it is judged",
            f"create a new TrainingJob instead (delete this one if you may: {who_may(job, *Role)})",
        )
        for name in IMMUTABLE_FIELDS
        if old_spec.get(name) != new_spec.get(name)
    ]
    mine = roles(job, tenant, who)
    if old_spec.get("collaborators") != new_spec.get("collaborators"):
        if not mine & {Role.OWNER, Role.ADMIN}:
            errors.append(
                FieldError(
                    "spec.collaborators",
                    "NotOwner",
                    f"{who.user!r} may not change who acts on TrainingJob {job.name!r}",
                    f"ask {who_may(job, Role.OWNER, Role.ADMIN)}",
                )
            )
        elif tenant is not None:
            errors += collaborator_errors(job, tenant)
    elif not mine:
        errors.append(
            FieldError(
                "metadata",
                "NotOwner",
                f"{who.user!r} may not change TrainingJob {job.name!r}",
                f"ask {who_may(job, *Role)}",
            )
        )
    return errors


def delete_refusal(job: TrainingJob, tenant: Tenant | None, who: Identity) -> FieldError | None:
    if roles(job, tenant, who):
        return None
    return FieldError(
        "metadata.name",
        "NotOwner",
        f"{who.user!r} may not delete TrainingJob {job.name!r}, its checkpoints and output",
        f"ask {who_may(job, *Role)}",
    )


def connect_refusal(
    job: TrainingJob | None,
    tenant: Tenant | None,
    pod_name: str,
    action: str,
    container: str | None,
    who: Identity,
) -> Refusal | None:
    """`kubectl exec` / `attach` / `port-forward` (`action`) into a job's pod. None when allowed."""
    if container == SIDECAR_CONTAINER:
        return Refusal(
            "SidecarExec",
            f"pods/{action} into {pod_name} -c {SIDECAR_CONTAINER}: the integrity sidecar holds the job's "
            "key, and nobody may run commands in it; read its findings in the job's status and events",
        )
    if job is None:
        return Refusal("JobGone", f"pods/{action} into {pod_name}: its TrainingJob no longer exists")
    if container not in (None, "", TRAINER_CONTAINER):
        return Refusal(
            "NotTheTrainer",
            f"pods/{action} into {pod_name}: only the {TRAINER_CONTAINER!r} container may be used",
        )
    if not roles(job, tenant, who) & {Role.OWNER, Role.COLLABORATOR}:
        return Refusal(
            "ForeignExec",
            f"pods/{action} into {pod_name}: {who.user!r} is not the owner or a collaborator of TrainingJob "
            f"{job.name!r}; ask {who_may(job, Role.OWNER)} to add you to spec.collaborators",
        )
    if not job.spec.debugging_allowed:
        return Refusal(
            "DebuggingDisallowed",
            f"pods/{action} into {pod_name}: TrainingJob {job.name!r} does not allow debugging "
            f"(spec.debugging, Disallowed by default with integrity mode Enforce); create a job with "
            "spec.debugging: Allowed to debug by hand",
        )
    return None


def token_refusal(
    account: str, job_names: Iterable[str], who: Identity, operator_users: frozenset[str]
) -> Refusal | None:
    """A token of a job's service account (`<job>-runner`) proves to the operator that it comes
    from the job's own pod, and buys the job's integrity key: only the kubelet (a node) mints
    those, for the pods it runs. Cluster admins and the operator may too."""
    jobs = [name for name in job_names if account == f"{name}-runner"]
    if not jobs:
        return None
    if NODES in who.groups or CLUSTER_ADMINS in who.groups or is_operator(who, operator_users):
        return None
    return Refusal(
        "JobTokenRequest",
        f"tokens of service account {account!r} of TrainingJob {jobs[0]!r} are minted by the kubelet for "
        "the job's own pods only: they prove to trainguard that a request comes from the job; run your "
        "code as a TrainingJob of your own instead",
    )


def job_pod_refusal(pod: dict[str, Any], operation: str) -> FieldError:
    """Anyone but the operator creating, changing or deleting a job's pod."""
    verb = {"CREATE": "create", "DELETE": "delete"}.get(operation, "change")
    owner = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB, "?")
    return FieldError(
        "metadata.ownerReferences",
        "JobPodIsOperatorOwned",
        f"only trainguard may {verb} the pods of TrainingJob {owner!r}",
        "change or delete the TrainingJob instead; trainguard recreates its pods",
    )


def kueue_refusal(
    who: Identity,
    operation: str,
    kind: str,
    operator_users: frozenset[str],
    kueue_users: frozenset[str],
) -> FieldError | None:
    """Kueue's objects in tenant namespaces (LocalQueues, Workloads) and the queues trainguard
    renders from Tenants are trainguard's and Kueue's alone: a member who could write them would
    queue past quota, point a job at another tenant's queue, or admit a Workload by hand. Cluster
    admins and the cluster's controllers may still delete them (namespace deletion, garbage
    collection); trainguard puts a deleted tenant queue back."""
    if is_operator(who, operator_users) or who.user in kueue_users:
        return None
    if operation == "DELETE" and may_clean_up(who, operator_users):
        return None
    if who.user == CONTROLLER_MANAGER or who.user.startswith(KUBE_SYSTEM_ACCOUNTS):
        return None  # the garbage collector drops owner references of deleted Tenants
    if kind in ("LocalQueue", "Workload"):
        fix = (
            "submit a TrainingJob: trainguard makes its Workload in your tenant's LocalQueue; "
            "quotas are changed in the Tenant, by the platform team"
        )
    else:
        fix = "change the Tenant's spec.quota instead: trainguard renders this object from it"
    return FieldError(
        "metadata",
        "KueueObjectProtected",
        f"{kind} objects of tenants are written by trainguard and Kueue only; {who.user} may not "
        f"{operation.lower()} one",
        fix,
    )
