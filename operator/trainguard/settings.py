"""The operator's one settings object: built once at start (from `TRAINGUARD_*` environment
variables, overridden by `trainguard run` flags) and passed down. Nothing else reads the
environment."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainguard.leadership import Timing
from trainguard.workload.builders import WorkloadSettings


def _default_flavors() -> dict[str, dict[str, str]]:
    return {"gpu": {}}


class WebhookConfigurations(StrEnum):
    """Who writes the Validating/MutatingWebhookConfigurations."""

    SELF = "self"  # the operator, at start, with a CA it makes (a local cluster, the tests)
    CHART = "chart"  # the Helm chart; the operator only serves, with the mounted certificate


class Role(StrEnum):
    """What this process does. Admission is stateless and runs in every replica; reconciling
    (daemons, timers, the integrity endpoint) runs in one process."""

    ALL = "all"  # reconcile and, with a webhook port, serve admission (one process; today's mode)
    ADMISSION = "admission"  # serve admission only, from kopf's indexes; never writes an object


# In chart mode the serving certificate is a kubernetes.io/tls Secret mounted as a folder.
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
# Threads for blocking I/O (API calls, registry reads): the default executor's size, and so the
# connections each HTTP pool keeps per host (the API client's, the registry client's), so that a
# burst reuses kept-alive TLS connections instead of opening and dropping one per call.
IO_THREADS = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINGUARD_", frozen=True, extra="forbid")

    # Admission webhooks.
    webhook_port: int = Field(default=9443, ge=0, le=65535, description="0: this instance serves no webhooks")
    webhook_listen: str = "127.0.0.1"
    webhook_host: str = Field(default="127.0.0.1", description="the address the API server calls")
    webhook_service: str = Field(default="", description="namespace/name of the webhooks' Service")
    webhook_cert_dir: Path | None = None
    webhook_config_name: str = "trainguard"
    webhooks: WebhookConfigurations = WebhookConfigurations.SELF
    role: Role = Role.ALL
    operator_users: frozenset[str] = Field(
        default=frozenset(), description="this operator's identities in admission requests"
    )

    # Image verification.
    plain_http_registries: frozenset[str] = frozenset()
    verify_timeout_seconds: float = Field(
        default=4.0, gt=0, description="a second under the webhooks' timeout (5 s by default)"
    )
    verify_cache_seconds: float = Field(default=300.0, ge=0)
    # A docker config JSON (`auths`) the operator reads registries with when a tenant's pull Secret
    # has no entry for them (e.g. a platform mirror every tenant may use); read again when it changes.
    registry_auth_file: Path | None = None

    # Integrity reports.
    integrity_port: int = Field(default=8082, ge=0, le=65535, description="0: no report endpoint")
    integrity_listen: str = "127.0.0.1"
    integrity_url: str = Field(
        default=WorkloadSettings.report_url, description="where sidecars post reports (the endpoint's URL)"
    )
    sidecar_image: str = WorkloadSettings.sidecar_image

    # Where the operator runs (its own objects, such as jobs' integrity keys, live there).
    operator_namespace: str = WorkloadSettings.operator_namespace

    # Kueue: the GPU flavors (ResourceFlavors) trainguard renders, name -> node labels of the
    # nodes with that GPU product ({} selects every node); tenants' quotas name one of them.
    gpu_flavors: dict[str, dict[str, str]] = Field(default_factory=_default_flavors)
    # Kueue's own identities in admission requests: they may change Workloads and LocalQueues in
    # tenant namespaces (admission, status, finalizers), as trainguard itself may.
    kueue_users: frozenset[str] = frozenset({"system:serviceaccount:kueue-system:kueue-controller-manager"})

    # TrainingJob annotations copied onto its pods, by prefix (the local cluster: kwok's hooks).
    pod_annotation_prefixes: frozenset[str] = frozenset()

    # One reconciler at a time among replicas: a standby waits for this Lease (in the operator's
    # namespace) before it starts reconciling (`trainguard.cli.leader`). Off: this process
    # reconciles from the start (one replica, the local cluster).
    leader_election: bool = False
    lease_name: str = "trainguard-reconciler"
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    lease_renew_deadline_seconds: float = Field(default=10.0, gt=0)
    lease_retry_seconds: float = Field(default=2.0, gt=0)
    # This replica's pod (the downward API), labelled while it leads so that the integrity
    # Service routes sidecars' reports to the leader only; empty outside a pod.
    pod_name: str = ""

    # Tenants and reconciliation.
    researcher_role: str = "trainguard-researcher"
    dns_namespace: str = WorkloadSettings.dns_namespace
    retry_backoff_seconds: float = Field(default=2.0, gt=0, description="first retry after a failed pass")
    retry_backoff_max_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.webhooks is WebhookConfigurations.CHART and self.webhook_cert_dir is None:
            raise ValueError(
                f"webhooks=chart needs webhook_cert_dir: the folder of the mounted Secret "
                f"({TLS_CERT_FILE}, {TLS_KEY_FILE})"
            )
        if self.role is Role.ADMISSION and not self.webhook_port:
            raise ValueError("role=admission needs a webhook_port: it serves nothing else")
        if self.leader_election:
            if self.role is not Role.ALL:
                raise ValueError(
                    "leader_election is for the reconciler (role=all); admission needs no leader"
                )
            self.lease_timing()  # raises on inconsistent durations
        return self

    def lease_timing(self) -> Timing:
        return Timing(
            duration=self.lease_duration_seconds,
            renew_deadline=self.lease_renew_deadline_seconds,
            retry=self.lease_retry_seconds,
        )

    def workload(self) -> WorkloadSettings:
        """What the pure builders need of these settings."""
        return WorkloadSettings(
            sidecar_image=self.sidecar_image,
            report_url=self.integrity_url,
            dns_namespace=self.dns_namespace,
            operator_namespace=self.operator_namespace,
            operator_port=self.integrity_port or WorkloadSettings.operator_port,
            gpu_flavors=self.gpu_flavors,
            pod_annotation_prefixes=self.pod_annotation_prefixes,
        )

    def retry_delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (0-based) of a failed pass: doubling, capped."""
        return float(min(self.retry_backoff_seconds * 2 ** min(retry, 16), self.retry_backoff_max_seconds))
