"""The examples' manifests and the builders' settings, shared by the tests that build pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainguard.workload import builders as b

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = b.WorkloadSettings(sidecar_image="registry.example.com/trainguard/integrity-sidecar:0.1.0")


def load(path: str, **meta: Any) -> dict[str, Any]:
    """A manifest of the repository (e.g. examples/tenant-team-a.yaml), its metadata updated."""
    obj: dict[str, Any] = yaml.safe_load((ROOT / path).read_text())
    obj["metadata"].update(meta)
    return obj
