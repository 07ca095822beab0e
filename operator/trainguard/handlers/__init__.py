"""Thin kopf handlers wiring the pure logic to the cluster. Importing this package registers them."""

from trainguard.handlers import jobs, tenants

__all__ = ["jobs", "tenants"]
