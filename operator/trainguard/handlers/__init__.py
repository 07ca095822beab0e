"""Thin kopf handlers wiring the pure logic to the cluster. Importing this package registers the
reconcilers; `trainguard.handlers.admission` registers the webhooks when imported (by `trainguard
run` when it serves webhooks)."""

from trainguard.handlers import integrity, jobs, tenants

__all__ = ["integrity", "jobs", "tenants"]
