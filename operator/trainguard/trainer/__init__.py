"""The trainer library: what a PyTorch training script imports to be guarded by the integrity
sidecar, as `from trainguard.trainer import IntegrityGuard` (see `guard`)."""

from trainguard.trainer.guard import IntegrityGuard, IntegrityViolation

__all__ = ["IntegrityGuard", "IntegrityViolation"]
