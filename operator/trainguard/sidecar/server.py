"""The weight-verification sidecar: its own process (and container), the only holder of the key.

    python -m trainguard.sidecar --socket /run/trainguard/sidecar.sock \\
        --key-url http://trainguard-integrity.trainguard-system.svc:8082/keys/<namespace>/<job> \\
        --token-file /var/run/trainguard-token/token --replica 0 --mode Enforce \\
        --report /var/lib/trainguard-sidecar/reports.jsonl

(`--key-file <path>` instead of `--key-url`/`--token-file`: a key from a file, for local runs.)

In a pod the key never touches the tenant's namespace: at start the sidecar shows the operator
its projected ServiceAccount token (the job's ServiceAccount, bound to this pod, for the
operator's audience only), and the operator, having checked it with a TokenReview and the pod
with the API server, answers with the job's key, once per pod.

One sidecar serves every trainer process (rank) of its pod, each on its own connection and
thread (`torchrun --nproc-per-node=8`: eight connections); a connection opens with `Hello`, naming
its rank, and the sidecar keeps that rank's regions, step order and fingerprints apart from the
others' (`RankSession`). A second connection for a rank already connected is refused.

Each rank shares its training state once (see `trainguard.trainer`: parameters, buffers and
optimizer state, one flat buffer per kind and device: a file on the shared emptyDir mapped by
both processes, passed to the sidecar as an open descriptor over the socket (SCM_RIGHTS) and
never opened by path, or a GPU allocation opened through its CUDA IPC handle, its size checked
against the real allocation) and signals step boundaries. At the end of step t and at the start
of step t+1 the sidecar fingerprints every region of the rank (on the GPU for GPU regions); a
difference names the kind of state that something changed between steps. Once every connected
data-parallel rank has ended step t, their parameter fingerprints must agree (ReplicaDivergence
names the ranks that differ); the operator compares rank r across the replica pods.
Checkpoints get a manifest of file hashes signed with the key; loading verifies it first.
Every result is appended to the report stream as a line signed with the key, which the trainer
cannot forge (it never sees the key).

In a pod the sidecar runs as its own user: with the pod's process namespace shared (CUDA IPC
needs it), the trainer still cannot read the sidecar's memory, signal it or reach its key.
"""

from __future__ import annotations

import argparse
import base64
import collections
import ctypes
import hashlib
import json
import mmap
import os
import signal
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from trainguard.channel import LineReader, send
from trainguard.integrity.fingerprint import CHUNK_BYTES, FingerprintKey, fingerprint_with_chunks
from trainguard.integrity.manifest import DIRECTORY_MANIFEST, build_manifest, manifest_path, verify_manifest
from trainguard.integrity.protocol import (
    REPLICATED_KINDS,
    Adjust,
    Begin,
    Checkpoint,
    End,
    Hello,
    ProtocolError,
    Region,
    Register,
    Reply,
    Request,
    StepSequence,
    Verify,
    ViolationNotice,
    control_changes,
    parse_request,
    region_kind,
    tensors_in_chunks,
)
from trainguard.integrity.replicas import diverging_replicas
from trainguard.integrity.reports import (
    KEEP_STEPS,
    Adjusted,
    CheckpointSigned,
    Registered,
    Report,
    StepEnd,
    Verified,
    Violation,
    sign_report,
)

