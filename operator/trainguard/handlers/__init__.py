"""Thin kopf handlers wiring the pure logic to the cluster. Importing this package registers the
reconcile daemon, the tenant handlers and indexes, and the integrity endpoint;
`trainguard.handlers.admission` registers the webhooks when imported (by `trainguard run` when
it serves webhooks). The modules never import each other: they share the `OperatorContext` in
kopf's memo and kopf's indexes."""

from trainguard.handlers import integrity, jobs, tenants

__all__ = ["integrity", "jobs", "tenants"]
