"""Shared pytest wiring: the session's local cluster, a fresh namespace per test, markers.

Tests under `tests/cluster/` and `e2e/` are marked `cluster` automatically. The `cluster`
fixture starts the local control plane when it is not running; if it cannot, the test run
fails loudly (it never skips). Only `gpu` tests may skip, when no CUDA device is present.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.cluster.localcluster import Cluster, ClusterError, LocalCluster, bin_dir

ROOT = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # Point every client (kubectl, kopf, the kubernetes library, which reads KUBECONFIG at import)
    # at the local cluster, never at a real one a developer may have configured.
    os.environ["KUBECONFIG"] = str(LocalCluster().kubeconfig)
    os.environ["PATH"] = f"{bin_dir()}{os.pathsep}{os.environ['PATH']}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        if rel.startswith(("tests/cluster/", "e2e/")):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    try:
        handle = LocalCluster().up()
    except ClusterError as exc:
        pytest.fail(f"the local cluster did not start, so cluster tests cannot run:\n{exc}", pytrace=False)
    assert os.environ["KUBECONFIG"] == str(handle.kubeconfig)
    return handle


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
