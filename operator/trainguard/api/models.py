"""Pydantic models of the TrainingJob and Tenant APIs (group trainguard.dev, version v1alpha1).

The CRDs in `crds/` are canonical for what the API server accepts; these models mirror them so
the operator parses an object once at the edge and hands typed values on. Unknown fields are
forbidden, field names are camelCase aliases of the CRD's.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.alias_generators import to_camel

from trainguard.api.conditions import Condition
from trainguard.api.constants import API_VERSION

DNSLabel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
Quantity = Annotated[
    str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$", max_length=32)
]


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, use_enum_values=False
    )

    def to_api(self) -> dict[str, object]:
        """The object as the API server stores it (camelCase, no unset optional fields)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(BaseModel):
    """The few metadata fields the operator reads; the rest is ignored on purpose."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True)
    name: str
    namespace: str | None = None
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None


# --------------------------------------------------------------------------- Tenant


class Members(Model):
    users: list[str] = Field(default_factory=list, max_length=256)
    groups: list[str] = Field(default_factory=list, max_length=64)

    def includes(self, user: str, groups: list[str]) -> bool:
        return user in self.users or any(g in self.groups for g in groups)


class TenantQuota(Model):
    nominal_gpus: int = Field(alias="nominalGPUs", ge=0, le=100_000)
    borrowing_limit_gpus: int = Field(default=0, alias="borrowingLimitGPUs", ge=0, le=100_000)
    # How much of its nominal quota the cohort may borrow while the tenant does not use it (None:
    # all of it). What stays is kept for the tenant's own bursts, without preemption.
    lending_limit_gpus: int | None = Field(default=None, alias="lendingLimitGPUs", ge=0, le=100_000)
    cohort: DNSLabel | None = None
    flavor: DNSLabel = "gpu"  # the Kueue ResourceFlavor (GPU product) the quota is for

    @property
    def max_gpus(self) -> int:
        """The most GPUs the tenant can ever hold: its nominal quota plus what it may borrow."""
        return self.nominal_gpus + self.borrowing_limit_gpus


class TrustedSigner(Model):
    name: DNSLabel
    public_key: Annotated[str, StringConstraints(max_length=4096)]


class StorageKind(enum.StrEnum):
    DATASET = "Dataset"
    BASE_CHECKPOINT = "BaseCheckpoint"
    SHARED_CODE = "SharedCode"


class SharedStorage(Model):
    """A volume the tenant may read: an existing PersistentVolumeClaim in the job's namespace."""

    name: DNSLabel
    kind: StorageKind
    claim_name: DNSLabel


class PullSecretReference(Model):
    """An image pull Secret (type kubernetes.io/dockerconfigjson) that each of the tenant's
    namespaces holds under this name: trainguard reads the registry with it to verify the tenant's
    images, and the tenant's pods pull with it (`imagePullSecrets`)."""

    name: Annotated[
        str,
        StringConstraints(
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253
        ),
    ]


class TenantSpec(Model):
    namespaces: list[DNSLabel] = Field(min_length=1, max_length=64)
    members: Members = Field(default_factory=Members)
    admins: Members = Field(default_factory=Members)
    quota: TenantQuota
    trusted_signers: list[TrustedSigner] = Field(default_factory=list, max_length=16)
    shared_storage: list[SharedStorage] = Field(default_factory=list, max_length=64)
    image_pull_secret: PullSecretReference | None = None  # None: anonymous (or the operator's own)

    def storage(self, name: str) -> SharedStorage | None:
        return next((s for s in self.shared_storage if s.name == name), None)


class Tenant(Model):
    api_version: str = API_VERSION
    kind: str = "Tenant"
    metadata: ObjectMeta
    spec: TenantSpec


# --------------------------------------------------------------------------- TrainingJob


# trainguard sets these itself: the integrity socket (a job that redirected it would talk to a
# sidecar of its own making) and which GPUs a container sees (the NVIDIA runtime reads NVIDIA_*).
RESERVED_ENV_PREFIXES = ("TRAINGUARD_", "NVIDIA_")


class EnvVar(Model):
    name: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=128)]
    value: Annotated[str, StringConstraints(max_length=4096)] = ""

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(
                f"{name}: env names starting with {' or '.join(RESERVED_ENV_PREFIXES)} are reserved: "
                "trainguard sets them; rename the variable"
            )
        return name


class Resources(Model):
    gpus_per_replica: int = Field(alias="gpusPerReplica", ge=0, le=16)
    cpu: Quantity = "4"
    memory: Quantity = "16Gi"


class InputVerification(enum.StrEnum):
    OFF = "Off"
    # The folder holds `.trainguard/manifest.json`, signed by a signer the tenant trusts: an init
    # container checks every file against it before the trainer starts (SharedInputChanged if not).
    SIGNED_MANIFEST = "SignedManifest"


