"""Admission through `kubectl apply` against the real API server: signed images only, pinned to
digests, tenant rules, and the pod guard. Every refusal's message is asserted."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.harness import OperatorProcess, SignedImage, TenantSpace, apiserver_counter
from e2e.cluster.localcluster import LOOPBACK
from e2e.cluster.registry import CosignKey, Registry
from e2e.cluster.waiting import free_port, wait_for
from trainguard.tls import certs

DENIED_JOB = 'admission webhook "validate-trainingjob.trainguard.dev" denied the request'
DENIED_POD = 'admission webhook "pod-guard.trainguard.dev" denied the request'


def refused(space: TenantSpace, manifest: dict[str, Any], *as_user: str) -> str:
    result = space.apply(manifest, *as_user, check=False)
    assert result.returncode != 0, f"expected a refusal, got: {result.stdout}"
    return result.stderr


@pytest.fixture
def registry(tenant_space: TenantSpace, tmp_path: Path) -> Registry:
    return Registry(tenant_space.cluster.ports.registry, tmp_path)


@pytest.fixture
def stranger(tmp_path: Path) -> CosignKey:
    return CosignKey.generate(tmp_path / "stranger", "stranger")


def repo() -> str:
    return f"admission/{uuid.uuid4().hex[:8]}"


def test_unsigned_image_is_refused_with_the_fix_an_event_and_a_metric(
    tenant_space: TenantSpace, registry: Registry, operator: OperatorProcess
) -> None:
    name = repo()
    digest = registry.push(name, "v1", "unsigned")
    before = operator.metric("trainguard_admission_denied_total", reason="Unsigned")
    err = refused(tenant_space, tenant_space.job(image=f"{registry.host}/{name}:v1"))
    assert DENIED_JOB in err
    assert f"spec.image: {registry.host}/{name}@{digest} has no cosign signature" in err
    assert (
        f"sign the image with a key tenant '{tenant_space.tenant}' trusts (trusted signers: release)" in err
    )
    assert f"cosign sign --key <that key> {registry.host}/{name}@<digest>" in err
    assert operator.metric("trainguard_admission_denied_total", reason="Unsigned") == before + 1
    events = tenant_space.cluster.kubectl(
        "get",
        "events",
        "-n",
        tenant_space.namespace,
        "--field-selector",
        "reason=AdmissionDenied",
        "-o",
        "json",
    ).stdout
    assert any("has no cosign signature" in e["message"] for e in json.loads(events)["items"])


def test_image_signed_by_a_key_the_tenant_does_not_trust_is_refused(
    tenant_space: TenantSpace, registry: Registry, stranger: CosignKey
) -> None:
    name = repo()
    digest = registry.push(name, "v1", "stranger's image")
    stranger.sign(f"{registry.host}/{name}@{digest}", "bundle")
    err = refused(tenant_space, tenant_space.job(image=f"{registry.host}/{name}:v1"))
    assert "signed by a key the tenant does not trust" in err
    assert "trusted signers: release" in err


def test_a_valid_signature_copied_onto_another_digest_is_refused(
    tenant_space: TenantSpace, registry: Registry, signed: SignedImage
) -> None:
    name = repo()
    good = registry.push(name, "good", "reviewed")
    signed.key.sign(f"{registry.host}/{name}@{good}", "classic")
    evil = registry.push(name, "evil", "sabotage")
    sig = f"{registry.host}/{name}:{good.replace(':', '-')}.sig"
    registry.crane("copy", sig, f"{registry.host}/{name}:{evil.replace(':', '-')}.sig")
    err = refused(tenant_space, tenant_space.job(image=f"{registry.host}/{name}:evil"))
    assert f"the signature is for {good}, not for this image ({evil})" in err


def test_a_tag_moved_after_signing_and_a_tag_digest_mismatch_are_refused(
    tenant_space: TenantSpace, registry: Registry, signed: SignedImage
) -> None:
    name = repo()
    reviewed = registry.push(name, "v1", "reviewed")
    signed.key.sign(f"{registry.host}/{name}@{reviewed}", "classic")
    moved = registry.push(name, "v1", "slipped in after review")
    err = refused(tenant_space, tenant_space.job(image=f"{registry.host}/{name}:v1"))
    assert f"{registry.host}/{name}@{moved} has no cosign signature" in err
    mismatch = refused(tenant_space, tenant_space.job(image=f"{registry.host}/{name}:v1@{reviewed}"))
    assert f"{registry.host}/{name}:v1 points to {moved}, not to the {reviewed} given after '@'" in mismatch
    # By digest alone, the reviewed image is still admitted and pinned.
    ok = tenant_space.apply(tenant_space.job("by-digest", image=f"{registry.host}/{name}@{reviewed}"))
    assert "created" in ok.stdout


def test_oversized_signature_manifests_and_a_registry_that_is_down_are_refused(
    tenant_space: TenantSpace, registry: Registry
) -> None:
    name = repo()
    digest = registry.push(name, "v1", "padded signature")
    # A "signature" manifest padded past the client's bound: 3 annotations of 100 kB each.
    padding = [f"--annotation=padding-{i}={'x' * 100_000}" for i in range(3)]
    sig_tag = f"{registry.host}/{name}:{digest.replace(':', '-')}.sig"
    registry.crane("mutate", f"{registry.host}/{name}@{digest}", *padding, "-t", sig_tag)
    err = refused(tenant_space, tenant_space.job(image=f"{registry.host}/{name}:v1"))
    assert "larger than 262144 bytes" in err
    assert "trainguard fails closed when the registry cannot be read" in err

    down = refused(tenant_space, tenant_space.job(image=f"{LOOPBACK}:{free_port()}/team/x:v1"))
    assert "cannot be reached" in down


def test_every_problem_of_a_job_is_listed_at_once(tenant_space: TenantSpace, registry: Registry) -> None:
    name = repo()
    registry.push(name, "v1", "unsigned")
    manifest = tenant_space.job(
        image=f"{registry.host}/{name}:v1",
        replicas=8,
        resources={"gpusPerReplica": 8},
        sharedStorage=[{"name": "secret-weights", "mountPath": "/w"}],
        metadata={"annotations": {"trainguard.dev/verified": "true"}},
    )
    err = refused(tenant_space, manifest)
    assert 'TrainingJob "j" is not allowed (4 problems):' in err
    assert "* spec.sharedStorage[0].name: 'secret-weights' is not shared storage" in err
    assert "* spec.replicas: replicas x gpusPerReplica = 8 x 8 = 64 GPUs exceeds" in err
    assert (
        "* metadata.annotations[trainguard.dev/verified]: trainguard never trusts verification claims" in err
    )
    assert "* spec.image:" in err


def test_a_namespace_the_tenant_does_not_own_and_a_non_member_are_refused(
    tenant_space: TenantSpace, signed: SignedImage
) -> None:
    cluster = tenant_space.cluster
    other = f"tj-other-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", other)
    try:
        elsewhere = TenantSpace(tenant_space.tenant, other, cluster, signed.image)
        err = refused(elsewhere, elsewhere.job())
        assert (
            f"metadata.namespace: namespace '{other}' does not belong to tenant '{tenant_space.tenant}'"
            in err
        )
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false")
    suffix = tenant_space.tenant.removeprefix("tenant-")
    member = ["--as", f"researcher-{suffix}", "--as-group", f"group-{suffix}"]
    wait_for(
        "the member binding",
        lambda: (
            cluster.kubectl(
                "auth", "can-i", "create", "tj", "-n", tenant_space.namespace, *member, check=False
            ).stdout.strip()
            == "yes"
        ),
    )
    assert "created" in tenant_space.apply(tenant_space.job("by-member"), *member).stdout


def test_an_update_that_swaps_the_image_is_refused(tenant_space: TenantSpace, registry: Registry) -> None:
    tenant_space.apply(tenant_space.job("swap"))
    pinned = tenant_space.get("trainingjob", "swap")["spec"]["image"]
    assert "@sha256:" in pinned
    name = repo()
    registry.push(name, "v1", "unsigned replacement")
    err = refused(tenant_space, tenant_space.job("swap", image=f"{registry.host}/{name}:v1"))
    assert "spec.image cannot change after the job is created" in err
    assert tenant_space.get("trainingjob", "swap")["spec"]["image"] == pinned


# --------------------------------------------------------------------------- the pod guard


@pytest.fixture
def ns_admin(tenant_space: TenantSpace) -> list[str]:
    """A user who may manage pods (including ephemeral containers and exec) in the tenant namespace
    but is not a tenant member: RBAC lets them, so only the pod guard stands in the way."""
    user = f"ns-admin-{uuid.uuid4().hex[:6]}"
    ns = ["-n", tenant_space.namespace]
    verbs = "--verb=get,list,create,update,patch,delete"
    resources = "--resource=pods,pods/ephemeralcontainers,pods/exec,pods/attach"
    tenant_space.cluster.kubectl("create", "role", "pod-admin", *ns, verbs, resources)
    tenant_space.cluster.kubectl("create", "rolebinding", user, *ns, "--role=pod-admin", f"--user={user}")
    wait_for(
        "the admin binding",
        lambda: (
            tenant_space.cluster.kubectl(
                "auth", "can-i", "create", "pods", "-n", tenant_space.namespace, f"--as={user}", check=False
            ).stdout.strip()
            == "yes"
        ),
    )
    return [f"--as={user}"]


# What a well-behaved workload declares: tenant namespaces enforce Pod Security `restricted`.
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}


def pod(name: str, image: str, **spec: Any) -> dict[str, Any]:
    """A pod that breaks no rule unless `spec` makes it (every container restricted)."""
    containers = spec.pop("containers", [{"name": "main", "image": image}])
    for kind in ("initContainers", "ephemeralContainers"):
        for container in spec.get(kind, []):
            container.setdefault("securityContext", RESTRICTED_CONTAINER)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": RESTRICTED_POD,
            "containers": [{"securityContext": RESTRICTED_CONTAINER, **c} for c in containers],
            **spec,
        },
    }


def test_plain_pods_may_not_take_gpus_or_shared_storage_or_run_unsigned_code(
    tenant_space: TenantSpace, registry: Registry, ns_admin: list[str]
) -> None:
    space, image = tenant_space, tenant_space.image
    gpus = pod(
        "gpus",
        image,
        containers=[{"name": "m", "image": image, "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
    )
    err = refused(space, gpus, *ns_admin)
    assert DENIED_POD in err
    assert "spec.containers[0].resources: only TrainingJobs may use GPUs in a tenant namespace" in err

    shared = pod("reader", image, volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "dataset"}}])
    err = refused(space, shared, *ns_admin)
    assert "claim 'dataset' is the tenant's shared storage 'dataset'" in err

    every_gpu = pod("all-gpus", image, containers=[{"name": "m", "image": image, "env": [
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}])  # fmt: skip
    err = refused(space, every_gpu, *ns_admin)
    assert "spec.containers[0].env[0]: NVIDIA_VISIBLE_DEVICES asks the NVIDIA runtime for GPUs" in err

    # Host access is refused twice over: by Pod Security `restricted` (which the operator enforces
    # on tenant namespaces, and which runs first) and by the pod guard (tests/unit/test_pod_guard.py).
    host = pod("host", image, hostPID=True, volumes=[{"name": "h", "hostPath": {"path": "/"}}])
    err = refused(space, host, *ns_admin)
    assert 'violates PodSecurity "restricted:latest": host namespaces (hostPID=true)' in err
    assert 'restricted volume type "hostPath"' in err

    name = repo()
    registry.push(name, "v1", "unsigned init")
    init = pod("init", image, initContainers=[{"name": "setup", "image": f"{registry.host}/{name}:v1"}])
    err = refused(space, init, *ns_admin)
    assert "spec.initContainers[0].image:" in err
    assert "has no cosign signature" in err

    fine = space.apply(pod("fine", image), *ns_admin)
    assert "pod/fine created" in fine.stdout


def test_kubectl_debug_cannot_add_unsigned_or_any_code_to_pods(
    tenant_space: TenantSpace, registry: Registry, ns_admin: list[str]
) -> None:
    space = tenant_space
    name = repo()
    registry.push(name, "v1", "debug tools, unsigned")
    unsigned = f"{registry.host}/{name}:v1"
    space.apply(pod("tools", space.image), *ns_admin)
    debug = space.cluster.kubectl(
        "debug",
        "pod/tools",
        "-n",
        space.namespace,
        f"--image={unsigned}",
        "--container=dbg",
        "--profile=restricted",
        *ns_admin,
        check=False,
    )
    assert debug.returncode != 0
    assert 'admission webhook "pod-guard-ephemeral.trainguard.dev" denied the request' in debug.stderr
    assert "spec.ephemeralContainers[0].image:" in debug.stderr

    space.apply(space.job("guarded"))
    job_pod = wait_for("the job's pod", lambda: space.list("pods", "trainguard.dev/job-name=guarded"))[0]
    target = f"pod/{job_pod['metadata']['name']}"
    debug = space.cluster.kubectl(
        "debug",
        target,
        "-n",
        space.namespace,
        f"--image={space.image}",
        "--profile=restricted",
        *ns_admin,
        check=False,
    )
    assert debug.returncode != 0
    assert "only trainguard may change the pods of TrainingJob 'guarded'" in debug.stderr


def pod_guard_calls(space: TenantSpace, operation: str, rejected: bool) -> int:
    """How many times the API server called the pod guard (its metrics), whoever asked."""
    return apiserver_counter(
        space.cluster,
        "apiserver_admission_webhook_admission_duration_seconds_count",
        name="pod-guard.trainguard.dev",
        operation=operation,
        rejected=str(rejected).lower(),
    )


def test_only_the_operator_deletes_a_jobs_pods(tenant_space: TenantSpace, ns_admin: list[str]) -> None:
    """exec, attach and port-forward into a job's pods: tests/cluster/test_job_isolation.py.

    The operator's own pod creates and deletes never reach the pod guard (its matchConditions,
    configurations.Trusted); a teammate's delete does, and is refused."""
    space = tenant_space
    creates, refusals = pod_guard_calls(space, "CREATE", False), pod_guard_calls(space, "DELETE", True)
    space.apply(space.job("owned"))
    job_pod = wait_for("the job's pod", lambda: space.list("pods", "trainguard.dev/job-name=owned"))[0]
    name = job_pod["metadata"]["name"]
    assert pod_guard_calls(space, "CREATE", False) == creates
    deleted = space.cluster.kubectl("delete", "pod", name, "-n", space.namespace, *ns_admin, check=False)
    assert deleted.returncode != 0
    assert "only trainguard may delete the pods of TrainingJob 'owned'" in deleted.stderr
    assert pod_guard_calls(space, "DELETE", True) == refusals + 1
    # The operator deletes the job's pods with the job, with no call either.
    deletes = pod_guard_calls(space, "DELETE", False)
    space.cluster.kubectl("delete", "trainingjob", "owned", "-n", space.namespace, "--wait=true")
    wait_for("the job's pods gone", lambda: not space.list("pods", "trainguard.dev/job-name=owned"))
    assert pod_guard_calls(space, "DELETE", False) == deletes


