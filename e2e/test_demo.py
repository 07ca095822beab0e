"""`make demo` tells its whole story: every step's outcome, and a zero exit.

The demo runs as a newcomer runs it (`python -m e2e.demo`, its own process) against a local
cluster of its own (its own state folder and ports, the shared build cache), so that it cannot
disturb the session's cluster and operator, which watch `team-*` namespaces too."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from e2e.cluster.harness import ROOT
from e2e.cluster.localcluster import ClusterConfig

# Each step's outcome line, in the order the story tells them.
OUTCOMES = [
    "-> ready: 4 nodes, 32 GPUs",
    "-> installed: the operator runs as system:serviceaccount:trainguard-system:trainguard",
    "-> created: tenants team-a and team-b",
    "-> signed: ",
    "-> refused: the debug image has no cosign signature",
    "-> refused: spec.replicas must be at least 1",
    "-> refused: 4 x 8 = 32 GPUs exceeds what tenant 'team-a' can ever hold (16 nominal + 8 borrowable = 24)",
    "-> running: llm-finetune, 2 replicas x 8 GPUs",
    "-> refused: teammate-a may not add themselves to researcher-a's job",
    "-> refused: teammate-a may not delete it",
    "-> refused: teammate-a may not exec into its trainer",
    "-> refused: researcher-a may not delete the job's pods",
    "-> refused: a pod that asks for GPUs outside a TrainingJob",
    "-> refused: researcher-b cannot list team A's jobs",
    "-> refused: researcher-b cannot delete them",
    "-> refused: team A's image is not signed by a key team B trusts",
    "-> queued: waiting to borrow from the cohort research",
    "-> started: llm-eval runs on the GPUs llm-finetune gave back",
    "-> verified: ",
    "-> caught by the trainer's guard: IntegrityViolation before step 4",
    "-> caught by the operator: step 4, replica 0: ModifiedBetweenSteps",
    "-> stopped: llm-eval Failed (IntegrityViolation); its pods are deleted",
    "Try next:",
    "kubectl trainguard why llm-eval -n team-a",
    "make cluster-down",
]
ACTORS = [
    "Platform team",
    "Team A's release pipeline",
    "Researcher A",
    "Teammate A",
    "Researcher B",
    "A saboteur",
]


def free_port_base(start: int) -> int:
    """The first base from `start` on (in steps of ten, below the kernel's ephemeral ports) whose
    ten loopback ports nothing listens on."""

    def listening(port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    for base in range(start, 32768 - 10, 10):
        if not any(listening(port) for port in range(base, base + 10)):
            return base
    raise AssertionError(f"no ten free loopback ports from {start} on")


def test_make_demo_tells_the_whole_story_and_ends_with_what_to_try_next(tmp_path: Path) -> None:
    base = free_port_base(ClusterConfig.from_env().port_base + 100)
    env = {
        **os.environ,
        "TRAINGUARD_CLUSTER_DIR": str(tmp_path / "cluster"),
        "TRAINGUARD_CLUSTER_PORT_BASE": str(base),
        "KUBECONFIG": str(tmp_path / "cluster" / "kubeconfig"),
    }
    started = time.monotonic()
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "e2e.demo"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        took = time.monotonic() - started
        said = demo.stdout + demo.stderr
        assert demo.returncode == 0, f"the demo failed after {took:.0f} s:\n{said[-6000:]}"
        missing = [line for line in OUTCOMES if line not in demo.stdout]
        assert not missing, f"the demo's output lacks {missing}:\n{demo.stdout[-6000:]}"
        order = [demo.stdout.index(line) for line in OUTCOMES]
        assert order == sorted(order), "the story's outcomes came out of order"
        titles = [line for line in demo.stdout.splitlines() if line.startswith("== ")]
        assert all(any(actor in title for actor in ACTORS) for title in titles), titles
        assert "DEMO FAILED" not in said
        print(f"the demo took {took:.0f} s (cluster start included)")
    finally:
        subprocess.run(
            [sys.executable, "-m", "e2e.cluster.localcluster", "down"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
