"""The trainer library: what a PyTorch training script imports to be guarded by the integrity
sidecar, as `from trainguard.trainer import IntegrityGuard` (see `guard`);
and `read_verified`, a file of a verified shared folder checked as it is read (see `inputs`)."""

from trainguard.trainer.guard import IntegrityGuard, IntegrityViolation
from trainguard.trainer.inputs import SharedInputChanged, read_verified

__all__ = ["IntegrityGuard", "IntegrityViolation", "SharedInputChanged", "read_verified"]