class LaterMutation:
    """A mutating webhook of another party, called after trainguard's (configurations are called
    in name order): it rewrites each TrainingJob create with `change(spec)`. HTTPS on loopback,
    with a CA of its own."""

    def __init__(self, folder: Path, namespace: str, change: Any, reinvocation: str) -> None:
        self.change, self.name = change, f"zz-later-mutation-{uuid.uuid4().hex[:6]}"
        ca = certs.ensure_ca(folder, "later-ca")
        leaf = certs.ensure_leaf(folder, "later", ca, common_name="later", server_names=(LOOPBACK,))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(leaf.cert), str(leaf.key))
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                spec = dict(review["request"]["object"].get("spec") or {})
                ops = [{"op": "replace", "path": "/spec", "value": outer.change(spec)}]
                body = json.dumps({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": review["request"]["uid"], "allowed": True, "patchType": "JSONPatch",
                                 "patch": base64.b64encode(json.dumps(ops).encode()).decode()},
                }).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.configuration = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [{
                "name": "later.example.com",
                "clientConfig": {"url": f"https://{LOOPBACK}:{self.server.server_port}/",
                                 "caBundle": base64.b64encode(ca.cert.read_bytes()).decode()},
                "rules": [{"apiGroups": ["trainguard.dev"], "apiVersions": ["v1alpha1"],
                           "resources": ["trainingjobs"], "operations": ["CREATE"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "reinvocationPolicy": reinvocation, "timeoutSeconds": 5,
            }],
        }  # fmt: skip

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def later_mutation(tenant_space: TenantSpace, tmp_path: Path) -> Any:
    made: list[LaterMutation] = []

    def install(change: Any, reinvocation: str = "Never") -> LaterMutation:
        later = LaterMutation(tmp_path / f"later-{len(made)}", tenant_space.namespace, change, reinvocation)
        made.append(later)
        tenant_space.cluster.kubectl("apply", "-f", "-", input=json.dumps(later.configuration))
        return later

    yield install
    for later in made:
        tenant_space.cluster.kubectl("delete", "mutatingwebhookconfiguration", later.name, check=False)
        later.stop()


def test_a_later_mutating_webhook_cannot_slip_in_another_image_or_owner(
    tenant_space: TenantSpace, registry: Registry, later_mutation: Any
) -> None:
    """A create is admitted whole by admit-trainingjob; what a mutating webhook that runs after it
    changes is checked again: trainguard's is reinvoked (IfNeeded) and takes its stamp back, and
    the validating webhook sees the final object whenever its image or owner is not as admitted."""
    space = tenant_space
    assert "created" in space.apply(space.job("before")).stdout  # admitted, one webhook call
    admitted = space.get("trainingjob", "before")
    assert admitted["metadata"]["annotations"]["trainguard.dev/admitted-image"] == admitted["spec"]["image"]
    name = repo()
    unsigned = registry.push(name, "v1", "slipped in by another webhook")
    swapped = f"{registry.host}/{name}@{unsigned}"
    # The image swapped after trainguard pinned the signed one: trainguard's reinvocation sees it,
    # leaves the job unstamped, and the validating webhook refuses it.
    later = later_mutation(lambda spec: {**spec, "image": swapped})
    err = refused(space, space.job("swapped"))
    assert DENIED_JOB in err
    assert f"{swapped} has no cosign signature" in err
    space.cluster.kubectl("delete", "mutatingwebhookconfiguration", later.name)
    # The owner rewritten every time it is called, after trainguard's own reinvocation too: the
    # final object is not as admitted, so the validating webhook runs, and refuses it.
    later_mutation(lambda spec: {**spec, "owner": {"user": "someone-else"}}, reinvocation="IfNeeded")
    err = refused(space, space.job("disowned"))
    assert DENIED_JOB in err
    assert "spec.owner records who created the job and is written by trainguard" in err
    assert [j["metadata"]["name"] for j in space.list("trainingjobs")] == ["before"]
