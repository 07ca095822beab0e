"""The sidecar and a real PyTorch training loop as separate processes, wired as a pod wires them."""

from __future__ import annotations

import hashlib
import http.server
import json
import mmap
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from e2e.cluster.harness import ROOT
from e2e.cluster.integrity import SidecarProcess
from e2e.cluster.waiting import free_port, wait_for
from trainguard.integrity.protocol import Begin, Checkpoint, Region, Register, Verify
from trainguard.integrity.replicas import diverging_replicas
from trainguard.integrity.reports import Registered, StepEnd, Verified, Violation
from trainguard.sidecar.server import probe
from trainguard.trainer import IntegrityGuard, IntegrityViolation


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(tmp_path / "shared").start()
    yield proc
    proc.stop()


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, data: torch.Generator) -> None:
    x, y = torch.randn(8, 16, generator=data), torch.randint(0, 4, (8,), generator=data)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()


def test_a_thousand_clean_steps_give_no_false_alarm(sidecar: SidecarProcess) -> None:
    script = ROOT / "examples" / "train_with_integrity.py"
    result = subprocess.run(
        [sys.executable, str(script), "--steps", "1000", "--socket", str(sidecar.socket)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trained 1000 steps" in result.stdout
    assert sidecar.reports_of(Violation) == []
    assert len(sidecar.reports_of(StepEnd)) == 1000
    assert [r.step for r in sidecar.reports_of(Verified)] == list(range(999))
    # AdamW's state joined at the first end(); shared once, never again (nothing replaced it).
    assert [r.region for r in sidecar.reports_of(Registered)] == ["parameters@cpu", "optimizer@cpu"]


def test_a_weight_altered_between_steps_by_another_process_is_reported_for_that_step(
    sidecar: SidecarProcess,
) -> None:
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    for step in range(3):
        guard.begin(step)
        train_step(net, optimizer, data)
        guard.end(step)
    # A third process flips one bit of one weight in the shared buffer, between steps 2 and 3.
    tamper = (
        "import mmap, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR); m = mmap.mmap(fd, 0); m[100] ^= 0x01; m.flush()\n"
    )
    subprocess.run([sys.executable, "-c", tamper, str(guard.buffer_path)], check=True, timeout=30)
    with pytest.raises(
        IntegrityViolation,
        match=r"the weights \(cpu\) changed between the end of step 2 and the start of step 3",
    ):
        guard.begin(3)
    violation = sidecar.reports_of(Violation)
    assert [(v.step, v.violation, v.replica) for v in violation] == [(3, "ModifiedBetweenSteps", 0)]
    guard.close()


def test_the_sidecar_reads_the_memory_the_trainer_trains(sidecar: SidecarProcess) -> None:
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    first = net[0].weight
    fd = os.open(guard.buffer_path, os.O_RDONLY)
    try:
        shared = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    with torch.no_grad():
        first[0, 0] = 42.0
    assert torch.frombuffer(bytearray(shared[: first.numel() * 4]), dtype=torch.float32)[0].item() == 42.0
    guard.close()


def test_one_replica_of_two_diverges_and_is_named(tmp_path: Path) -> None:
    job_key = os.urandom(32)  # one key per job, shared by its replicas' sidecars
    sidecars = [SidecarProcess(tmp_path / f"replica-{r}", key=job_key, replica=r).start() for r in (0, 1)]
    try:
        guards, nets, optimizers = [], [], []
        for r in (0, 1):
            nets.append(model(seed=0))
            guards.append(IntegrityGuard(nets[r], socket_path=sidecars[r].socket))
            optimizers.append(torch.optim.SGD(nets[r].parameters(), lr=0.1))
        streams = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
        for step in range(4):
            for r in (0, 1):
                guards[r].begin(step)
                if r == 1 and step == 2:
                    streams[1] = torch.Generator().manual_seed(99)  # replica 1 trains on other data from here
                train_step(nets[r], optimizers[r], streams[r])
                guards[r].end(step)
        by_step: dict[int, dict[int, str]] = {}
        for r in (0, 1):
            for report in sidecars[r].reports_of(StepEnd):
                by_step.setdefault(report.step, {})[r] = report.fingerprint
        assert [diverging_replicas(by_step[s]) for s in range(4)] == [[], [], [1], [1]]
    finally:
        for s in sidecars:
            s.stop()


def test_a_checkpoint_altered_on_disk_is_refused_at_load(sidecar: SidecarProcess, tmp_path: Path) -> None:
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    path = tmp_path / "checkpoint.pt"
    guard.save(net.state_dict(), path, step=7)
    assert set(guard.load(path)) == set(net.state_dict())
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityViolation, match=r"checkpoint\.pt changed after it was saved"):
        guard.load(path)
    assert sidecar.reports_of(Violation)[-1].violation == "CheckpointModified"
    guard.close()


class Payload:
    """An object whose unpickling runs code: what a sabotaged checkpoint carries."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.marker,))


def test_a_pickle_checkpoint_with_code_is_refused_in_enforce_mode(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    marker = tmp_path / "code-ran"
    unsigned = tmp_path / "unsigned.pt"
    torch.save({"weights": net.state_dict(), "payload": Payload(str(marker))}, unsigned)
    with pytest.raises(IntegrityViolation, match=r"unsigned\.pt has no signed manifest"):
        guard.load(unsigned)
    # Even signed by the job's own sidecar, code inside a checkpoint is never unpickled.
    signed = tmp_path / "signed.pt"
    guard.save({"payload": Payload(str(marker))}, signed)
    with pytest.raises(Exception, match="Weights only load failed"):
        guard.load(signed)
    assert not marker.exists()
    guard.close()


def tamper_with(path: Path, offset: int) -> None:
    """Another process flips one bit of a shared file (what a saboteur on the node would do)."""
    tamper = (
        "import mmap, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR); m = mmap.mmap(fd, 0); m[int(sys.argv[2])] ^= 1\n"
    )
    subprocess.run([sys.executable, "-c", tamper, str(path), str(offset)], check=True, timeout=30)


def batchnorm_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 4))


def test_optimizer_state_and_buffers_are_watched_too(sidecar: SidecarProcess) -> None:
    net = batchnorm_model()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = IntegrityGuard(net, optimizer, socket_path=sidecar.socket, mark_steps=False)
    data = torch.Generator().manual_seed(3)
    for step in range(3):
        guard.begin(step)
        train_step(net, optimizer, data)
        guard.end(step)
    # The optimizer's moments moved into their own region at the first end(): AdamW trains on them there.
    region = guard.regions["optimizer@cpu"]
    assert region.path is not None
    assert optimizer.state[net[0].weight]["exp_avg"].data_ptr() == region.views[0].data_ptr()
    registered = {r.region for r in sidecar.reports_of(Registered)}
    assert registered == {"parameters@cpu", "buffers@cpu", "optimizer@cpu"}
    assert set(sidecar.reports_of(StepEnd)[-1].regions) == registered

    tamper_with(region.path, region.region.slots[1].offset + 5)  # net[0].weight's exp_avg_sq
    with pytest.raises(
        IntegrityViolation, match=r"the optimizer state \(cpu\) changed between the end of step 2"
    ):
        guard.begin(3)

    buffers = guard.regions["buffers@cpu"]
    assert buffers.path is not None
    guard.end(3)  # a new baseline (Enforce stopped step 3 above; the trainer goes on only to test buffers)
    tamper_with(buffers.path, 0)  # the batch-norm running mean
    with pytest.raises(IntegrityViolation, match=r"the model buffers \(cpu\) changed"):
        guard.begin(4)
    guard.close()


def test_tensors_that_training_code_replaces_are_shared_again(sidecar: SidecarProcess) -> None:
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = IntegrityGuard(net, optimizer, socket_path=sidecar.socket, mark_steps=False)
    data = torch.Generator().manual_seed(4)
    guard.begin(0)
    train_step(net, optimizer, data)
    guard.end(0)
    old_file = guard.buffer_path
    # Training code that rebinds every parameter's data to new memory (the optimizer keeps the
    # same Parameter objects, so it trains the new memory).
    with torch.no_grad():
        for param in net.parameters():
            param.data = param.data.clone()
    for step in (1, 2):
        guard.begin(step)
        train_step(net, optimizer, data)
        guard.end(step)
    assert guard.buffer_path != old_file
    assert not old_file.exists()
    assert net[0].weight.data_ptr() == guard.regions["parameters@cpu"].views[0].data_ptr()
    assert sidecar.reports_of(Violation) == []
    tamper_with(guard.buffer_path, 3)
    with pytest.raises(IntegrityViolation, match=r"the weights \(cpu\) changed between the end of step 2"):
        guard.begin(3)
    guard.close()


def test_the_trainer_cannot_make_the_sidecar_read_its_key(sidecar: SidecarProcess) -> None:
    """What the trainer sends is checked: the key is neither a region nor a checkpoint."""
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    key_file = sidecar.folder.parent / "key-0" / "key"
    with pytest.raises(IntegrityViolation, match="is not a checkpoint"):
        guard._call(Checkpoint(path=str(key_file)))
    region = Region(name="parameters@cpu", nbytes=32, slots=[], path=str(key_file))
    with pytest.raises(IntegrityViolation, match="is not a file of the shared folder"):
        guard._call(Register(region=region))
    linked = sidecar.folder / "innocent.bin"
    linked.symlink_to(key_file)
    with pytest.raises(IntegrityViolation, match="is not a file of the shared folder"):
        guard._call(Register(region=region.model_copy(update={"path": str(linked)})))
    assert [r.kind for r in sidecar.reports()] == ["Registered"]  # nothing about the key was reported
    guard.close()


def test_the_sidecar_survives_garbage_and_answers_its_startup_probe(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    assert probe(sidecar.socket) == 0
    assert probe(tmp_path / "nobody.sock") == 1
    as_the_pod_runs_it = [sys.executable, "-m", "trainguard.sidecar", "--probe"]  # the startupProbe
    assert subprocess.run([*as_the_pod_runs_it, str(sidecar.socket)], timeout=60, check=False).returncode == 0
    assert (
        subprocess.run([*as_the_pod_runs_it, str(tmp_path / "x.sock")], timeout=60, check=False).returncode
        == 1
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(sidecar.socket))
        raw.sendall(b"this is not json\n")
        assert raw.recv(100) == b""  # that connection is dropped, the sidecar lives on
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(sidecar.socket))
        raw.sendall(b"[1, 2]\n")
        assert b"a message must be a JSON object" in raw.recv(1000)
    guard = IntegrityGuard(model(), socket_path=sidecar.socket)
    guard.end(0)
    guard.begin(1)
    guard.close()
    with pytest.raises(IntegrityViolation, match=r"no integrity sidecar listens on .* after 1 s"):
        IntegrityGuard(model(), socket_path=tmp_path / "nobody.sock", connect_timeout=1)


def test_the_sidecar_process_is_not_dumpable() -> None:
    """Its memory and its mount of the key are closed to other processes of the pod (via /proc)."""
    code = "from trainguard.sidecar.server import harden_process; print(harden_process())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "0"


def test_a_violation_names_the_tensor_that_changed(sidecar: SidecarProcess) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 128))  # 64 KiB weights
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    guard.end(0)
    second = guard.regions["parameters@cpu"].region.slots[2]
    assert second.name == "1.weight"
    tamper_with(guard.buffer_path, second.offset + 20_000)
    with pytest.raises(IntegrityViolation, match=r"changed between the end of step 0 and the start of step 1 "
                       r"\(weights \(cpu\): 1\.weight\)"):  # fmt: skip
        guard.begin(1)
    assert sidecar.reports_of(Violation)[-1].tensors == {"parameters@cpu": ["1.weight"]}
    guard.close()


def test_a_sharded_checkpoint_directory_is_signed_and_checked_file_by_file(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    shards = tmp_path / "step-100"
    shards.mkdir()
    for i, (name, tensor) in enumerate(net.state_dict().items()):
        guard.save({name: tensor.contiguous()}, shards / f"shard-{i}.safetensors")
    (shards / "config.json").write_text('{"layers": 2}')
    guard.sign(shards, step=100)
    guard.verify(shards)
    assert set(guard.load(shards / "shard-0.safetensors")) == {"0.weight"}  # safetensors: no pickle at all

    (shards / "shard-1.safetensors").write_bytes((shards / "shard-2.safetensors").read_bytes())
    (shards / "extra.py").write_text("import os")
    (shards / "config.json").unlink()
    with pytest.raises(IntegrityViolation) as refused:
        guard.verify(shards)
    assert str(refused.value) == (
        "step-100: config.json is missing; shard-1.safetensors changed after it was saved; "
        "extra.py is not in the manifest"
    )
    (shards / "extra.py").unlink()
    (shards / "link").symlink_to(sidecar.folder.parent / "key-0" / "key")
    with pytest.raises(IntegrityViolation, match="link is a symbolic link"):
        guard.verify(shards)
    guard.close()


@pytest.mark.parametrize(
    ("bend", "message"),
    [
        (lambda g: (g.end(2), g.end(2)), r"end\(2\) with no begin\(2\) \(end\(2\) came last\)"),
        (lambda g: (g.end(2), g.begin(4)), r"begin\(4\) after end\(2\) skips a step: the next step is 3"),
        (lambda g: (g.end(2), g.begin(1)), r"begin\(1\) after end\(2\) goes backwards"),
        (lambda g: (g.end(2), g.begin(3), g.begin(3)), r"begin\(3\) while step 3 has not ended"),
    ],
    ids=["end-twice", "skipped-step", "backwards", "begin-twice"],
)
def test_a_step_sequence_bent_to_move_the_baseline_is_a_protocol_violation(
    sidecar: SidecarProcess, bend: Any, message: str
) -> None:
    """A tamper after end(t), then a second end(t) (or a jump past begin(t+1)) would make the
    tampered state the new baseline: the sidecar refuses the order, and the tamper is still caught."""
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = IntegrityGuard(net, optimizer, socket_path=sidecar.socket, mark_steps=False)
    data = torch.Generator().manual_seed(5)
    for step in range(2):
        guard.begin(step)
        train_step(net, optimizer, data)
        guard.end(step)
    guard.begin(2)
    train_step(net, optimizer, data)
    with pytest.raises(IntegrityViolation, match=message):
        bend(guard)
    assert sidecar.reports_of(Violation)[-1].violation == "Protocol"
    guard.close()


def test_the_tamper_a_second_end_would_hide_is_caught_in_audit_mode(tmp_path: Path) -> None:
    sidecar = SidecarProcess(tmp_path / "shared", mode="Audit").start()
    try:
        net = model()
        guard = IntegrityGuard(net, socket_path=sidecar.socket)
        guard.begin(0)
        guard.end(0)
        tamper_with(guard.buffer_path, 7)
        guard.end(0)  # Audit: reported, and the baseline stays the first end(0)
        guard.begin(1)
        kinds = [v.violation for v in sidecar.reports_of(Violation)]
        assert kinds == ["Protocol", "ModifiedBetweenSteps"]
        guard.close()
    finally:
        sidecar.stop()


def test_a_region_that_changes_size_is_a_protocol_violation(sidecar: SidecarProcess) -> None:
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    guard.begin(0)
    guard.end(0)
    region = guard.regions["parameters@cpu"].region
    smaller = region.model_copy(update={"nbytes": region.nbytes - 64, "slots": region.slots[:1]})
    with pytest.raises(IntegrityViolation, match=r"region parameters@cpu changed size from \d+ to \d+ bytes"):
        guard._call(Register(region=smaller))
    assert sidecar.reports_of(Violation)[-1].violation == "Protocol"
    guard.close()


def test_reports_the_operator_cannot_take_yet_are_kept_and_delivered_in_order(tmp_path: Path) -> None:
    """The operator is down while the job trains: no step waits for it, and once it answers
    (after refusing with 503 first), every signed report arrives, in the stream's order."""
    port = free_port()
    sidecar = SidecarProcess(tmp_path / "shared", report_url=f"http://127.0.0.1:{port}/r").start()
    received: list[bytes] = []
    unavailable = [2]  # the first two POSTs that reach it get 503

    class Operator(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if unavailable[0]:
                unavailable[0] -= 1
                self.send_response(503)
            else:
                received.append(body)
                self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Operator)
    try:
        net = model()
        guard = IntegrityGuard(net, socket_path=sidecar.socket)
        started = time.monotonic()
        for step in range(3):
            guard.begin(step)
            guard.end(step)
        assert time.monotonic() - started < 5  # no step waited on the unreachable operator
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stream = sidecar.reports_path.read_text().splitlines()
        wait_for("every report delivered", lambda: len(received) >= len(stream), timeout=60)
        assert [json.loads(b) for b in received] == [json.loads(line) for line in stream]
        guard.close()
    finally:
        server.shutdown()
        sidecar.stop()


def test_an_older_checkpoint_put_back_in_place_of_the_latest_is_refused(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    """A step-10 checkpoint copied over the step-20 one: under the same name (with its manifest)
    it is an older step than the one saved there; under another name, a copy from elsewhere."""
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    latest, old_copy = tmp_path / "latest.pt", tmp_path / "step-10.pt"
    guard.save(net.state_dict(), latest, step=10)
    shutil.copy(latest, old_copy)
    shutil.copy(str(latest) + ".trainguard.json", str(old_copy) + ".trainguard.json")
    guard.save({k: v + 1 for k, v in net.state_dict().items()}, latest, step=20)
    with pytest.raises(
        IntegrityViolation,
        match=r"step-10\.pt: it was saved as .*latest\.pt \(step 10\): a checkpoint copied from elsewhere",
    ):
        guard.load(old_copy)  # its manifest names latest.pt: a copy
    shutil.copy(old_copy, latest)
    shutil.copy(str(old_copy) + ".trainguard.json", str(latest) + ".trainguard.json")
    with pytest.raises(
        IntegrityViolation, match=r"holds the checkpoint of step 10, but step 20 was saved there"
    ):
        guard.load(latest)
    assert sidecar.reports_of(Violation)[-1].violation == "CheckpointRolledBack"
    guard.close()


def test_the_sidecar_checks_the_bytes_the_trainer_loads_not_the_file_again(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    """load() reads the file once and sends the digest of those bytes: a file swapped between the
    check and the load cannot slip in, since what was checked is what is loaded."""
    net = model()
    guard = IntegrityGuard(net, socket_path=sidecar.socket)
    path = tmp_path / "checkpoint.pt"
    guard.save(net.state_dict(), path, step=1)
    other = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(IntegrityViolation, match=r"checkpoint\.pt changed after it was saved"):
        guard._call(Verify(path=str(path), files={"checkpoint.pt": other}))  # the disk is intact
    assert set(guard.load(path)) == set(net.state_dict())
    guard.close()


# ----------------------------------------------------------------- many ranks in one pod
RANK = """
import sys, time
from pathlib import Path
import torch
from trainguard.trainer import IntegrityGuard, IntegrityViolation

sock, barrier = sys.argv[1], Path(sys.argv[5])
rank, ranks, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
guard = IntegrityGuard(net, optimizer, socket_path=sock, rank=rank)
# Every rank holds its connection open before any steps: a sidecar that served one connection at
# a time would never answer the others' hello, and this barrier would never open.
(barrier / f"ready-{rank}").write_text(str(guard.buffer_path))
deadline = time.monotonic() + 120
while len(list(barrier.glob("ready-*"))) < ranks:
    assert time.monotonic() < deadline, "not every rank got its connection answered"
    time.sleep(0.05)
data = torch.Generator().manual_seed(7)  # the same batches everywhere: gradients all-reduced
for step in range(steps):  # the guard checks just before each optimizer.step(), fingerprints just after
    x, y = torch.randn(8, 16, generator=data), torch.randint(0, 4, (8,), generator=data)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
guard.close()
print("rank", rank, "trained", steps, "steps")
"""


def test_eight_ranks_of_one_pod_step_concurrently_against_one_sidecar(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    """`torchrun --nproc-per-node=8`: eight trainer processes, one sidecar, each rank its own
    connection, region files and fingerprints; the data-parallel ranks agree at every step."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    ranks, steps = 8, 5
    trainers = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(sidecar.socket), str(r), str(ranks), str(steps), str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(ranks)
    ]
    for r, trainer in enumerate(trainers):
        out, err = trainer.communicate(timeout=300)
        assert trainer.returncode == 0, f"rank {r}: {err[-3000:]}"
        assert f"rank {r} trained {steps} steps" in out
    files = {r: Path((barrier / f"ready-{r}").read_text()) for r in range(ranks)}
    assert len(set(files.values())) == ranks
    assert all(f"rank{r}" in files[r].name for r in range(ranks))
    assert sidecar.reports_of(Violation) == []
    ends = sidecar.reports_of(StepEnd)
    assert sorted((e.rank, e.step) for e in ends) == [(r, s) for r in range(ranks) for s in range(steps)]
    for step in range(steps):  # the same parameters on every rank, region by region
        assert len({e.fingerprint for e in ends if e.step == step}) == 1
    verified = sidecar.reports_of(Verified)
    assert sorted((v.rank, v.step) for v in verified) == [
        (r, s) for r in range(ranks) for s in range(steps - 1)
    ]
    registered = sidecar.reports_of(Registered)
    assert sorted((r.rank, r.region) for r in registered) == sorted(
        (r, name) for r in range(ranks) for name in ("parameters@cpu", "optimizer@cpu")
    )
    seqs = [r.seq for r in sidecar.reports()]
    assert seqs == list(range(1, len(seqs) + 1))  # one numbered stream, whichever rank reported


def ranked_guards(sidecar: SidecarProcess, ranks: int) -> tuple[list[IntegrityGuard], list[Any], list[Any]]:
    nets = [model(seed=0) for _ in range(ranks)]
    guards = [IntegrityGuard(nets[r], socket_path=sidecar.socket, rank=r) for r in range(ranks)]
    optimizers = [torch.optim.SGD(nets[r].parameters(), lr=0.1) for r in range(ranks)]
    return guards, nets, optimizers


def test_a_tamper_in_one_ranks_region_is_reported_naming_that_rank(sidecar: SidecarProcess) -> None:
    guards, nets, optimizers = ranked_guards(sidecar, 3)
    streams = [torch.Generator().manual_seed(5) for _ in guards]
    for step in range(3):
        for r, guard in enumerate(guards):
            guard.begin(step)
            train_step(nets[r], optimizers[r], streams[r])
            guard.end(step)
    tamper_with(guards[2].buffer_path, 40)
    guards[0].begin(3)
    guards[1].begin(3)
    with pytest.raises(
        IntegrityViolation, match=r"replica 0, rank 2: the weights \(cpu\) changed between the end of step 2"
    ):
        guards[2].begin(3)
    [violation] = sidecar.reports_of(Violation)
    assert (violation.violation, violation.rank, violation.step) == ("ModifiedBetweenSteps", 2, 3)
    for guard in guards:
        guard.close()


def test_one_data_parallel_rank_that_diverges_inside_the_pod_is_named(sidecar: SidecarProcess) -> None:
    guards, nets, optimizers = ranked_guards(sidecar, 3)
    # A tensor-parallel shard (say) is never compared with the replicas.
    shard = IntegrityGuard(model(seed=3), socket_path=sidecar.socket, rank=3, replicated=False)
    streams = [torch.Generator().manual_seed(5) for _ in guards]
    for step in range(3):
        shard.begin(step)
        shard.end(step)
        for r, guard in enumerate(guards):
            guard.begin(step)
            if r == 1 and step == 2:
                streams[1] = torch.Generator().manual_seed(99)  # rank 1 trains on other data from here
            train_step(nets[r], optimizers[r], streams[r])
            if r < 2 or step < 2:
                guard.end(step)
    # ... and rank 2's end completes the pod's comparison of step 2.
    with pytest.raises(
        IntegrityViolation,
        match=r"replica 0: rank 1 disagrees with rank 0, 2 about the weights at the end of step 2",
    ):
        guards[2].end(2)
    [violation] = sidecar.reports_of(Violation)
    assert (violation.violation, violation.rank, violation.step) == ("ReplicaDivergence", 1, 2)
    for guard in [*guards, shard]:
        guard.close()


def test_a_second_connection_for_a_connected_rank_is_refused_and_a_reconnect_is_not(
    sidecar: SidecarProcess,
) -> None:
    first = IntegrityGuard(model(), socket_path=sidecar.socket, rank=5)
    with pytest.raises(
        IntegrityViolation, match="a second connection claims rank 5, which is connected already"
    ):
        IntegrityGuard(model(), socket_path=sidecar.socket, rank=5)
    assert sidecar.reports_of(Violation)[-1].violation == "Protocol"
    first.close()
    again = IntegrityGuard(model(), socket_path=sidecar.socket, rank=5)  # a restarted process
    again.end(0)
    again.close()


def test_a_region_file_swapped_for_a_decoy_does_not_blind_the_sidecar(
    sidecar: SidecarProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack that worked on a sidecar opening regions by path (5 runs of 5): a third process
    puts a decoy file in the region's place between the trainer mapping it and the sidecar
    opening it, then alters the real mapping. The sidecar maps the descriptor the trainer passed,
    so the real memory is what it fingerprints, in every run."""
    import trainguard.trainer.guard as guard_module
    from trainguard.channel import send as real_send

    swapped: list[tuple[Path, int]] = []

    def swap_then_send(sock: socket.socket, message: Any, fds: Any = ()) -> None:
        if isinstance(message, Register) and message.region.path and not swapped:
            path = Path(message.region.path)
            real = os.open(path, os.O_RDWR)  # the saboteur keeps the real file...
            decoy = path.with_name("decoy.bin")
            decoy.write_bytes(path.read_bytes())
            os.rename(decoy, path)  # ... and puts a frozen copy at its name
            swapped.append((path, real))
        real_send(sock, message, fds)

    for run in range(5):
        swapped.clear()
        with monkeypatch.context() as patched:  # the window: mapped by the trainer, not yet by the sidecar
            patched.setattr(guard_module, "send", swap_then_send)
            guard = IntegrityGuard(model(), socket_path=sidecar.socket, rank=0)
        [(path, real)] = swapped
        guard.begin(0)
        guard.end(0)
        frozen = path.read_bytes()
        tamper = "import mmap, sys\nm = mmap.mmap(int(sys.argv[1]), 0); m[100] ^= 1\n"
        subprocess.run([sys.executable, "-c", tamper, str(real)], check=True, timeout=30, pass_fds=[real])
        os.close(real)
        assert path.read_bytes() == frozen  # the decoy never changed
        with pytest.raises(
            IntegrityViolation, match=r"the weights \(cpu\) changed between the end of step 0"
        ):
            guard.begin(1)
        assert len(sidecar.reports_of(Violation)) == run + 1
        guard.close()  # the next run's guard reconnects as rank 0


def test_a_raw_register_of_a_decoy_file_by_path_is_refused(sidecar: SidecarProcess) -> None:
    guard = IntegrityGuard(model(), socket_path=sidecar.socket)
    decoy = sidecar.folder / "decoy.bin"
    decoy.write_bytes(guard.buffer_path.read_bytes())
    region = guard.regions["parameters@cpu"].region.model_copy(update={"path": str(decoy)})
    with pytest.raises(IntegrityViolation, match="a CPU region is shared as an open file descriptor"):
        guard._call(Register(region=region))
    # A descriptor beside a message that takes none is refused too (and closed by the sidecar).
    fd = os.open(decoy, os.O_RDONLY)
    try:
        with pytest.raises(IntegrityViolation, match="a begin message passes no file descriptor"):
            guard._call(Begin(step=0), fds=[fd])
    finally:
        os.close(fd)
    assert [r.kind for r in sidecar.reports()] == ["Registered"]
    guard.close()


def test_a_rank_that_leaves_mid_step_does_not_hold_up_the_pods_comparison(sidecar: SidecarProcess) -> None:
    ranks = [IntegrityGuard(model(seed=r), socket_path=sidecar.socket, rank=r) for r in range(3)]
    ranks[0].end(0)
    ranks[1].end(0)  # other weights (seed 1) than rank 0's; rank 2 never ends step 0
    assert sidecar.reports_of(Violation) == []
    ranks[2].close()  # the crash of rank 2: step 0's comparison is made without it
    wait_for("the comparison without rank 2", lambda: sidecar.reports_of(Violation), timeout=30)
    [violation] = sidecar.reports_of(Violation)
    assert (violation.violation, violation.rank, violation.step) == ("ReplicaDivergence", 1, 0)
    for guard in ranks[:2]:
        guard.close()