MODES = ("Off", "Audit", "Enforce")
R = TypeVar("R", Registered, StepEnd, Verified, Violation, Adjusted, CheckpointSigned)
# Checked steps in a row in which the weights did not change at all before it is reported: an
# optimizer that updates nothing, or a region that is not the memory training uses (a decoy).
FROZEN_CHECKS = 3
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
RECONNECT_GRACE = 2.0  # seconds a rank's new connection waits for its old one to be seen closed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _OpenRegion:
    """A region of the trainer's state as the sidecar reads it: mapped file or CUDA allocation.

    A CPU region is mapped from `fd`, the descriptor of the very file the trainer mapped, passed
    over the socket (the caller closes it): no path is ever opened, so no file put in the
    region's place afterwards is what the sidecar reads."""

    def __init__(self, region: Region, fd: int | None = None) -> None:
        self.region = region
        self._mmap: mmap.mmap | None = None
        self._cuda: Any = None  # torch.Tensor, only when the trainer shares GPU memory
        self._device: Any = None
        if region.cuda is None:
            if fd is None:
                raise ProtocolError(
                    f"region {region.name}: a CPU region is shared as an open file descriptor "
                    "beside the register message, not by path"
                )
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ProtocolError(f"region {region.name}: the descriptor is not a regular file")
            if info.st_size < region.nbytes:
                raise ProtocolError(f"region {region.name}: the file is smaller than nbytes")
            self._mmap = mmap.mmap(fd, region.nbytes, prot=mmap.PROT_READ)
        else:
            self._cuda, self._device = open_cuda_region(region)

    def fingerprint(self, key: FingerprintKey) -> tuple[str, Any]:
        """The keyed fingerprint of the whole buffer (on the GPU for CUDA regions, same value),
        and its secret per-chunk terms, kept to name what changed."""
        if self._mmap is not None:
            return fingerprint_with_chunks(key, np.frombuffer(self._mmap, dtype=np.uint8))
        from trainguard.gpu import kernel

        return kernel.fingerprint_with_chunks(key, self._cuda, self._device)

    def changed_tensors(self, before: Any, after: Any) -> list[str]:
        """Names of the tensors in the chunks whose terms differ between two fingerprints."""
        if isinstance(before, np.ndarray):
            chunks = np.flatnonzero((before != after).any(axis=1)).tolist()
        else:
            chunks = (before != after).any(dim=1).nonzero().flatten().tolist()
        return tensors_in_chunks(self.region.slots, chunks, CHUNK_BYTES)


def open_cuda_region(region: Region) -> tuple[Any, Any]:
    """Open the trainer's GPU region through its IPC handle, on the GPU with the same UUID."""
    import torch

    from trainguard.gpu import cuda_ipc

    cuda = region.cuda
    assert cuda is not None
    if not torch.cuda.is_available():
        raise ProtocolError("the trainer shares GPU memory but the sidecar sees no GPU")
    uuids = gpu_uuids()
    if cuda.uuid not in uuids:
        raise ProtocolError(
            f"the sidecar cannot see the trainer's GPU {cuda.uuid} (it sees {', '.join(uuids) or 'none'}): "
            "give the sidecar container access to the pod's GPUs"
        )
    index = uuids.index(cuda.uuid)
    try:
        flat = cuda_ipc.open_shared(cuda.handle, region.nbytes, index)
    except cuda_ipc.CudaIpcError as exc:
        raise ProtocolError(f"region {region.name}: {exc}") from exc
    return flat, torch.device("cuda", index)


