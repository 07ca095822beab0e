"""On a CUDA GPU: the trainer shares GPU-resident state through CUDA IPC; the sidecar, its own
process, fingerprints it on the GPU, and a third process that alters it between steps is caught.
Skips without CUDA (run on a GPU machine with bench/gpu_check.sh)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from e2e.cluster.integrity import SidecarProcess
from trainguard.integrity.fingerprint import FingerprintKey, fingerprint
from trainguard.integrity.reports import StepEnd, Violation
from trainguard.trainer import IntegrityGuard, IntegrityViolation

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Opens the trainer's allocation from the region's IPC fields, as a saboteur holding them would.
TAMPER = """
import json, sys, torch
from trainguard.integrity.protocol import parse_region
from trainguard.sidecar.server import open_cuda_region
from pathlib import Path
region = parse_region(json.loads(sys.argv[1]), Path(sys.argv[2]))
flat, _ = open_cuda_region(region)
flat[int(sys.argv[3])] ^= 1
torch.cuda.synchronize()
"""


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(tmp_path / "shared").start()
    yield proc
    proc.stop()


def train(
    steps: range, guard: IntegrityGuard, net: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    data = torch.Generator(device="cuda").manual_seed(7)
    for _ in steps:  # the guard hooks optimizer.step(): checked just before, fingerprinted just after
        x = torch.randn(64, 256, device="cuda", generator=data)
        loss = net(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_gpu_state_is_shared_through_cuda_ipc_and_tampering_is_caught(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)).cuda()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = IntegrityGuard(
        net, optimizer, socket_path=sidecar.socket, generators=IntegrityGuard.default_generators()
    )
    train(range(20), guard, net, optimizer)

    params = guard.regions["parameters@cuda:0"]
    assert params.cuda is not None  # GPU memory shared by its IPC handle
    assert params.path is None  # no file
    assert net[0].weight.data_ptr() == params.views[0].data_ptr()
    assert "optimizer@cuda:0" in guard.regions  # AdamW's moments, on the GPU
    assert sidecar.reports_of(Violation) == []

    # The sidecar fingerprinted the GPU memory on the GPU: the same value the CPU reference
    # gives for the same bytes, copied to the host here.
    key = FingerprintKey.from_secret(sidecar.key)
    last = sidecar.reports_of(StepEnd)[-1]
    assert last.step == 19
    assert last.regions["parameters@cuda:0"] == fingerprint(key, [params.flat.cpu().numpy()])

    region = json.dumps(params.region.wire())
    offset = params.region.slots[2].offset + 10  # a byte of the second layer's weight
    subprocess.run(
        [sys.executable, "-c", TAMPER, region, str(sidecar.folder), str(offset)], check=True, timeout=120
    )
    with pytest.raises(
        IntegrityViolation, match=r"the weights \(cuda:0\) changed between the end of step 19"
    ):
        train(range(20, 21), guard, net, optimizer)
    guard.close()
