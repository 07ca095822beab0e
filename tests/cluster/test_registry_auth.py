"""Private registries through `kubectl apply` against the real API server: a tenant's image pull
Secret lets the operator verify its private image and its pods pull with it; missing, wrong or
malformed credentials are refused naming the Secret to fix; one tenant's credentials never admit
another tenant's job."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster.harness import OperatorProcess, SignedImage, TenantSpace, make_tenant
from e2e.cluster.localcluster import Cluster
from e2e.cluster.registry import AuthRegistry, CosignKey, docker_config_json
from e2e.cluster.waiting import wait_for

DENIED_JOB = 'admission webhook "validate-trainingjob.trainguard.dev" denied the request'
USER = "team-a-puller"  # conftest's AUTH_REGISTRY_USERS
PASSWORD = "team-a-" + "password"


@pytest.fixture
def private_image(auth_registry: AuthRegistry, tmp_path: Path) -> SignedImage:
    """An image only `USER` may read, signed with a fresh key."""
    repository = f"private/{uuid.uuid4().hex[:8]}"
    digest = auth_registry.push(repository, "v1", f"private {uuid.uuid4().hex}")
    key = CosignKey.generate(tmp_path / "keys", "release")
    key.sign(f"{auth_registry.host}/{repository}@{digest}", "classic", auth_registry.docker_config)
    return SignedImage(f"{auth_registry.host}/{repository}:v1", digest, key.public.read_text(), key)


@pytest.fixture
def spaces(
    crds: Cluster, operator: OperatorProcess, private_image: SignedImage
) -> Iterator[list[TenantSpace]]:
    """Two tenants trusting the same signer: only their registry credentials differ."""
    made = [make_tenant(crds, signed=private_image) for _ in range(2)]
    yield made
    for space in made:
        crds.kubectl("delete", "namespace", space.namespace, "--wait=false", check=False)
        crds.kubectl("delete", "tenant", space.tenant, "--wait=false", check=False)


def pull_secret(space: TenantSpace, registry: str, name: str, password: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": docker_config_json({registry: (USER, password)})},
    }
    space.apply(body)


def name_pull_secret(space: TenantSpace, name: str) -> None:
    patch = json.dumps({"spec": {"imagePullSecret": {"name": name}}})
    space.cluster.kubectl("patch", "tenant", space.tenant, "--type=merge", "-p", patch)


def refusal(space: TenantSpace, image: str, name: str) -> str:
    result = space.apply(space.job(name, image=image), check=False)
    assert result.returncode != 0, f"expected a refusal, got: {result.stdout}"
    assert DENIED_JOB in result.stderr
    assert PASSWORD not in result.stderr
    return result.stderr


def test_a_tenants_pull_secret_verifies_its_private_image_and_no_other_tenant_can_use_it(
    spaces: list[TenantSpace], auth_registry: AuthRegistry, private_image: SignedImage
) -> None:
    a, b = spaces
    registry = auth_registry.host
    assert auth_registry.users == {USER: PASSWORD}

    # A names its pull Secret, which A's namespace holds: admitted, pinned, and its pods pull with it.
    pull_secret(a, registry, "regcred", PASSWORD)
    name_pull_secret(a, "regcred")
    wait_for(
        "tenant A's job to be admitted with its pull Secret",
        lambda: a.apply(a.job("private"), check=False).returncode == 0,
        timeout=30,
    )
    pinned = a.get("trainingjob", "private")["spec"]["image"]
    assert pinned == f"{private_image.image}@{private_image.digest}"
    pods = wait_for("tenant A's pod", lambda: a.list("pods", "trainguard.dev/job-name=private"), timeout=60)
    assert pods[0]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]

    # Right after: B trusts the same signer but has no credentials for the registry. Neither the
    # tag, nor the pinned reference A's job was admitted with, nor the digest alone gets through.
    by_digest = f"{private_image.image.rsplit(':', 1)[0]}@{private_image.digest}"
    for image in (private_image.image, pinned, by_digest):
        err = refusal(b, image, "borrowed")
        assert f"registry {registry} refused to let" in err, err
        assert "the tenant names no pull Secret (spec.imagePullSecret)" in err
        assert f"ask the platform team to name an image pull Secret in tenant '{b.tenant}'" in err

    # B's own Secret, with a wrong password: refused, naming the Secret and how to update it.
    pull_secret(b, registry, "regcred", "not-the-password")
    name_pull_secret(b, "regcred")
    err = wait_for(
        "the denial to name B's Secret",
        lambda: (lambda e: e if "Secret" in e and "refused the credentials" in e else None)(
            refusal(b, private_image.image, "wrong")
        ),
        timeout=30,
    )
    assert f"registry {registry} refused the credentials in Secret {b.namespace}/regcred (401)" in err, err
    assert "update the .dockerconfigjson of Secret regcred with credentials that can pull" in err
    assert f"kubectl create secret docker-registry regcred --docker-server={registry}" in err
    assert "not-the-password" not in err

    # A Secret the tenant names but the namespace lacks.
    name_pull_secret(b, "absent")
    err = wait_for(
        "the denial to name the missing Secret",
        lambda: (lambda e: e if "does not exist" in e else None)(refusal(b, private_image.image, "missing")),
        timeout=30,
    )
    assert f"Secret {b.namespace}/absent does not exist" in err
    assert "create the image pull Secret absent in this namespace" in err

    # A Secret of the wrong type.
    b.cluster.kubectl("create", "secret", "generic", "opaque", "-n", b.namespace, "--from-literal=x=y")
    name_pull_secret(b, "opaque")
    err = wait_for(
        "the denial to name the malformed Secret",
        lambda: (lambda e: e if "Opaque" in e else None)(refusal(b, private_image.image, "malformed")),
        timeout=30,
    )
    assert f"Secret {b.namespace}/opaque is of type 'Opaque', not kubernetes.io/dockerconfigjson" in err

    # No credentials in any Event either.
    events = b.cluster.kubectl("get", "events", "-n", b.namespace, "-o", "json").stdout
    assert PASSWORD not in events
    assert "not-the-password" not in events