def name_tensors(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe(region: str) -> str:
    """'weights (cuda:0)' for 'parameters@cuda:0': what a researcher reads in the violation."""
    kind, device = region.split("@", 1)
    words = {"parameters": "weights", "buffers": "model buffers", "optimizer": "optimizer state"}
    return f"{words.get(kind, kind)} ({device})"


def visible_gpus() -> tuple[list[str], str]:
    """The UUIDs of the GPUs this process sees, and where that list came from (the environment
    the container runtime acted on): what the sidecar logs at start. No CUDA, no GPUs."""
    source = ", ".join(
        f"{name}={os.environ[name]}"
        for name in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
        if name in os.environ
    )
    if source:
        source = f"the container runtime's device list: {source}"
    elif Path("/dev/nvidiactl").exists():
        source = "no NVIDIA_VISIBLE_DEVICES or CUDA_VISIBLE_DEVICES set: every GPU of the host"
    else:
        return [], "no NVIDIA_VISIBLE_DEVICES or CUDA_VISIBLE_DEVICES, no NVIDIA device: no GPU given"
    try:
        import torch
    except ImportError:
        return [], f"{source}, but this image has no PyTorch to open them"
    if not torch.cuda.is_available():
        return [], f"{source}, but CUDA sees no device"
    return gpu_uuids(), source


def gpu_uuids() -> list[str]:
    """The UUIDs of the GPUs CUDA shows this process, in device-index order."""
    import torch

    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


class RankSession:
    """One trainer process (rank) of the pod, on its own connection: its regions, its step order
    and the fingerprints of its latest end of step."""

    def __init__(self, rank: int, replicated: bool) -> None:
        self.rank = rank
        self.replicated = replicated  # its parameters are a data-parallel replica of the others'
        self.regions: dict[str, _OpenRegion] = {}
        self.at_end: dict[int, dict[str, tuple[str, Any]]] = {}
        self.steps = StepSequence()
        # What its next step must start with (the last end's hyperparameters and generators, then
        # each announced adjustment); None until an end carries them.
        self.expected: dict[str, int | float] | None = None
        self.last_weights: dict[str, str] = {}  # parameters region -> fingerprint at the last checked end
        self.frozen = 0  # checked ends in a row at which no parameters region had changed

    def fingerprints(self, key: FingerprintKey) -> dict[str, tuple[str, Any]]:
        """Per region, in name order: its fingerprint and per-chunk terms."""
        if not self.regions:
            raise ProtocolError("the trainer has not registered its weights")
        return {name: self.regions[name].fingerprint(key) for name in sorted(self.regions)}


class ReportSender:
    """Delivers signed report lines to the operator, in order, from its own thread: a step never
    waits for the network. A line that cannot be delivered (the operator restarting, a network
    blip) is kept and tried again with back-off, so a verdict is never lost to a failed POST;
    the operator, for its part, counts a long silence as a violation (ReportsStopped)."""

    def __init__(
        self, url: str, first_delay: float = 0.5, max_delay: float = 30.0, max_kept: int = 100_000
    ) -> None:
        self.url = url
        self.first_delay, self.max_delay = first_delay, max_delay
        self.max_kept = max_kept
        self.dropped = 0
        self._lines: collections.deque[str] = collections.deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="report-sender", daemon=True)
        self._thread.start()

    def send(self, line: str) -> None:
        with self._ready:
            if len(self._lines) >= self.max_kept:
                self._lines.popleft()  # bounded: an operator gone for days does not fill memory
                self.dropped += 1
            self._lines.append(line)
            self._ready.notify()

    def pending(self) -> int:
        with self._ready:
            return len(self._lines)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every kept line to be delivered."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.pending()

    def _post(self, line: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked by the Sidecar
            self.url, data=line.encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 - the operator's endpoint

    def _run(self) -> None:
        delay = self.first_delay
        while True:
            with self._ready:
                while not self._lines:
                    self._ready.wait()
                line = self._lines[0]
            try:
                self._post(line)
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    # Refused for what it is (a report of another job, a key that changed): sending
                    # it again changes nothing; the local report stream still has it.
                    print(f"sidecar: report refused by the operator: {exc.code}", file=sys.stderr, flush=True)
                    self._done(line)
                    continue
                self._back_off(f"the operator answered {exc.code}", delay)
                delay = min(delay * 2, self.max_delay)
                continue
            except OSError as exc:
                self._back_off(str(exc), delay)
                delay = min(delay * 2, self.max_delay)
                continue
            delay = self.first_delay
            self._done(line)

    def _done(self, line: str) -> None:
        with self._ready:
            if self._lines and self._lines[0] is line:
                self._lines.popleft()

    def _back_off(self, problem: str, delay: float) -> None:
        print(
            f"sidecar: report not delivered ({problem}); {self.pending()} kept, retrying in {delay:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(delay)


class Sidecar:
    def __init__(
        self,
        key: bytes,
        replica: int,
        mode: str,
        every_steps: int,
        report_path: Path | None,
        report_url: str | None = None,
        folder: Path | None = None,
        key_dir: Path | None = None,
        job_uid: str = "",
        attempt: int = 0,
    ) -> None:
        if report_url and not report_url.startswith(("http://", "https://")):
            raise ValueError(f"--report-url must be http(s), got {report_url!r}")
        self.report_url = report_url
        self.sender = ReportSender(report_url) if report_url else None
        self.key = key
        self.fp_key = FingerprintKey.from_secret(key)
        self.replica = replica
        self.job_uid, self.attempt = job_uid, attempt
        self.boot, self.seq = os.urandom(8).hex(), 0
        self.mode = mode
        self.every = every_steps
        self.report_path = report_path
        self.folder = folder or Path.cwd()  # the shared emptyDir: CPU regions must be files in it
        self.key_dir = key_dir.resolve() if key_dir else None
        self.sessions: dict[int, RankSession] = {}  # the ranks connected now
        # step -> rank -> the replicated fingerprint, until every connected data-parallel rank ended it
        self.pod_ends: dict[int, dict[int, str]] = {}
        self.latest: dict[str, int] = {}  # checkpoint path -> the highest step signed there
        # Connections run on their own threads: reports (one numbered stream), the connected
        # ranks, the pod's comparison and the checkpoint steps are shared between them.
        self._lock = threading.RLock()
        self._left = threading.Condition(self._lock)  # a rank's connection closed

    # ----------------------------------------------------------------- results
    def report(self, report: Report) -> None:
        """Number `report` (the next of this boot), sign it, append it to the report stream and
        POST it to the operator: in the stream's order, whichever connection reports."""
        with self._lock:
            self.seq += 1
            report = report.model_copy(update={"seq": self.seq})
            line = json.dumps(sign_report(self.key, report), sort_keys=True)
            if self.report_path is not None:
                with self.report_path.open("a") as f:
                    f.write(line + "\n")
            if self.sender is not None:
                self.sender.send(line)

    def stamped(self, kind: type[R], **fields: Any) -> R:
        """A report of this sidecar: its job, attempt and boot, and now (`report` numbers it)."""
        return kind(
            job=self.job_uid, attempt=self.attempt, boot=self.boot, seq=0, replica=self.replica,
            time=time.time(), **fields,
        )  # fmt: skip

    def violation(
        self,
        kind: str,
        step: int | None,
        message: str,
        tensors: dict[str, list[str]] | None = None,
        *,
        rank: int = 0,
    ) -> Reply:
        self.report(
            self.stamped(Violation, rank=rank, step=step, violation=kind, message=message, tensors=tensors)
        )  # fmt: skip
        notice = ViolationNotice(kind=kind, step=step, message=message)
        return Reply(ok=self.mode != "Enforce", violation=notice)

    # ----------------------------------------------------------------- state
    @staticmethod
    def replicated(fingerprints: dict[str, str]) -> str:
        """What data-parallel replicas must agree on: the parameters (one fingerprint per device)."""
        parts = {name: fp for name, fp in fingerprints.items() if region_kind(name) in REPLICATED_KINDS}
        if len(parts) == 1:
            return next(iter(parts.values()))
        return hashlib.sha256(",".join(f"{name}={fp}" for name, fp in parts.items()).encode()).hexdigest()

    def checked_path(self, raw: str) -> Path:
        """A checkpoint path from the trainer: a regular file or a directory, never the key."""
        path = Path(raw).resolve()
        if self.key_dir is not None and (
            path.is_relative_to(self.key_dir) or self.key_dir.is_relative_to(path)
        ):
            raise ProtocolError(f"{raw!r} is not a checkpoint")
        if not (path.is_file() or path.is_dir()):
            raise ProtocolError(f"{raw!r} is not a file or directory")
        return path

    @staticmethod
    def checkpoint_files(path: Path) -> dict[str, str]:
        """SHA-256 of every file of a checkpoint: the file itself, or every file under a directory
        (names relative to it, the manifest excepted). Links are refused: they could point anywhere."""
        if path.is_file():
            return {path.name: file_sha256(path)}
        files = {}
        for item in sorted(path.rglob("*")):
            name = item.relative_to(path).as_posix()
            if item.is_symlink():
                raise ProtocolError(
                    f"{path.name}/{name} is a symbolic link; checkpoints hold regular files only"
                )
            if item.is_file() and name != DIRECTORY_MANIFEST:
                files[name] = file_sha256(item)
        return files

    def handle(self, session: RankSession | None, message: object, fds: list[int] | None = None) -> Reply:
        """The answer to one message from the trainer, as it came off the socket with the
        descriptors beside it (closed here), on a connection whose rank is `session` (None
        before its `Hello`; `connect` answers that one)."""
        fds = list(fds or [])
        try:
            request = parse_request(message, self.folder)
            if isinstance(request, Hello):
                raise ProtocolError("the connection already said hello")
            if session is None:
                raise ProtocolError("the first message of a connection must be hello (its rank)")
            if isinstance(request, Register):
                if len(fds) > 1 or (fds and request.region.cuda is not None):
                    raise ProtocolError("a register message passes one descriptor, for a CPU region only")
                return self.register(session, request.region, fds[0] if fds else None)
            if fds:
                raise ProtocolError(f"a {request.op} message passes no file descriptor")
            return self._handle(session, request)
        except ProtocolError as exc:
            return Reply(ok=False, error=str(exc))
        finally:
            for fd in fds:
                os.close(fd)

    def _handle(self, session: RankSession, request: Request) -> Reply:
        if isinstance(request, End):
            return self.end(session, request.step, request.controls)
        if isinstance(request, Begin):
            return self.begin(session, request.step, request.controls)
        if isinstance(request, Adjust):
            return self.adjust(session, request)
        if isinstance(request, Checkpoint):
            return self.sign_checkpoint(request.path, request.step, rank=session.rank)
        if isinstance(request, Verify):
            return self.verify_checkpoint(request.path, request.files, rank=session.rank)
        raise ProtocolError(f"unexpected {request.op} message")

    def connect(self, message: object) -> tuple[RankSession | None, Reply]:
        """The rank a connection's first message (`Hello`) claims, or why it is refused. A rank
        has one connection at a time: a second one while the first is open is a protocol
        violation (another process speaking for that rank); after it closed, a reconnect (a
        rank's old connection gets `RECONNECT_GRACE` seconds to be seen closing)."""
        try:
            request = parse_request(message, self.folder)
        except ProtocolError as exc:
            return None, Reply(ok=False, error=str(exc))
        if not isinstance(request, Hello):
            return None, Reply(ok=False, error="the first message of a connection must be hello (its rank)")
        with self._left:
            self._left.wait_for(lambda: request.rank not in self.sessions, timeout=RECONNECT_GRACE)
            if request.rank in self.sessions:
                reply = self.violation(
                    "Protocol",
                    None,
                    f"replica {self.replica}: a second connection claims rank {request.rank}, which is "
                    "connected already; one trainer process per rank",
                    rank=request.rank,
                )
                return None, reply.model_copy(update={"ok": False})
            session = RankSession(request.rank, request.replicated)
            self.sessions[request.rank] = session
        return session, Reply(ok=True)

    def disconnect(self, session: RankSession) -> None:
        """Forget a closed connection's rank; the pod's comparisons that waited only for it are
        made without it."""
        with self._left:
            if self.sessions.get(session.rank) is session:
                del self.sessions[session.rank]
                self._left.notify_all()
            complete = [step for step in sorted(self.pod_ends) if self._complete(step)]
            ends = [(step, self.pod_ends.pop(step)) for step in complete]
        for step, fingerprints in ends:
            self._compare(step, fingerprints)

    def _complete(self, step: int) -> bool:
        """Has every connected data-parallel rank ended `step`? (Called with the lock held.)"""
        expected = {rank for rank, s in self.sessions.items() if s.replicated}
        return expected <= set(self.pod_ends.get(step, {}))

    def protocol(self, session: RankSession, step: int | None, problem: str) -> Reply:
        return self.violation(
            "Protocol",
            step,
            f"{self.who(session)}: {problem}; the sidecar's checks rely on that order",
            rank=session.rank,
        )

    def who(self, session: RankSession) -> str:
        """'replica 0' for a one-process pod (as before ranks), else 'replica 0, rank 3'."""
        if session.rank == 0 and len(self.sessions) <= 1:
            return f"replica {self.replica}"
        return f"replica {self.replica}, rank {session.rank}"

    def register(self, session: RankSession, region: Region, fd: int | None = None) -> Reply:
        known = session.regions.get(region.name)
        if known is not None and known.region.nbytes != region.nbytes:
            # Tensors that training code replaces are shared again at the same size; a region that
            # grows or shrinks is another state, and would reset the baseline unseen.
            return self.protocol(
                session,
                session.steps.current,
                f"region {region.name} changed size from {known.region.nbytes} to {region.nbytes} bytes",
            )
        session.regions[region.name] = _OpenRegion(region, fd)
        self.report(
            self.stamped(
                Registered, rank=session.rank, region=region.name, tensors=len(region.slots),
                bytes=region.nbytes,
            )
        )  # fmt: skip
        return Reply(ok=True)

    def end(self, session: RankSession, step: int, controls: dict[str, int | float] | None = None) -> Reply:
        problem = session.steps.end(step)
        if problem is not None:  # the baseline stays the last one taken in order
            return self.protocol(session, step, problem)
        if controls is not None:
            session.expected = dict(controls)
        if step % self.every == 0:
            started = time.perf_counter()
            state = session.fingerprints(self.fp_key)
            seconds = time.perf_counter() - started
            session.at_end = {step: state}  # only the latest step is compared
            fps = {name: fp for name, (fp, _) in state.items()}
            fingerprint = self.replicated(fps)
            report = self.stamped(
                StepEnd, rank=session.rank, step=step, fingerprint=fingerprint, regions=fps, seconds=seconds,
                controls=controls,
            )  # fmt: skip
            self.report(report)
            frozen = self.still_training(session, step, fps)
            if session.replicated:
                compared = self.compare_ranks(session, step, fingerprint)
                return compared if compared.violation is not None else frozen
            return frozen
        return Reply(ok=True)

    def still_training(self, session: RankSession, step: int, fps: dict[str, str]) -> Reply:
        """Weights that never change while steps go on are reported: the optimizer updates nothing,
        or the sidecar is watching memory that training does not use (a decoy region)."""
        weights = {name: fp for name, fp in fps.items() if region_kind(name) in REPLICATED_KINDS}
        unchanged = bool(weights) and weights == session.last_weights
        session.last_weights = weights
        session.frozen = session.frozen + 1 if unchanged else 0
        if session.frozen != FROZEN_CHECKS:  # once per streak
            return Reply(ok=True)
        what = " and ".join(describe(n) for n in weights)
        return self.violation(
            "StateFrozen",
            step,
            f"{self.who(session)}: the {what} did not change in {FROZEN_CHECKS} checked steps up to "
            f"step {step}: the optimizer updates none of them, or the memory the trainer shared is not "
            "the memory that trains",
            rank=session.rank,
        )

    def adjust(self, session: RankSession, request: Adjust) -> Reply:
        """Hyperparameters or generators changed on purpose between steps: `before` must be what the
        last step left; `after` is what the next one must start with."""
        problem = session.steps.adjust()
        if problem is not None:
            return self.protocol(session, session.steps.current, problem)
        step = session.steps.last_end
        if session.expected is not None:
            unannounced = control_changes(session.expected, request.before)
            if unannounced:
                return self.changed_controls(
                    session, step, unannounced, f"before {request.reason} adjusted them after step {step}"
                )
        made = control_changes(request.before, request.after)
        changes = [text for texts in made.values() for text in texts]
        session.expected = dict(request.after)
        self.report(
            self.stamped(Adjusted, rank=session.rank, step=step, reason=request.reason, changes=changes)
        )  # fmt: skip
        return Reply(ok=True)

    def changed_controls(
        self, session: RankSession, step: int | None, changes: dict[str, list[str]], when: str
    ) -> Reply:
        """A Hyperparameters or RandomState violation (the first kind found; the message lists all)."""
        kinds = {"Hyperparameters": "hyperparameters", "RandomState": "random generators"}
        what = " and the ".join(kinds[kind] for kind in changes)
        listed = "; ".join(text for texts in changes.values() for text in texts)
        return self.violation(
            next(iter(changes)),
            step,
            f"{self.who(session)}: the {what} changed {when}, unannounced ({listed}); change them "
            "through a scheduler passed to IntegrityGuard(schedulers=...) or inside guard.adjusting()",
            rank=session.rank,
        )

    def compare_ranks(self, session: RankSession, step: int, fingerprint: str) -> Reply:
        """Once every connected data-parallel rank has ended `step`, their parameters must agree:
        a violation names the ranks that differ from the majority (rank 0's side when there is
        none), reported, and answered to the rank whose end completed the comparison."""
        with self._lock:
            self.pod_ends.setdefault(step, {})[session.rank] = fingerprint
            for old in sorted(self.pod_ends)[:-KEEP_STEPS]:
                del self.pod_ends[old]
            if not self._complete(step):
                return Reply(ok=True)
            ends = self.pod_ends.pop(step)
        return self._compare(step, ends)

    def _compare(self, step: int, ends: dict[int, str]) -> Reply:
        odd = diverging_replicas(ends)
        if not odd:
            return Reply(ok=True)
        names = ", ".join(str(r) for r in odd)
        agree = ", ".join(str(r) for r in sorted(set(ends) - set(odd)))
        return self.violation(
            "ReplicaDivergence",
            step,
            f"replica {self.replica}: rank {names} disagrees with rank {agree} about the weights at the "
            f"end of step {step} (data-parallel ranks of one pod hold the same parameters)",
            rank=odd[0],
        )

    def begin(self, session: RankSession, step: int, controls: dict[str, int | float] | None = None) -> Reply:
        problem = session.steps.begin(step)
        if problem is not None:
            return self.protocol(session, step, problem)
        # A changed control is reported here, and the weights are compared anyway: a changed
        # weight answers the trainer before it.
        controls_changed: Reply | None = None
        if session.expected is not None and controls is not None:
            changes = control_changes(session.expected, controls)
            if changes:
                session.expected = dict(controls)  # reported once; Audit goes on from what is there
                when = f"between the end of step {step - 1} and the start of step {step}"
                controls_changed = self.changed_controls(session, step, changes, when)
        previous = session.at_end.get(step - 1)
        if previous is None:
            return controls_changed or Reply(ok=True)
        now = session.fingerprints(self.fp_key)
        changed: dict[str, list[str]] = {}
        for name in sorted(set(previous) | set(now)):
            if name not in previous or name not in now:
                changed[name] = []
            elif previous[name][0] != now[name][0]:
                changed[name] = session.regions[name].changed_tensors(previous[name][1], now[name][1])
        if changed:
            what = " and ".join(describe(n) for n in changed)
            where = "; ".join(f"{describe(n)}: {name_tensors(t)}" for n, t in changed.items() if t)
            return self.violation(
                "ModifiedBetweenSteps",
                step,
                f"{self.who(session)}: the {what} changed between the end of step {step - 1} "
                f"and the start of step {step}" + (f" ({where})" if where else ""),
                tensors=changed,
                rank=session.rank,
            )
        if controls_changed is not None:
            return controls_changed
        self.report(self.stamped(Verified, rank=session.rank, step=step - 1))
        return Reply(ok=True)

    def sign_checkpoint(self, raw_path: str, step: int | None, *, rank: int = 0) -> Reply:
        path = self.checked_path(raw_path)
        files = self.checkpoint_files(path)
        manifest = build_manifest(self.key, files, step, path=str(path))
        if step is not None:
            with self._lock:
                self.latest[str(path)] = max(step, self.latest.get(str(path), step))
        self.report(
            self.stamped(CheckpointSigned, rank=rank, step=step, checkpoint=path.name, files=len(files))
        )  # fmt: skip
        return Reply(ok=True, manifest=manifest)

    def verify_checkpoint(self, raw_path: str, read: dict[str, str] | None = None, *, rank: int = 0) -> Reply:
        path = self.checked_path(raw_path)
        signed = manifest_path(path)
        if not signed.is_file():
            message = f"{path.name} has no signed manifest"
            return self.violation("CheckpointUnsigned", None, message, rank=rank)
        try:
            manifest = json.loads(signed.read_text())
        except ValueError:
            manifest = {}
        actual = read if read is not None else self.checkpoint_files(path)
        problems = verify_manifest(self.key, manifest, actual, path=str(path))
        if problems:
            return self.violation(
                "CheckpointModified", None, f"{path.name}: {'; '.join(problems)}", rank=rank
            )  # fmt: skip
        step, latest = manifest.get("step"), self.latest.get(str(path))
        if isinstance(step, int) and latest is not None and step < latest:
            return self.violation(
                "CheckpointRolledBack",
                step,
                f"{path.name} holds the checkpoint of step {step}, but step {latest} was saved there "
                "since: an older checkpoint was put back in its place",
                rank=rank,
            )
        return Reply(ok=True)

    def serve(self, socket_path: Path) -> None:
        socket_path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(socket_path))
        # The trainer runs as another user of the pod's group: it may connect, nothing more.
        socket_path.chmod(0o660)
        server.listen(64)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=self.serve_connection, args=(conn,), name="rank", daemon=True).start()

    def serve_connection(self, conn: socket.socket) -> None:
        """One trainer process, from its hello until it closes (on its own thread)."""
        session: RankSession | None = None
        with conn:
            reader = LineReader(conn)
            try:
                while True:
                    message, fds = reader.read_with_fds()
                    if message is None:
                        break
                    if session is None:
                        for fd in fds:
                            os.close(fd)
                        session, reply = self.connect(message)
                    else:
                        reply = self.handle(session, message, fds)
                    send(conn, reply)
            except (ValueError, OSError) as exc:  # garbage or a dropped peer: this connection only
                print(f"sidecar: connection closed: {exc}", file=sys.stderr, flush=True)
            finally:
                reader.close()
                if session is not None:
                    self.disconnect(session)


