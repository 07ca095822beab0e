"""`make demo`: trainguard on the local cluster, told as the story of the people who meet it.

The platform team installs trainguard and creates two tenants; team A's release pipeline signs
an image; researchers run jobs, are refused with reasons, wait for quota; a teammate, another
team and a saboteur process try to interfere. Each step names who acts, shows the commands and
ends with a one-line outcome ("refused: ...", "queued: ...", "caught: ..."). An outcome that is
not what the story says stops the demo with a non-zero exit naming the step: e2e/test_demo.py
runs it.

    python -m e2e.demo                                  # the story (`make demo` starts the cluster)
    python -m e2e.demo trainer --socket S --steps N     # the CPU training script the story runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.harness import (
    OPERATOR_USER,
    RELEASE_NAMESPACE,
    ROOT,
    OperatorProcess,
    TenantSpace,
    install_chart,
    publish_example_image,
    service_account_kubeconfig,
    wait_for_terminating_namespaces,
)
from e2e.cluster.integrity import SidecarProcess
from e2e.cluster.integrity_keys import job_pods, key_url, pod_token
from e2e.cluster.localcluster import Cluster, ClusterError, LocalCluster, bin_dir
from e2e.cluster.registry import Registry
from e2e.cluster.waiting import die_with_parent, wait_for

RESEARCHER = ["--as=researcher-a", "--as-group=team-a"]
TEAMMATE = ["--as=teammate-a", "--as-group=team-a"]
OUTSIDER = ["--as=researcher-b", "--as-group=team-b"]
EXAMPLES = ROOT / "examples"
# The registry the examples name: the default local cluster's. Another port base rewrites it.
EXAMPLE_REGISTRY = "127.0.0.1:26386"
TRAINED_STEPS = 4  # the CPU trainer's steps before the saboteur strikes
# The saboteur: another process that can write the trainer's memory flips one bit of a weight.
FLIP_A_BIT = "import mmap, os, sys; m = mmap.mmap(os.open(sys.argv[1], os.O_RDWR), 0); m[8] ^= 0x80"


# Bold titles and outcomes on a terminal; plain text in a log or a test's capture.
BOLD, PLAIN = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


class StoryBroke(AssertionError):
    """A step's outcome is not the one the story tells."""


class Story:
    """Numbered steps, the commands they run (printed as a newcomer would type them) and their
    outcomes, each checked."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.number = 0
        self.title = ""

    def step(self, title: str) -> None:
        self.number += 1
        self.title = title
        print(f"\n{BOLD}== {self.number}. {title}{PLAIN}", flush=True)

    def show(self, *args: str, stdin: str | None = None, typed: str = "") -> subprocess.CompletedProcess[str]:
        """Run kubectl and print the command (or `typed`, what a person would type for it) and its output."""
        print(f"$ {typed or _command('kubectl', *args)}", flush=True)
        result = self.cluster.kubectl(*args, check=False, input=stdin)
        text = (result.stdout + result.stderr).rstrip()
        if text:
            print(text, flush=True)
        return result

    def outcome(self, line: str) -> None:
        print(f"{BOLD}-> {line}{PLAIN}", flush=True)

    def expect(self, ok: object, what: str) -> None:
        if not ok:
            raise StoryBroke(what)

    def refused(self, result: subprocess.CompletedProcess[str], reason: str, outcome: str) -> None:
        """The command failed, saying `reason`: print `refused: <outcome>`."""
        said = result.stdout + result.stderr
        self.expect(result.returncode != 0, f"expected a refusal ({reason!r}), but the command succeeded")
        self.expect(reason in " ".join(said.split()), f"the refusal does not say {reason!r}")
        self.outcome(f"refused: {outcome}")

    def wait(self, what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
        return wait_for(what, probe, timeout=timeout)


def _command(*argv: str) -> str:
    return " ".join(shlex.quote(a.replace(f"{ROOT}/", "")) for a in argv)


def job_conditions(cluster: Cluster, name: str, namespace: str = "team-a") -> dict[str, dict[str, str]]:
    out = cluster.kubectl("get", "tj", name, "-n", namespace, "-o", "json", check=False).stdout
    if not out:
        return {}
    conditions = json.loads(out).get("status", {}).get("conditions", [])
    return {c["type"]: c for c in conditions}


def condition_is(cluster: Cluster, name: str, kind: str, status: str = "True") -> dict[str, str] | None:
    found = job_conditions(cluster, name).get(kind)
    return found if found and found["status"] == status else None


def may_create_jobs(cluster: Cluster, namespace: str, who: list[str]) -> bool:
    answer = cluster.kubectl("auth", "can-i", "create", "tj", "-n", namespace, *who, check=False)
    return answer.stdout.strip() == "yes"


def verified_step(cluster: Cluster, name: str) -> int | None:
    out = cluster.kubectl("get", "tj", name, "-n", "team-a", "-o", "json", check=False).stdout
    integrity = json.loads(out).get("status", {}).get("integrity") or {} if out else {}
    step: int | None = integrity.get("lastVerifiedStep")
    return step


def waiting(cluster: Cluster, name: str) -> dict[str, str] | None:
    """The job's Queued condition while it waits for quota."""
    found = job_conditions(cluster, name).get("Queued")
    return found if found and found["reason"].startswith("Waiting") else None


