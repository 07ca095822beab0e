"""Thin kopf handlers wiring the pure logic to the cluster. Importing this package registers the
reconcile daemon, the tenant handlers and indexes, and the integrity endpoint;
`trainguard.handlers.admission` registers the webhooks when imported (by `trainguard run` when
it serves webhooks). The modules never import each other: they share the `OperatorContext` in
kopf's memo and kopf's indexes."""

from typing import Any

from trainguard.handlers import integrity, jobs, tenants

__all__ = ["integrity", "jobs", "serve_admission_only", "tenants"]

# What an admission-only process keeps of the registered start-up work: the API login, kopf's
# settings, and the shared context. Everything else (releasing jobs, rendering flavors, the
# integrity endpoint) writes to the cluster and belongs to the one reconciling process.
_ADMISSION_ACTIVITIES = (jobs.login, jobs.configure, tenants.build_context)
# The indexes the webhooks answer from. The others (a job's pods and Workload, the tenants'
# queues and jobs' states) serve the reconciler: an admission process that kept them would parse
# every pod and Workload event of the cluster's jobs for nothing.
_ADMISSION_INDEXES = (tenants.tenants_by_name, tenants.tenant_namespaces, jobs.jobs_by_namespace)


def serve_admission_only(registry: Any) -> None:
    """Drop every handler that reconciles from kopf's `registry`, keeping the indexes the
    webhooks answer from and the activities above: this process then only watches and
    serves admission, and any number of them can run beside the one reconciling operator.

    With no daemon and no change handler left, kopf requires no finalizer of these objects; the
    admission handlers' start-up points kopf at a finalizer name nobody sets, so that this process
    never removes the reconciler's (see `handlers.admission.start_admission`)."""
    registry._watching._handlers.clear()
    registry._spawning._handlers.clear()
    registry._changing._handlers.clear()
    registry._indexing._handlers[:] = [
        handler for handler in registry._indexing._handlers if handler.fn in _ADMISSION_INDEXES
    ]
    registry._activities._handlers[:] = [
        handler for handler in registry._activities._handlers if handler.fn in _ADMISSION_ACTIVITIES
    ]