def harden_process() -> int:
    """Mark this process not dumpable: /proc/<pid>/mem, /environ, /root and ptrace are then closed
    to every process without CAP_SYS_PTRACE, the trainer and anything exec'd beside it included,
    whatever user they run as. Returns the dumpable flag now (0)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    return int(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def probe(socket_path: Path) -> int:
    """0 once the sidecar accepts connections on its socket (the pod's startup probe)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(1)
    try:
        client.connect(str(socket_path))
    except OSError:
        return 1
    finally:
        client.close()
    return 0


class NoKey(RuntimeError):
    """The operator did not hand over the job's key: the sidecar cannot run."""


# Statuses worth asking again for: the operator is starting, or has not made the job's key yet.
RETRY_STATUSES = frozenset({404, 429, 500, 502, 503, 504})
KEY_ATTEMPTS = 6
KEY_FIRST_DELAY = 0.5  # seconds; doubled after each failed attempt (about 15 s in all)


def fetch_key(
    url: str, token_file: Path, attempts: int = KEY_ATTEMPTS, first_delay: float = KEY_FIRST_DELAY
) -> bytes:
    """The job's key from the operator, in exchange for this pod's ServiceAccount token (bound to
    the pod, for the operator's audience). Retries unreachable or not-yet-ready answers with
    back-off; a refusal is final (the operator hands a pod its key once)."""
    if not url.startswith(("http://", "https://")):
        raise NoKey(f"--key-url must be http(s), got {url!r}")
    problem = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(first_delay * 2 ** (attempt - 1))
        try:
            token = token_file.read_text().strip()  # read again each time: the kubelet rotates it
        except OSError as exc:
            problem = f"cannot read the pod's token {token_file}: {exc}"
            continue
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            url, data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - the operator's endpoint
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace").strip()
            problem = f"the operator answered {exc.code}: {text}"
            if exc.code not in RETRY_STATUSES:
                raise NoKey(problem) from exc
            continue
        except (OSError, ValueError) as exc:  # unreachable, or not JSON
            problem = f"no answer from the operator: {exc}"
            continue
        try:
            key = base64.b64decode(body["key"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise NoKey(f"the operator's answer holds no key: {exc}") from exc
        if len(key) < 32:
            raise NoKey(f"the operator's key is {len(key)} bytes, fewer than 32")
        return key
    raise NoKey(f"{problem} (after {attempts} attempts)")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--probe"] and len(argv) == 2:
        return probe(Path(argv[1]))
    parser = argparse.ArgumentParser(prog="trainguard-sidecar")
    parser.add_argument("--socket", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--key-file", type=Path, help="the job's 32-byte integrity key (local runs, tests)")
    source.add_argument("--key-url", help="ask the operator here for the job's key (in a pod)")
    parser.add_argument(
        "--token-file", type=Path, help="with --key-url: the pod's projected ServiceAccount token"
    )
    parser.add_argument("--replica", type=int, default=0)
    parser.add_argument("--job-uid", default="", help="the TrainingJob's uid, carried in every report")
    parser.add_argument("--attempt", type=int, default=0, help="the job's attempt this pod belongs to")
    parser.add_argument("--mode", choices=MODES, default="Audit")
    parser.add_argument("--every-steps", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="append signed reports here")
    parser.add_argument("--report-url", default=None, help="POST signed reports to the operator here")
    args = parser.parse_args(argv)
    if args.key_url and args.token_file is None:
        parser.error("--key-url needs --token-file")
    harden_process()  # before the key is read
    gpus, gpu_source = visible_gpus()
    print(
        f"sidecar: sees GPUs {', '.join(gpus) or 'none'} ({gpu_source}); it opens a GPU region only on "
        "one of these, and only through an IPC handle exported by a process of this pod",
        file=sys.stderr,
        flush=True,
    )
    if args.key_file is not None:
        key, private_dir = args.key_file.read_bytes(), args.key_file.parent
    else:
        try:
            key = fetch_key(args.key_url, args.token_file)
        except NoKey as exc:
            print(
                f"sidecar: no integrity key for this pod from {args.key_url}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return 3
        private_dir = args.token_file.parent
    sidecar = Sidecar(
        key, args.replica, args.mode, args.every_steps, args.report, args.report_url,
        folder=args.socket.parent, key_dir=private_dir, job_uid=args.job_uid, attempt=args.attempt,
    )  # fmt: skip
    # Stopped (the job ends, Enforce stops it): deliver what is kept first, for a few seconds.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sidecar.serve(args.socket)
    finally:
        if sidecar.sender is not None and not sidecar.sender.flush(timeout=5):
            print(f"sidecar: {sidecar.sender.pending()} reports not delivered", file=sys.stderr, flush=True)
    return 0