def example_job(cluster: Cluster, name: str, **spec: Any) -> dict[str, Any]:
    """examples/trainingjob-llm.yaml, renamed, its image in this cluster's registry, `spec` changed."""
    job: dict[str, Any] = yaml.safe_load((EXAMPLES / "trainingjob-llm.yaml").read_text())
    job["metadata"]["name"] = name
    job["spec"]["image"] = job["spec"]["image"].replace(EXAMPLE_REGISTRY, cluster.registry)
    job["spec"].update(spec)
    return job


def main() -> int:
    try:
        cluster = LocalCluster().up()
    except ClusterError as exc:
        print(f"DEMO FAILED before step 1: the local cluster did not start: {exc}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    story = Story(cluster)
    workdir = Path(tempfile.mkdtemp(prefix="trainguard-demo-"))
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        try:
            tell(story, workdir, cleanup)
        except Exception as exc:
            if not isinstance(exc, AssertionError):  # not an outcome the story checks: show where
                traceback.print_exc()
            detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else ""
            print(
                f"\n{BOLD}DEMO FAILED at step {story.number} ({story.title}):{PLAIN} {exc}\n{detail}"
                f"Operator log: {workdir / 'operator.log'}",
                file=sys.stderr,
                flush=True,
            )
            return 1
    print(f"\nThe story took {time.monotonic() - started:.0f} s. Operator log: {workdir / 'operator.log'}")
    try_next(cluster)
    return 0


def tell(story: Story, workdir: Path, cleanup: contextlib.ExitStack) -> None:
    cluster = story.cluster
    story.step("Platform team: the cluster, simulated GPU nodes (kwok) where kube-scheduler places pods")
    story.show(
        "get",
        "nodes",
        "-o",
        "custom-columns=NAME:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu,"
        'READY:.status.conditions[?(@.type=="Ready")].status',
    )
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    gpus = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", "0")) for n in nodes)
    story.expect(nodes and gpus, "the cluster has no GPU nodes")
    story.outcome(f"ready: {len(nodes)} nodes, {gpus} GPUs")

    story.step(
        "Platform team: helm install trainguard (CRDs, webhooks, RBAC); the operator runs as its account"
    )
    story.show("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    print(
        f"$ helm upgrade --install trainguard charts/trainguard -n {RELEASE_NAMESPACE} --create-namespace ..."
    )
    install_chart(cluster)
    story.show(
        "get",
        "serviceaccount,clusterrole",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=trainguard",
    )
    kubeconfig = service_account_kubeconfig(cluster, workdir, RELEASE_NAMESPACE, "trainguard")
    operator = OperatorProcess(workdir / "operator.log", ["team-*"], kubeconfig, registry=cluster.registry)
    operator.start()
    cleanup.callback(operator.stop)
    story.outcome(f"installed: the operator runs as {OPERATOR_USER}, its admission webhooks serve")

    story.step(
        "Platform team: two tenants, team A (16 GPUs, may borrow 8 in cohort research), B (8, lends none)"
    )
    # Namespaces left by an earlier run are deleted now that an operator serves the webhooks.
    for team in ("team-a", "team-b"):
        cluster.kubectl("delete", "namespace", team, "--ignore-not-found", "--wait=false")
    wait_for_terminating_namespaces(cluster, timeout=300, only=("team-a", "team-b"))
    for team in ("team-a", "team-b"):
        story.show("create", "namespace", team)
    story.show("apply", "-f", str(EXAMPLES / "tenant-team-a.yaml"))
    story.show("apply", "-f", str(EXAMPLES / "shared-storage-team-a.yaml"))
    story.show("apply", "-f", str(EXAMPLES / "tenant-team-b.yaml"))
    story.wait("team A's members to be bound", lambda: may_create_jobs(cluster, "team-a", RESEARCHER))
    story.wait("team B's members to be bound", lambda: may_create_jobs(cluster, "team-b", OUTSIDER))
    story.wait(
        "the tenants' ClusterQueues",
        lambda: (
            cluster.kubectl("get", "clusterqueue", "tenant-team-a", "tenant-team-b", check=False).returncode
            == 0
        ),
    )
    story.show("get", "clusterqueue", "tenant-team-a", "tenant-team-b")
    story.outcome(
        "created: tenants team-a and team-b, each with a namespace, its members' access and a ClusterQueue"
    )

    story.step(
        "Team A's release pipeline: push the trainer image and sign it with cosign (team A's demo key)"
    )
    digest = publish_example_image(cluster, workdir)
    print(
        f"$ cosign sign --key examples/signing/team-a-release.key {cluster.registry}/team-a/trainer@{digest}"
    )
    unsigned = Registry(cluster.ports.registry, workdir).push(
        "team-a/trainer", "debug", "nobody reviewed this"
    )
    print(f"pushed, not signed: {cluster.registry}/team-a/trainer:debug = {unsigned}")
    story.outcome(f"signed: {cluster.registry}/team-a/trainer:v1 = {digest}")

    story.step("Researcher A: an unsigned image is refused at kubectl apply, with the fix")
    sneaky = example_job(cluster, "sneaky", image=f"{cluster.registry}/team-a/trainer:debug")
    result = story.show("apply", "-f", "-", *RESEARCHER, stdin=json.dumps(sneaky))
    story.refused(
        result,
        "has no cosign signature",
        "the debug image has no cosign signature; the message says how to sign it",
    )

    story.step("Researcher A: a malformed job is refused by the API server, with the field and the rule")
    typo = example_job(cluster, "typo", replicas=-1)
    typo["spec"]["integrity"]["mode"] = "Paranoid"
    result = story.show("apply", "-f", "-", *RESEARCHER, stdin=json.dumps(typo))
    story.refused(
        result,
        'Unsupported value: "Paranoid"',
        "spec.replicas must be at least 1; spec.integrity.mode is Off, Audit or Enforce",
    )

    story.step("Researcher A: a job larger than the tenant can ever hold is refused, with the numbers")
    result = story.show(
        "apply", "-f", "-", *RESEARCHER, stdin=json.dumps(example_job(cluster, "too-big", replicas=4))
    )
    numbers = "4 x 8 = 32 GPUs exceeds what tenant 'team-a' can ever hold (16 nominal + 8 borrowable = 24)"
    story.refused(result, numbers, numbers)

    story.step("Researcher A: the example job is admitted, pinned to the signed digest, and runs: 2 x 8 GPUs")
    llm = EXAMPLES / "trainingjob-llm.yaml"
    if cluster.registry == EXAMPLE_REGISTRY:
        story.show("apply", "-f", str(llm), *RESEARCHER)
    else:  # this cluster's registry listens on another port than the example names
        story.show(
            "apply", "-f", "-", *RESEARCHER,
            stdin=json.dumps(example_job(cluster, "llm-finetune")),
            typed=f"sed s/{EXAMPLE_REGISTRY}/{cluster.registry}/ examples/trainingjob-llm.yaml | "
            + _command("kubectl", "apply", "-f", "-", *RESEARCHER),
        )  # fmt: skip
    image = story.show(
        "get", "tj", "llm-finetune", "-n", "team-a", "-o", 'jsonpath={.spec.image}{"\\n"}', *RESEARCHER
    )
    story.expect(image.stdout.strip().endswith(f"@{digest}"), f"the job's image is not pinned to {digest}")
    story.wait("the job to run", lambda: condition_is(cluster, "llm-finetune", "Running"))
    story.show("get", "tj", "-n", "team-a", "-o", "wide", *RESEARCHER)
    story.show("get", "pods,pvc,svc,networkpolicy", "-n", "team-a", "-o", "wide")
    story.outcome(f"running: llm-finetune, 2 replicas x 8 GPUs, pinned to team-a/trainer@{digest[:19]}...")

    story.step("Teammate A (same tenant, same access): the job is not theirs to change, delete or enter")
    story.show("get", "tj", "llm-finetune", "-n", "team-a", "-o", 'jsonpath={.spec.owner}{"\\n"}')
    result = story.show("patch", "tj", "llm-finetune", "-n", "team-a", "--type=merge",
                        "-p", '{"spec":{"collaborators":{"users":["teammate-a"]}}}', *TEAMMATE)  # fmt: skip
    story.refused(
        result, "may not change who acts on", "teammate-a may not add themselves to researcher-a's job"
    )
    result = story.show("delete", "tj", "llm-finetune", "-n", "team-a", *TEAMMATE)
    story.refused(result, "denied the request", "teammate-a may not delete it")
    result = story.show(*TEAMMATE, "exec", "llm-finetune-0-a0", "-n", "team-a", "-c", "trainer", "--", "true")
    story.refused(result, "denied the request", "teammate-a may not exec into its trainer")

    story.step("Researcher A and an ops person of team A: only the operator touches a job's pods")
    result = story.show("delete", "pod", "llm-finetune-0-a0", "-n", "team-a", *RESEARCHER)
    story.refused(result, "forbidden", "researcher-a may not delete the job's pods: the operator owns them")
    # A pod Pod Security "restricted" admits, so that what refuses it is trainguard's allowlist.
    restricted = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    gpu_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "side-job", "namespace": "team-a"},
               "spec": {"containers": [{"name": "m", "image": f"{cluster.registry}/team-a/trainer:v1",
                                        "securityContext": restricted,
                                        "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}  # fmt: skip
    story.show("create", "rolebinding", "ops", "-n", "team-a", "--clusterrole=edit", "--user=ops-person")
    result = story.show("apply", "-f", "-", "--as=ops-person", stdin=json.dumps(gpu_pod),
                        typed="kubectl apply -f side-job.yaml --as=ops-person  # 8 GPUs")  # fmt: skip
    story.refused(
        result, "denied the request", "a pod that asks for GPUs outside a TrainingJob, even from an editor"
    )

    story.step(
        "Researcher B (team B): team A's jobs are invisible, out of reach, and team A's signature is not B's"
    )
    result = story.show("get", "tj", "-n", "team-a", *OUTSIDER)
    story.refused(result, 'cannot list resource "trainingjobs"', "researcher-b cannot list team A's jobs")
    result = story.show("delete", "tj", "llm-finetune", "-n", "team-a", *OUTSIDER)
    story.refused(result, "forbidden", "researcher-b cannot delete them")
    borrowed = {
        "apiVersion": "trainguard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "borrowed-image", "namespace": "team-b"},
        "spec": {"tenant": "team-b", "image": f"{cluster.registry}/team-a/trainer:v1", "replicas": 1,
                 "resources": {"gpusPerReplica": 1}},
    }  # fmt: skip
    result = story.show("apply", "-f", "-", *OUTSIDER, stdin=json.dumps(borrowed))
    story.refused(
        result, "team-b-release", "team A's image is not signed by a key team B trusts (team-b-release)"
    )
    result = story.show("get", "tj", "-n", "team-b", *OUTSIDER)
    story.expect(result.returncode == 0, "researcher-b cannot list their own team's jobs")

    story.step(
        "Researcher A: a second job waits, because team A's quota is full and team B lends none (Kueue)"
    )
    story.show("get", "localqueue", "-n", "team-a", *RESEARCHER)
    eval_job = example_job(cluster, "llm-eval", replicas=1)
    typed = _command("kubectl", "apply", "-f", "llm-eval.yaml", *RESEARCHER) + "  # 1 x 8 GPUs"
    story.show("apply", "-f", "-", *RESEARCHER, stdin=json.dumps(eval_job), typed=typed)
    queued = story.wait("the second job to wait for quota", lambda: waiting(cluster, "llm-eval"))
    story.show("get", "tj", "-n", "team-a", *RESEARCHER)
    story.show("get", "clusterqueue")
    story.show("get", "tj", "llm-eval", "-n", "team-a", "-o",
               'jsonpath={.status.conditions[?(@.type=="Queued")].message}{"\\n"}', *RESEARCHER)  # fmt: skip
    story.outcome(f"queued: {queued['message']}")

    story.step(
        "Researcher A's first job finishes (its simulated trainers exit 0): Kueue admits the waiting job"
    )
    for i in range(2):
        story.show("annotate", "pod", f"llm-finetune-{i}-a0", "-n", "team-a",
                   "kwok.trainguard.test/exit-code=0", "--overwrite")  # fmt: skip
    story.wait(
        "the first job to succeed", lambda: condition_is(cluster, "llm-finetune", "Succeeded"), timeout=60
    )
    story.wait("the second job to run", lambda: condition_is(cluster, "llm-eval", "Running"), timeout=90)
    story.show("get", "tj", "-n", "team-a", *RESEARCHER)
    story.outcome("started: llm-eval runs on the GPUs llm-finetune gave back (Succeeded)")

    story.step(
        "Researcher A's training script: llm-eval trains (on CPU), a sidecar checks the weights between steps"
    )
    space = TenantSpace("team-a", "team-a", cluster)
    pod = job_pods(space, "llm-eval", 1)[0]
    uid = space.get("trainingjob", "llm-eval")["metadata"]["uid"]
    sidecar = SidecarProcess(
        workdir / "llm-eval-0",
        report_url=f"{operator.integrity_url}/team-a/llm-eval",
        key_url=key_url(operator.integrity_url, space, "llm-eval"),
        token=pod_token(space, "llm-eval", pod),
        job_uid=uid,
    )
    print(f"$ python -m trainguard.sidecar --mode Enforce --socket {sidecar.socket} --key-url "
          f"{sidecar.key_url} --token-file <the pod's token> --report-url {sidecar.report_url}")  # fmt: skip
    sidecar.start()
    cleanup.callback(sidecar.stop)
    trainer = TrainerProcess(sidecar.socket, TRAINED_STEPS)
    cleanup.callback(trainer.stop)
    buffer_path = Path(trainer.read_until("weights: ").removeprefix("weights: "))
    trainer.read_until("paused")
    # Step t counts as verified once the start of step t+1 found the weights as step t left them.
    verified = story.wait(
        f"step {TRAINED_STEPS - 2} verified in the job's status",
        lambda: (
            verified_step(cluster, "llm-eval") == TRAINED_STEPS - 2
            and condition_is(cluster, "llm-eval", "IntegrityVerified")
        ),
    )
    story.show("get", "tj", "llm-eval", "-n", "team-a", "-o",
               'jsonpath={.status.integrity}{"\\n"}', *RESEARCHER)  # fmt: skip
    story.outcome(f"verified: {verified['message']}")

    story.step("A saboteur process: flips one bit of a weight in the trainer's memory between two steps")
    print(f"$ python -c {shlex.quote(FLIP_A_BIT)} {buffer_path}")
    subprocess.run([sys.executable, "-c", FLIP_A_BIT, str(buffer_path)], check=True, timeout=30)
    said = trainer.resume()
    story.expect(
        trainer.exit_code() != 0 and "IntegrityViolation" in said, "the trainer did not stop at the change"
    )
    story.outcome(f"caught by the trainer's guard: {said.strip()}")
    violation = story.wait(
        "IntegrityViolation in the job's status",
        lambda: condition_is(cluster, "llm-eval", "IntegrityViolation"),
    )
    story.expect(violation["reason"] == "ModifiedBetweenSteps", f"the violation is {violation['reason']}")
    failed = story.wait("Enforce to stop the job", lambda: condition_is(cluster, "llm-eval", "Failed"))
    story.expect(failed["reason"] == "IntegrityViolation", f"the job failed for {failed['reason']}")
    story.wait(
        "the job's pods to be deleted",
        lambda: not space.list("pods", "trainguard.dev/job-name=llm-eval"),
    )
    story.show("get", "tj", "-n", "team-a", *RESEARCHER)
    story.show("get", "tj", "llm-eval", "-n", "team-a", "-o",
               'jsonpath={range .status.conditions[?(@.reason=="IntegrityViolation")]}'
               '{.type}={.status}: {.message}{"\\n"}{end}', *RESEARCHER)  # fmt: skip
    story.show("get", "events", "-n", "team-a", "--field-selector", "reason=IntegrityViolation")
    story.outcome(f"caught by the operator: {violation['message']}")
    story.outcome(f"stopped: llm-eval Failed ({failed['reason']}); its pods are deleted")


class TrainerProcess:
    """The CPU training script (`python -m e2e.demo trainer`), its output read line by line."""

    def __init__(self, socket: Path, steps: int) -> None:
        argv = [sys.executable, "-m", "e2e.demo", "trainer", "--socket", str(socket), "--steps", str(steps)]
        print(f"$ {_command('python', *argv[1:])}", flush=True)
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _lines(self, timeout: float) -> Iterator[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise StoryBroke(f"the trainer said nothing for {timeout:.0f} s") from None
            if line is None:
                return
            print(f"  trainer | {line}", flush=True)
            yield line

    def read_until(self, start: str, timeout: float = 60) -> str:
        """Print the trainer's lines up to the first that starts with `start`; return it."""
        for line in self._lines(timeout):
            if line.startswith(start):
                return line
        raise StoryBroke(f"the trainer exited before saying {start!r}")

    def resume(self, timeout: float = 30) -> str:
        """Let the trainer go on to its next step; return all it says until it exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return "\n".join(self._lines(timeout))

    def exit_code(self) -> int:
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def train(socket: Path, steps: int) -> int:
    """A small model trained on CPU under trainguard's guard for `steps` steps; then it waits for
    a line on stdin and begins the next step: 1 when the guard stops it."""
    # Imported here: only this process needs PyTorch.
    import torch

    from trainguard.trainer import IntegrityGuard, IntegrityViolation

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = IntegrityGuard(model, socket_path=socket)
    print(f"weights: {guard.buffer_path}", flush=True)
    for step in range(steps):
        guard.begin(step)
        optimizer.zero_grad()
        loss = model(torch.ones(4, 8)).square().mean()
        loss.backward()
        optimizer.step()
        guard.end(step)
        print(f"step {step}: loss {loss.item():.4f}", flush=True)
    print(f"paused after step {steps - 1}", flush=True)
    sys.stdin.readline()
    try:
        guard.begin(steps)
    except IntegrityViolation as exc:
        print(f"IntegrityViolation before step {steps}: {exc}", flush=True)
        return 1
    print(f"step {steps} began: no change seen", flush=True)
    return 0


def try_next(cluster: Cluster) -> None:
    """What a newcomer would type next, with what each shows."""
    env = "".join(
        f"{name}={os.environ[name]} "
        for name in ("TRAINGUARD_CACHE", "TRAINGUARD_CLUSTER_DIR", "TRAINGUARD_CLUSTER_PORT_BASE")
        if name in os.environ
    )
    commands = [
        (f"export KUBECONFIG={cluster.kubeconfig}", "this cluster"),
        (f"export PATH={bin_dir()}:$PWD/.venv/bin:$PATH", "kubectl matching the server, and the plugin"),
        ("kubectl get tj -n team-a -o wide", "every job: state, queue position, GPUs, digest, signer"),
        ("kubectl describe tj llm-eval -n team-a", "its conditions and events: what happened, and why"),
        ("kubectl get clusterqueue", "each tenant's GPU quota, as Kueue holds it"),
        ("kubectl get tj -n team-b --as=researcher-b --as-group=team-b", "act as someone (RBAC applies)"),
        ("kubectl trainguard why llm-eval -n team-a", "the kubectl plugin: docs/kubectl-plugin.md"),
        ("cat examples/train_with_integrity.py", "the three lines a training loop adds"),
        ("make test", "the whole suite against the real control plane"),
        (f"{env}make cluster-down", "stop the local cluster"),
    ]
    width = max(len(command) for command, _ in commands if len(command) <= 64)
    print(f"\n{BOLD}Try next:{PLAIN}")
    for command, why in commands:
        print(f"  {command.ljust(width)}  # {why}")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    trainer = sub.add_parser("trainer", help="the CPU training script the story runs beside a sidecar")
    trainer.add_argument("--socket", type=Path, required=True, help="the sidecar's socket")
    trainer.add_argument("--steps", type=int, default=TRAINED_STEPS, help="steps before it waits")
    args = parser.parse_args(argv)
    if args.command == "trainer":
        return train(args.socket, args.steps)
    return main()


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
