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

from e2e.cluster.harness import (
    RELEASE_NAMESPACE,
    OperatorProcess,
    SignedImage,
    TenantSpace,
    install_chart,
    make_tenant,
    service_account_kubeconfig,
    signed_image,
    wait_for_terminating_namespaces,
)
from e2e.cluster.localcluster import Cluster, ClusterError, LocalCluster, bin_dir
from e2e.cluster.registry import AuthRegistry
from e2e.cluster.waiting import free_port

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
        elif rel.startswith("tests/tools/"):
            item.add_marker(pytest.mark.tools)


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


# --------------------------------------------------------------------------- trainguard on the cluster


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The canonical CRDs from crds/, installed and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/trainingjobs.trainguard.dev",
        "crd/tenants.trainguard.dev",
    )
    return cluster


@pytest.fixture(scope="session")
def helm_release(crds: Cluster) -> Cluster:
    """The Helm chart installed; the operator then runs with its ServiceAccount and RBAC."""
    install_chart(crds)
    return crds


AUTH_REGISTRY_USERS = {"team-a-puller": "team-a-" + "password"}


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """A second registry on loopback (the distribution registry) that wants credentials (htpasswd,
    `AUTH_REGISTRY_USERS`): private images, read with tenants' pull Secrets."""
    registry = AuthRegistry(free_port(), tmp_path_factory.mktemp("auth-registry"), users=AUTH_REGISTRY_USERS)
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def operator(
    helm_release: Cluster, auth_registry: AuthRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The session's operator, with the chart's RBAC, watching test namespaces and the examples'."""
    folder = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(helm_release, folder, RELEASE_NAMESPACE, "trainguard")
    op = OperatorProcess(
        folder / "operator.log",
        ["tj-*", "team-*"],
        kubeconfig,
        registry=helm_release.registry,
        extra_args=("--plain-http-registry", auth_registry.host),
    )
    op.start()
    yield op
    # The webhooks fail closed once the operator stops: let the namespaces the tests deleted go
    # first, or they would wait for the next operator (their jobs' and pods' deletes need it).
    wait_for_terminating_namespaces(helm_release, timeout=120)
    op.stop()


@pytest.fixture(scope="session")
def signed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> SignedImage:
    """An image in the cluster's registry, signed with cosign by a key the test tenants trust."""
    return signed_image(cluster, tmp_path_factory.mktemp("signed"))


@pytest.fixture
def tenant_space(crds: Cluster, operator: OperatorProcess, signed: SignedImage) -> Iterator[TenantSpace]:
    """A fresh namespace owned by a fresh Tenant (32 nominal GPUs, one shared dataset, trusting
    the `signed` image's key), with the operator and its admission webhooks running."""
    space = make_tenant(crds, signed=signed)
    yield space
    crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
    crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)