class StorageMount(Model):
    """Mounts one of the tenant's shared storage entries. Always read-only: the API cannot ask for write."""

    name: DNSLabel
    mount_path: Annotated[str, StringConstraints(pattern=r"^/[^:]*$", max_length=256)]
    verification: InputVerification = InputVerification.OFF


class OutputVolume(Model):
    size: Quantity = "10Gi"
    storage_class_name: DNSLabel | None = None
    mount_path: Annotated[str, StringConstraints(pattern=r"^/[^:]*$", max_length=256)] = "/output"


class FailurePolicy(Model):
    max_restarts: int = Field(default=3, ge=0, le=100)
    backoff_seconds: int = Field(default=10, ge=0, le=3600)

    def backoff_for(self, restarts: int) -> float:
        """Seconds to wait before attempt `restarts` (doubling, capped at one hour)."""
        if restarts <= 0:
            return 0.0
        return float(min(self.backoff_seconds * 2 ** (restarts - 1), 3600))


class IntegrityMode(enum.StrEnum):
    OFF = "Off"
    AUDIT = "Audit"
    ENFORCE = "Enforce"


class Integrity(Model):
    mode: IntegrityMode = IntegrityMode.AUDIT
    every_steps: int = Field(default=1, ge=1, le=100_000)
    # Silence is an alarm: a running replica whose sidecar sends no signed report for this long
    # is an IntegrityViolation (ReportsStopped). The default suits steps of several minutes.
    report_gap_seconds: int = Field(default=1800, ge=10, le=7 * 86_400)


class Owner(Model):
    """Who created the job: written by the admission webhook from the request, never from the body."""

    user: Annotated[str, StringConstraints(max_length=256)]
    groups: list[str] = Field(default_factory=list, max_length=64)


class Debugging(enum.StrEnum):
    ALLOWED = "Allowed"
    DISALLOWED = "Disallowed"


class TrainingJobSpec(Model):
    tenant: DNSLabel
    image: Annotated[str, StringConstraints(max_length=512)]
    command: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=64
    )
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=256
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    replicas: int = Field(default=1, ge=1, le=1024)
    resources: Resources
    shared_storage: list[StorageMount] = Field(default_factory=list, max_length=16)
    output: OutputVolume = Field(default_factory=OutputVolume)
    priority: int = Field(default=0, ge=0, le=1000)
    max_run_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    integrity: Integrity = Field(default_factory=Integrity)
    owner: Owner | None = None  # None only for jobs admitted before owners were recorded
    collaborators: Members = Field(default_factory=Members)
    debugging: Debugging | None = None  # None: decided by the integrity mode

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.resources.gpus_per_replica

    @property
    def debugging_allowed(self) -> bool:
        """Whether anyone may exec, attach or port-forward into the trainer: off by default for
        Enforce jobs, whose weights must not be touched by hand."""
        if self.debugging is not None:
            return self.debugging == Debugging.ALLOWED
        return self.integrity.mode != IntegrityMode.ENFORCE


class ReplicaCounts(Model):
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0


class PinnedImage(Model):
    reference: str
    digest: str
    signer: str | None = None


class QueueStatus(Model):
    position: int | None = None  # 1 = next in the tenant's queue; None when not waiting
    reason: str | None = None
    workload: str | None = None  # the Kueue Workload that queues the job
    cluster_queue: str | None = None
    flavor: str | None = None  # the GPU flavor Kueue admitted the job to
    last_eviction: str | None = None  # when Kueue last evicted it (each eviction counted once)


class IntegrityStatus(Model):
    last_verified_step: int | None = None
    last_violation: str | None = None
    # Replica index -> when the operator last received a signed report from its sidecar.
    last_reports: dict[str, str] | None = None


class IntegrityVerdict(Model):
    """What the operator concluded from one job's signed integrity reports about one step."""

    verified: bool
    step: int | None
    replica: int | None = None
    kind: str = "Verified"  # Verified, or the kind of violation (CamelCase)
    message: str = ""


class TrainingJobStatus(Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: ReplicaCounts = Field(default_factory=ReplicaCounts)
    restarts: int = 0
    preemptions: int = 0  # times Kueue took the job's quota back (each starts a new attempt)
    created_attempt: int | None = None
    last_restart_time: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    total_gpus: int | None = Field(default=None, alias="totalGPUs")
    image: PinnedImage | None = None
    queue: QueueStatus | None = None
    integrity: IntegrityStatus | None = None


class TrainingJob(Model):
    api_version: str = API_VERSION
    kind: str = "TrainingJob"
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        assert self.metadata.namespace, "a TrainingJob is namespaced"
        return self.metadata.namespace

    @property
    def attempt(self) -> int:
        """The current attempt: a new one after each restart and each preemption."""
        return self.status.restarts + self.status.preemptions
