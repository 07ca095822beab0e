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


def test_a_cuda_region_declared_larger_than_its_allocation_is_refused(sidecar: SidecarProcess) -> None:
    """The sidecar reads no further than the allocation behind the handle, whatever nbytes says."""
    from trainguard.gpu import cuda_ipc
    from trainguard.integrity.protocol import CudaHandle, Region, Register

    net = torch.nn.Linear(64, 64).cuda()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    small, handle = cuda_ipc.allocate(1 << 20, 0)  # 1 MiB, its own allocation
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    region = Region(
        name="buffers@cuda:0", nbytes=64 << 20, slots=[], cuda=CudaHandle(uuid=uuid, handle=handle)
    )
    with pytest.raises(IntegrityViolation, match=r"declares 67108864 bytes but its allocation holds \d+"):
        guard._call(Register(region=region))
    exact = region.model_copy(update={"nbytes": 1 << 20})
    guard._call(Register(region=exact))  # the same allocation at its real size is fine
    del small
    guard.close()


def test_two_ranks_on_one_gpu_have_their_own_regions_and_a_tamper_names_the_rank(
    sidecar: SidecarProcess,
) -> None:
    guards, nets, optimizers = [], [], []
    for rank in (0, 1):
        torch.manual_seed(0)
        nets.append(torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256)).cuda())
        optimizers.append(torch.optim.SGD(nets[rank].parameters(), lr=0.1))
        # Shards, as far as the sidecar knows: the comparison of ranks is the CPU tests' (two
        # GPU runs of the same step need not give the same bits).
        guards.append(
            IntegrityGuard(
                nets[rank], optimizers[rank], socket_path=sidecar.socket, rank=rank, replicated=False
            )
        )
    for rank in (0, 1):
        train(range(3), guards[rank], nets[rank], optimizers[rank])
    handles = {g.regions["parameters@cuda:0"].region.cuda.handle for g in guards}  # type: ignore[union-attr]
    assert len(handles) == 2
    ends = sidecar.reports_of(StepEnd)
    assert sorted((e.rank, e.step) for e in ends) == [(r, s) for r in (0, 1) for s in range(3)]
    assert sidecar.reports_of(Violation) == []
    params = guards[1].regions["parameters@cuda:0"]
    subprocess.run(
        [sys.executable, "-c", TAMPER, json.dumps(params.region.wire()), str(sidecar.folder), "10"],
        check=True, timeout=120,
    )  # fmt: skip
    train(range(3, 4), guards[0], nets[0], optimizers[0])
    with pytest.raises(IntegrityViolation, match=r"replica 0, rank 1: the weights \(cuda:0\) changed"):
        train(range(3, 4), guards[1], nets[1], optimizers[1])
    assert sidecar.reports_of(Violation)[-1].rank == 1
    for guard in guards:
        guard.close()


def test_the_sidecar_says_which_gpus_it_sees_and_why(sidecar: SidecarProcess) -> None:
    log = sidecar.log_path.read_text()
    assert "sidecar: sees GPUs " in log
    assert str(torch.cuda.get_device_properties(0).uuid) in log


def test_a_cuda_generator_reseeded_between_steps_is_caught(sidecar: SidecarProcess) -> None:
    """The CUDA generator's Philox offset only grows while numbers are drawn; a reseed (even with the
    same seed) sets it back, which would replay dropout masks and noise."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(256, 256), torch.nn.Dropout(0.1), torch.nn.Linear(256, 256)
    ).cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = IntegrityGuard(
        net, optimizer, socket_path=sidecar.socket, generators=IntegrityGuard.default_generators()
    )
    assert "cuda:0" in guard.generators
    for _ in range(3):  # dropout draws from the CUDA generator between steps: its offset grows
        net(torch.ones(8, 256, device="cuda")).sum().backward()
        optimizer.step()
    assert sidecar.reports_of(Violation) == []
    torch.cuda.manual_seed(torch.cuda.initial_seed())  # same seed, offset back to 0
    net(torch.ones(8, 256, device="cuda")).sum().backward()
    with pytest.raises(IntegrityViolation, match=r"rng.cuda:0.offset went back"):
        optimizer.step()
    assert sidecar.reports_of(Violation)[-1].violation == "RandomState"
    guard.close()
