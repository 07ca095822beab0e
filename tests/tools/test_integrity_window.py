"""The checked window is everything but `optimizer.step()`: the guard hooks the optimizer, and the
sidecar compares the state (weights, optimizer state, hyperparameters, generator seeds) just
before each optimizer step with what the previous one left. Real sidecar process, real PyTorch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from e2e.cluster.integrity import SidecarProcess
from trainguard.integrity.protocol import Adjust, Register
from trainguard.integrity.reports import Adjusted, StepEnd, Verified, Violation
from trainguard.trainer import IntegrityGuard, IntegrityViolation


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(tmp_path / "shared").start()
    yield proc
    proc.stop()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(tmp_path / "shared", mode="Audit").start()
    yield proc
    proc.stop()


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def forward_backward(net: torch.nn.Module, optimizer: torch.optim.Optimizer, data: torch.Generator) -> None:
    x, y = torch.randn(8, 16, generator=data), torch.randint(0, 4, (8,), generator=data)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()


def tamper_with(path: Path, offset: int) -> None:
    """Another process flips one bit of a shared file."""
    code = (
        "import mmap, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR); m = mmap.mmap(fd, 0); m[int(sys.argv[2])] ^= 1\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(offset)], check=True, timeout=30)


def guarded(
    sidecar: SidecarProcess, **options: object
) -> tuple[torch.nn.Module, torch.optim.Optimizer, IntegrityGuard]:
    net = model()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = IntegrityGuard(net, optimizer, socket_path=sidecar.socket, **options)  # type: ignore[arg-type]
    return net, optimizer, guard


def train(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1
) -> torch.Generator:
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        forward_backward(net, optimizer, data)
        optimizer.step()
    return data


def test_a_weight_flipped_during_forward_and_backward_is_caught_at_the_next_optimizer_step(
    sidecar: SidecarProcess,
) -> None:
    """The old window (begin before the forward pass) took whatever a step left as the next
    baseline, so a flip made during the step stayed unseen. Now only optimizer.step() is unchecked."""
    net, optimizer, guard = guarded(sidecar)
    data = train(net, optimizer, 3)
    forward_backward(net, optimizer, data)
    tamper_with(guard.buffer_path, 40)  # after the forward pass, before the update: left in place
    with pytest.raises(
        IntegrityViolation,
        match=r"the weights \(cpu\) changed between the end of step 2 and the start of step 3",
    ):
        optimizer.step()
    assert [(v.step, v.violation) for v in sidecar.reports_of(Violation)] == [(3, "ModifiedBetweenSteps")]
    assert [r.step for r in sidecar.reports_of(Verified)] == [0, 1]
    guard.close()


def test_clean_training_with_a_watched_scheduler_and_generators_gives_no_false_alarm(
    sidecar: SidecarProcess,
) -> None:
    net = model()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    guard = IntegrityGuard(
        net, optimizer, socket_path=sidecar.socket, schedulers=[scheduler],
        generators=IntegrityGuard.default_generators(),
    )  # fmt: skip
    data = torch.Generator().manual_seed(1)
    dropout = torch.nn.Dropout(0.1)  # draws from torch's own generator between steps: its seed stays
    for _ in range(6):
        forward_backward(net, optimizer, data)
        dropout(torch.ones(4))
        optimizer.step()
        scheduler.step()
    with guard.adjusting("warm restart"):
        for group in optimizer.param_groups:
            group["lr"] = 5e-4
    forward_backward(net, optimizer, data)
    optimizer.step()
    assert sidecar.reports_of(Violation) == []
    assert [r.step for r in sidecar.reports_of(Verified)] == list(range(6))
    adjusted = sidecar.reports_of(Adjusted)
    # StepLR halves the rate every second step: the changes are in the signed record, with who made them.
    assert [(a.step, a.reason, a.changes) for a in adjusted if a.reason == "StepLR.step()"] == [
        (1, "StepLR.step()", ["optimizer.group0.lr 0.001 -> 0.0005"]),
        (3, "StepLR.step()", ["optimizer.group0.lr 0.0005 -> 0.00025"]),
        (5, "StepLR.step()", ["optimizer.group0.lr 0.00025 -> 0.000125"]),
    ]
    assert adjusted[-1].reason == "warm restart"
    assert sidecar.reports_of(StepEnd)[-1].controls is not None
    assert sidecar.reports_of(StepEnd)[-1].controls["optimizer.group0.lr"] == 5e-4
    guard.close()


def set_group(key: str, value: object) -> Callable[[torch.optim.Optimizer], None]:
    return lambda optimizer: optimizer.param_groups[0].__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "kind", "named"),
    [
        (set_group("lr", 1.0), "Hyperparameters", "optimizer.group0.lr 0.001 -> 1.0"),
        (set_group("betas", (0.5, 0.999)), "Hyperparameters", "optimizer.group0.betas.0 0.9 -> 0.5"),
        (set_group("weight_decay", 0.0), "Hyperparameters", "optimizer.group0.weight_decay 0.01 -> 0.0"),
        (set_group("maximize", True), "Hyperparameters", "optimizer.group0.maximize 0 -> 1"),
        (lambda _: torch.manual_seed(1234), "RandomState", "rng.cpu.seed 0 -> 1234"),
    ],
    ids=["learning-rate", "betas", "weight-decay", "maximize", "seed"],
)
def test_hyperparameters_or_a_seed_changed_between_steps_are_caught(
    sidecar: SidecarProcess, change: object, kind: str, named: str
) -> None:
    net, optimizer, guard = guarded(sidecar, generators={"cpu": torch.default_generator})
    data = train(net, optimizer, 2)
    change(optimizer)  # type: ignore[operator]
    forward_backward(net, optimizer, data)
    with pytest.raises(IntegrityViolation, match="changed between the end of step 1 and the start of step 2"):
        optimizer.step()
    (violation,) = sidecar.reports_of(Violation)
    assert (violation.step, violation.violation) == (2, kind)
    assert named in violation.message
    guard.close()


def test_an_unannounced_change_cannot_be_laundered_through_an_adjustment(sidecar: SidecarProcess) -> None:
    net, optimizer, guard = guarded(sidecar)
    train(net, optimizer, 2)
    optimizer.param_groups[0]["lr"] = 10.0  # unannounced
    with (
        pytest.raises(
            IntegrityViolation, match=r"before warm restart adjusted them after step 1.*lr 0.001 -> 10.0"
        ),
        guard.adjusting("warm restart"),
    ):
        optimizer.param_groups[0]["betas"] = (0.8, 0.99)
    assert sidecar.reports_of(Violation)[-1].violation == "Hyperparameters"
    guard.close()


def test_a_second_optimizer_over_the_same_weights_is_caught(sidecar: SidecarProcess) -> None:
    """An optimizer created later (or a replacement) updates the weights outside the guarded step."""
    net, optimizer, guard = guarded(sidecar)
    data = train(net, optimizer, 2)
    rogue = torch.optim.SGD(net.parameters(), lr=0.5)
    forward_backward(net, optimizer, data)
    rogue.step()
    with pytest.raises(IntegrityViolation, match=r"the weights \(cpu\) changed between the end of step 1"):
        optimizer.step()
    guard.close()


def test_a_change_made_at_once_after_a_step_is_caught_however_slow_the_sidecar(
    sidecar: SidecarProcess,
) -> None:
    """`optimizer.step()` returns only once the sidecar has fingerprinted the new state: a change
    made the moment it returns is not taken into the baseline, even when the sidecar got no CPU
    for a while (here: stopped from just after the step began until half a second later)."""
    net, optimizer, guard = guarded(sidecar)
    data = train(net, optimizer, 2)
    assert sidecar.proc is not None
    pid = sidecar.proc.pid

    def stall(*_: object) -> None:  # registered after the guard's own hook: runs after its check
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(0.5, os.kill, (pid, signal.SIGCONT)).start()

    hook = optimizer.register_step_pre_hook(stall)
    try:
        forward_backward(net, optimizer, data)
        optimizer.step()
    finally:
        hook.remove()
    with torch.no_grad():
        net[0].weight[0, 0] += 1.0
    forward_backward(net, optimizer, data)
    with pytest.raises(IntegrityViolation, match=r"the weights \(cpu\) changed between the end of step 2"):
        optimizer.step()
    guard.close()


def test_a_parameter_the_optimizer_updates_outside_the_model_is_watched_too(sidecar: SidecarProcess) -> None:
    net = model()
    extra = torch.nn.Parameter(torch.zeros(64))  # trains, but is not one of the model's parameters
    optimizer = torch.optim.SGD([*net.parameters(), extra], lr=0.1)
    guard = IntegrityGuard(net, optimizer, socket_path=sidecar.socket)
    region = guard.regions["parameters@cpu"]
    assert region.entries[-1].name == "optimizer.group0.4"
    assert extra.data.data_ptr() == region.views[-1].data_ptr()
    data = train(net, optimizer, 2)
    forward_backward(net, optimizer, data)
    tamper_with(guard.buffer_path, region.region.slots[-1].offset + 1)
    with pytest.raises(IntegrityViolation, match=r"weights \(cpu\) changed .*optimizer.group0.4\)"):
        optimizer.step()
    guard.close()


def test_a_decoy_region_that_never_changes_is_reported(audit: SidecarProcess) -> None:
    """Code in the trainer that registers a decoy in place of the real weights (same name, same
    size) blinds the comparison; but the decoy never changes while training goes on."""
    net, optimizer, guard = guarded(audit)
    real = guard.regions["parameters@cpu"].region
    decoy = audit.folder / "decoy.bin"
    decoy.write_bytes(Path(real.path or "").read_bytes())
    fd = os.open(decoy, os.O_RDWR)  # passed like a real region: a file descriptor over the socket
    try:
        guard._call(Register(region=real.model_copy(update={"path": str(decoy)})), fds=[fd])
    finally:
        os.close(fd)
    data = train(net, optimizer, 4)
    forward_backward(net, optimizer, data)
    tamper_with(guard.buffer_path, 40)  # unseen: the sidecar reads the decoy
    optimizer.step()
    frozen = [v for v in audit.reports_of(Violation) if v.violation == "StateFrozen"]
    assert [v.step for v in frozen] == [3]  # three checked ends in a row with the same weights
    assert "did not change in 3 checked steps up to step 3" in frozen[0].message
    guard.close()


def test_adjusting_inside_a_step_is_a_protocol_violation(sidecar: SidecarProcess) -> None:
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = IntegrityGuard(net, optimizer, socket_path=sidecar.socket, mark_steps=False)
    guard.begin(0)
    before = guard.controls()
    assert before is not None
    with pytest.raises(IntegrityViolation, match=r"hyperparameters adjusted during step 0"):
        guard._call(Adjust(reason="sneaky", before=before, after={**before, "optimizer.group0.lr": 9.0}))
    assert sidecar.reports_of(Violation)[-1].violation == "Protocol"
    guard.close()


def test_a_guard_that_marks_steps_refuses_extra_marks(sidecar: SidecarProcess) -> None:
    """Marks from the loop beside the hooks would be a second, bendable step order."""
    _, _, guard = guarded(sidecar)
    with pytest.raises(RuntimeError, match="marks each step itself"):
        guard.begin(0)
    guard.close()
