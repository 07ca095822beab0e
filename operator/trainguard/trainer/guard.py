"""What a training script imports (PyTorch): share the training state with the sidecar, mark steps.

    from trainguard.trainer import IntegrityGuard

    guard = IntegrityGuard(model, optimizer, schedulers=[scheduler],
                           generators=IntegrityGuard.default_generators())
    for batch in data:
        loss(model(batch)).backward()
        optimizer.step()       # the guard checks the state just before, fingerprints it just after
        scheduler.step()       # a watched scheduler's changes are announced, not alarms

Weights change legitimately only inside `optimizer.step()`, so that is the only window left
unchecked: the guard hooks the optimizer (`register_step_pre_hook`/`register_step_post_hook`),
and the sidecar compares the state just before each `optimizer.step()` with what it fingerprinted
just after the previous one. A change made during data loading, forward or backward is caught
at the next step. What the optimizer will do next is checked the same way: every param group's
hyperparameters (learning rate, betas, weight decay, flags such as `maximize`, how many
parameters) and the seeds and offsets of the generators passed as `generators`. Change them on
purpose through a scheduler passed as `schedulers`, or inside `with guard.adjusting("why"):`;
any other change between two steps is a violation. Without an optimizer, the training loop
marks steps itself with `guard.begin(step)` and `guard.end(step)` around its weight update.

What the sidecar sees: the parameters, the buffers (batch-norm statistics and the like) and, from
the first `optimizer.step()` on, the optimizer's state (moments, step counts). Each kind is moved
once into one flat buffer per device, a *region*, and trains there: `param.data`, the modules'
buffers and `optimizer.state` point into it, so the sidecar reads the very memory that trains.

- CPU tensors: the region is a file on the shared emptyDir, mapped by both processes; the
  trainer passes its open descriptor over the socket (SCM_RIGHTS), so the sidecar maps the very
  file the trainer trains in, whatever is put at its path afterwards.
- CUDA tensors: the region is one device allocation, shared once through its CUDA IPC handle; the
  sidecar opens it on the same GPU (found by UUID) and fingerprints it there, at memory bandwidth.

Every process of the pod (`torchrun --nproc-per-node=8`: eight ranks) has its own guard and its
own connection to the pod's one sidecar, and says first which rank it is (`rank`, default
torchrun's LOCAL_RANK) and whether its parameters are a data-parallel replica of the other
ranks' (`replicated`, default True; tensor- or pipeline-parallel shards pass False). The sidecar
compares the replicated ranks' parameters at the end of every step.

If training code replaces a shared tensor (`load_state_dict(assign=True)`, an optimizer that
rebuilds its state), `end()` notices and shares that region again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import json
import mmap
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainguard.channel import LineReader, send
from trainguard.gpu import cuda_ipc
from trainguard.integrity.manifest import manifest_path
from trainguard.integrity.protocol import (
    Adjust,
    Begin,
    Checkpoint,
    CudaHandle,
    End,
    Hello,
    ProtocolError,
    Region,
    Register,
    Reply,
    Request,
    Verify,
    layout,
    parse_reply,
    region_name,
)


class IntegrityViolation(RuntimeError):
    """The sidecar found a violation and the job runs in Enforce mode."""


@dataclass(frozen=True)
class _Entry:
    """One tensor of the training state, and how to point its owner at a new place."""

    name: str
    get: Callable[[], torch.Tensor | None]
    put: Callable[[torch.Tensor], None]


def _parameters(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> list[_Entry]:
    """The model's parameters, then any the optimizer updates that the model does not hold (a
    tensor slipped into a param group trains too, so it is watched too)."""

    def entry(name: str, param: torch.Tensor) -> _Entry:
        return _Entry(name, lambda: param.data, lambda view: setattr(param, "data", view))

    entries = [entry(name, param) for name, param in model.named_parameters()]
    seen = {id(param) for param in model.parameters()}
    for g, group in enumerate(optimizer.param_groups if optimizer is not None else ()):
        for i, param in enumerate(group["params"]):
            if id(param) not in seen:
                seen.add(id(param))
                entries.append(entry(f"optimizer.group{g}.{i}", param))
    return entries


def _buffers(model: torch.nn.Module) -> list[_Entry]:
    def entry(name: str, module: torch.nn.Module, attr: str) -> _Entry:
        table = module._buffers
        return _Entry(name, lambda: table.get(attr), lambda view: table.__setitem__(attr, view))

    seen: set[int] = set()
    entries = []
    for prefix, module in model.named_modules():
        for attr, buffer in module._buffers.items():
            if buffer is None or id(buffer) in seen:
                continue
            seen.add(id(buffer))
            entries.append(entry(f"{prefix}.{attr}" if prefix else attr, module, attr))
    return entries


def _optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[_Entry]:
    names = {id(p): name for name, p in model.named_parameters()}

    def entry(name: str, state: dict[str, Any], key: str) -> _Entry:
        return _Entry(name, lambda: state.get(key), lambda view: state.__setitem__(key, view))

    entries = []
    for g, group in enumerate(optimizer.param_groups):
        for i, param in enumerate(group["params"]):
            state = optimizer.state.get(param)
            if not state:
                continue
            owner = names.get(id(param), f"group{g}.{i}")
            entries += [
                entry(f"{owner}.{key}", state, key)
                for key in sorted(state)
                if isinstance(state[key], torch.Tensor)
            ]
    return entries


def _add_control(values: dict[str, int | float], name: str, value: object) -> None:
    if isinstance(value, bool):
        values[name] = int(value)
    elif isinstance(value, int | float):
        values[name] = value
    elif isinstance(value, torch.Tensor) and value.numel() == 1:  # a learning rate kept as a tensor
        values[name] = value.item()
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            _add_control(values, f"{name}.{i}", item)
    # None and text (foreach=None, a name) are configuration that does not steer the update.


def controls(
    optimizer: torch.optim.Optimizer | None, generators: Mapping[str, torch.Generator]
) -> dict[str, int | float]:
    """What the optimizer and the random generators will do next, as flat name -> number pairs:
    every param group's numbers (`optimizer.group0.lr`, `optimizer.group0.betas.1`, flags as 0/1,
    `optimizer.group0.params`: how many parameters), how many groups, and each generator's seed
    and (CUDA's Philox) offset (`rng.cuda:0.offset`)."""
    values: dict[str, int | float] = {}
    if optimizer is not None:
        values["optimizer.groups"] = len(optimizer.param_groups)
        for g, group in enumerate(optimizer.param_groups):
            for key, value in group.items():
                name = f"optimizer.group{g}.{key}"
                if key == "params":
                    values[name] = len(value)
                else:
                    _add_control(values, name, value)
    for name, generator in generators.items():
        values[f"rng.{name}.seed"] = generator.initial_seed()
        if generator.device.type == "cuda":
            values[f"rng.{name}.offset"] = generator.get_offset()
    return values


def _named_generators(
    generators: Mapping[str, torch.Generator] | Iterable[torch.Generator] | None,
) -> dict[str, torch.Generator]:
    if generators is None:
        return {}
    if isinstance(generators, Mapping):
        return dict(generators)
    named: dict[str, torch.Generator] = {}
    for i, generator in enumerate(generators):
        name = str(generator.device)
        named[name if name not in named else f"{name}.{i}"] = generator
    return named


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    if device.type == "cpu":
        return "cpu"
    raise TypeError(f"trainguard integrity shares CPU and CUDA tensors, not {device.type} tensors")


_generation = itertools.count()


@dataclass
class _Layout:
    """Where every shared tensor was found the last time the state was walked, kept so that each
    step can confirm nothing moved with plain lookups instead of walking the model and the
    optimizer again (a model of a few hundred tensors costs milliseconds to walk in Python).
    Anything it does not confirm (a tensor rebound to new memory, a parameter, buffer, module,
    param group or optimizer state added, removed or replaced) sends the guard back to a walk."""

    lookups: list[tuple[Any, Any, object]]  # (container, key, the object found there)
    sizes: list[tuple[Any, int]]  # (container, its length)
    pointers: list[tuple[torch.Tensor, int]]  # (tensor, its data pointer)

    @classmethod
    def of(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> _Layout:
        lookups: list[tuple[Any, Any, object]] = []
        sizes: list[tuple[Any, int]] = []
        pointers: list[tuple[torch.Tensor, int]] = []

        def table(container: Any) -> None:
            sizes.append((container, len(container)))
            for key, value in container.items():
                lookups.append((container, key, value))
                if isinstance(value, torch.Tensor):
                    pointers.append((value, value.data_ptr()))

        for module in model.modules():
            for container in (module._modules, module._parameters, module._buffers):
                table(container)
        if optimizer is not None:
            attributes = vars(optimizer)  # load_state_dict replaces `state` and `param_groups` whole
            lookups += [
                (attributes, "state", optimizer.state),
                (attributes, "param_groups", optimizer.param_groups),
            ]
            sizes += [
                (optimizer.state, len(optimizer.state)),
                (optimizer.param_groups, len(optimizer.param_groups)),
            ]
            for group in optimizer.param_groups:
                params = group["params"]
                lookups.append((group, "params", params))
                sizes.append((params, len(params)))
                for i, param in enumerate(params):
                    lookups.append((params, i, param))
                    pointers.append((param, param.data_ptr()))
                    state = optimizer.state.get(param)
                    lookups.append((optimizer.state, param, state))
                    if state is not None:
                        table(state)
        return cls(lookups, sizes, pointers)

    def holds(self) -> bool:
        """Is every shared tensor still where the last walk found it?"""
        return (
            all(_found(container, key) is value for container, key, value in self.lookups)
            and all(len(container) == size for container, size in self.sizes)
            and all(tensor.data_ptr() == pointer for tensor, pointer in self.pointers)
        )


def _found(container: Any, key: Any) -> object:
    if isinstance(container, list):
        return container[key] if key < len(container) else None
    return container.get(key)


class _SharedRegion:
    """One kind of state on one device, moved into one flat buffer the sidecar can read."""

    def __init__(self, name: str, entries: list[_Entry], folder: Path, rank: int = 0) -> None:
        tensors = [e.get() for e in entries]
        present = [(e, t) for e, t in zip(entries, tensors, strict=True) if t is not None]
        for entry, tensor in present:
            if tensor.layout != torch.strided:
                raise TypeError(
                    f"{entry.name}: trainguard integrity shares dense tensors, not {tensor.layout}"
                )
        self.name = name
        self.entries = [e for e, _ in present]
        slots, total = layout([(e.name, t.numel() * t.element_size()) for e, t in present])
        device = present[0][1].device if present else torch.device("cpu")
        self.path: Path | None = None
        self.cuda: CudaHandle | None = None
        self._mmap: mmap.mmap | None = None
        self.fd: int | None = None  # the CPU region's file, open until the sidecar has it
        if device.type == "cuda":
            # Its own allocation, outside the caching allocator, exported once (gpu/cuda_ipc.py).
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.flat, handle = cuda_ipc.allocate(total, index)
            self.cuda = CudaHandle(uuid=str(torch.cuda.get_device_properties(index).uuid), handle=handle)
        else:
            # A new file per sharing (tensors still mapped from an older one keep valid memory),
            # named with the rank: the ranks of a pod share the folder. Created exclusively, so
            # nothing put there before is what the trainer maps; the descriptor stays open until
            # it went to the sidecar with the register message.
            stem = name.replace("@", "-").replace(":", "-")
            self.path = folder / f"{stem}-rank{rank}-{os.getpid()}-{next(_generation)}.bin"
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.ftruncate(self.fd, total)
            self._mmap = mmap.mmap(self.fd, total)
            self.flat = torch.frombuffer(self._mmap, dtype=torch.uint8)
        self.views = []
        with torch.no_grad():
            for (entry, tensor), slot in zip(present, slots, strict=True):
                view = (
                    self.flat[slot.offset : slot.offset + slot.nbytes].view(tensor.dtype).view(tensor.shape)
                )
                view.copy_(tensor)
                entry.put(view)
                self.views.append(view)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.region = Region(
            name=name, nbytes=total, slots=slots, path=str(self.path) if self.path else None, cuda=self.cuda
        )
        self.device = device

    def intact(self, entries: list[_Entry]) -> bool:
        """Do `entries` (the state now) still live exactly where this region put them?"""
        if [e.name for e in entries] != [e.name for e in self.entries]:
            return False
        for entry, view in zip(entries, self.views, strict=True):
            now = entry.get()
            if (
                now is None
                or now.data_ptr() != view.data_ptr()
                or now.shape != view.shape
                or now.dtype != view.dtype
            ):
                return False
        return True


def connect(path: Path, timeout: float) -> socket.socket:
    """Connect to the sidecar, waiting up to `timeout` seconds for it to listen."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise IntegrityViolation(
                    f"no integrity sidecar listens on {path} after {timeout:.0f} s: the pod's "
                    "integrity-sidecar container did not start (see its logs)"
                ) from exc
            time.sleep(0.2)
        else:
            return sock


def local_rank(explicit: int | None = None) -> int:
    """This process's rank in its pod: `explicit`, else torchrun's LOCAL_RANK, else 0 (one
    process per pod). RANK is not the pod's: it counts across every pod of the job."""
    if explicit is not None:
        return explicit
    value = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(f"LOCAL_RANK={value!r} is not a rank; pass IntegrityGuard(rank=...)") from None


class IntegrityGuard:
    """Shares the training state with the integrity sidecar and marks each optimizer step.

    `optimizer`: hooked, so that `optimizer.step()` itself is the step boundary (steps are counted
    from `start_step`; pass the step a resumed run starts at); `mark_steps=False` leaves marking
    to the loop (`begin`/`end` around its own update: several optimizers, a pipeline schedule).
    `schedulers`: learning-rate
    schedulers whose `step()` changes hyperparameters on purpose. `generators`: the random
    generators whose seeds (and CUDA offsets) must not change between steps unannounced, by
    device name or as a list; `IntegrityGuard.default_generators()` gives torch's own."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        schedulers: Iterable[Any] = (),
        generators: Mapping[str, torch.Generator] | Iterable[torch.Generator] | None = None,
        start_step: int = 0,
        mark_steps: bool = True,
        buffers: bool = True,
        connect_timeout: float = 60.0,
        rank: int | None = None,
        replicated: bool = True,
    ) -> None:
        path = Path(socket_path or os.environ["TRAINGUARD_INTEGRITY_SOCKET"])
        self.folder = path.parent
        self.rank = local_rank(rank)
        self.replicated = replicated
        self.model = model
        self.optimizer = optimizer
        self.generators = _named_generators(generators)
        self.include_buffers = buffers
        self.step = start_step  # the step the next optimizer.step() is
        self.regions: dict[str, _SharedRegion] = {}
        self._layout: _Layout | None = None
        self._sock = connect(path, connect_timeout)
        self._reader = LineReader(self._sock)
        self._call(Hello(rank=self.rank, replicated=replicated))
        self._sync_regions()
        self._hooks = []
        if optimizer is not None and mark_steps:
            self._hooks = [
                optimizer.register_step_pre_hook(lambda *_: self._begin(self.step)),
                optimizer.register_step_post_hook(lambda *_: self._after_step()),
            ]
        for scheduler in schedulers:
            self.watch(scheduler)

    @staticmethod
    def default_generators() -> dict[str, torch.Generator]:
        """torch's CPU generator and the default generator of each GPU this process has used."""
        found = {"cpu": torch.default_generator}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            found |= {f"cuda:{i}": g for i, g in enumerate(torch.cuda.default_generators)}
        return found

    # ----------------------------------------------------------------- sharing
    def _state(self) -> dict[str, list[_Entry]]:
        """The training state now, grouped into regions (kind @ device), in a fixed order."""
        kinds = [("parameters", _parameters(self.model, self.optimizer))]
        if self.include_buffers:
            kinds.append(("buffers", _buffers(self.model)))
        if self.optimizer is not None:
            kinds.append(("optimizer", _optimizer_state(self.model, self.optimizer)))
        grouped: dict[str, list[_Entry]] = {}
        for kind, entries in kinds:
            for entry in entries:
                tensor = entry.get()
                if tensor is not None:
                    grouped.setdefault(region_name(kind, _device_name(tensor.device)), []).append(entry)
        return grouped

    def _sync_regions(self) -> None:
        """Share every region that is new or no longer where it was shared (before fingerprinting)."""
        if self._layout is not None and self._layout.holds():
            return
        self._walk()
        self._layout = _Layout.of(self.model, self.optimizer)

    def _walk(self) -> None:
        for name, entries in self._state().items():
            region = self.regions.get(name)
            if region is None or not region.intact(entries):
                fresh = _SharedRegion(name, entries, self.folder, self.rank)
                self.regions[name] = fresh
                try:
                    self._call(Register(region=fresh.region), fds=[fresh.fd] if fresh.fd is not None else [])
                finally:
                    if fresh.fd is not None:
                        os.close(fresh.fd)
                        fresh.fd = None
                if region is not None and region.path is not None:
                    region.path.unlink(missing_ok=True)  # mapped memory outlives the name

    @property
    def buffer_path(self) -> Path:
        """The file that holds the CPU parameters (what another process would have to alter)."""
        path = self.regions[region_name("parameters", "cpu")].path
        assert path is not None
        return path

    # ----------------------------------------------------------------- calls
    def _call(self, request: Request, fds: list[int] | None = None) -> Reply:
        """Send `request` and wait for the sidecar's answer (raising the violation it found)."""
        send(self._sock, request, fds or ())
        raw = self._reader.read()
        if raw is None:
            raise IntegrityViolation("the integrity sidecar went away")
        reply = parse_reply(raw)
        if not reply.ok:
            if reply.violation is not None and reply.violation.message:
                raise IntegrityViolation(reply.violation.message)
            raise IntegrityViolation(reply.error if reply.error is not None else "integrity check failed")
        return reply

    def _settle(self) -> None:
        """Let queued GPU work on the shared regions finish before the sidecar reads them."""
        for region in self.regions.values():
            if region.device.type == "cuda":
                torch.cuda.synchronize(region.device)

    def controls(self) -> dict[str, int | float] | None:
        """The hyperparameters and generator values the sidecar checks (None: nothing watched)."""
        if self.optimizer is None and not self.generators:
            return None
        return controls(self.optimizer, self.generators)

    def _begin(self, step: int) -> None:
        self._settle()
        self._call(Begin(step=step, controls=self.controls()))

    def _end(self, step: int) -> None:
        self._sync_regions()
        self._settle()
        self._call(End(step=step, controls=self.controls()))

    def _after_step(self) -> None:
        """Just after optimizer.step(): the end of the step, answered once the sidecar has
        fingerprinted the new state. Training goes on only then: a fingerprint taken later, while
        the next step's data loading or forward pass runs, would take a change made meanwhile
        (by any code of the process) into the baseline, and the next `begin` would not see it."""
        self._end(self.step)
        self.step += 1

    def _marked_by_hooks(self) -> None:
        if self._hooks:
            raise RuntimeError(
                "this guard marks each step itself, around optimizer.step(): remove the "
                "guard.begin()/guard.end() calls from the training loop"
            )

    def begin(self, step: int) -> None:
        """Step `step` starts (a loop without an optimizer object: call it just before the update)."""
        self._marked_by_hooks()
        self._begin(step)

    def end(self, step: int) -> None:
        """Step `step` ended (call it just after the update)."""
        self._marked_by_hooks()
        self._end(step)

    @contextlib.contextmanager
    def adjusting(self, reason: str = "guard.adjusting()") -> Iterator[None]:
        """Change hyperparameters or reseed between steps on purpose: the sidecar checks that
        nothing changed them before, and takes what the block leaves as what the next step uses.

            with guard.adjusting("warm restart"):
                for group in optimizer.param_groups:
                    group["lr"] = 3e-4
        """
        before = self.controls()
        yield
        after = self.controls()
        if before is not None and after is not None and after != before:
            self._call(Adjust(reason=reason, before=before, after=after))

    def watch(self, scheduler: Any) -> None:
        """Announce every `scheduler.step()` (a learning-rate scheduler) as an adjustment."""
        original = scheduler.step
        reason = f"{type(scheduler).__name__}.step()"

        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            with self.adjusting(reason):
                return original(*args, **kwargs)

        scheduler.step = step

    def save(self, state: dict[str, Any], path: str | os.PathLike[str], step: int | None = None) -> None:
        """Save tensors only, with a manifest the sidecar signs: a `.safetensors` path is written
        with safetensors (a flat dict of tensors), any other with torch.save (loadable with
        weights_only=True)."""
        target = Path(path).resolve()
        if target.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(target))
        else:
            torch.save(state, target)
        self.sign(target, step)

    def sign(self, path: str | os.PathLike[str], step: int | None = None) -> None:
        """Have the sidecar sign a checkpoint written by other code: a file, or a directory of
        shards (every file under it). Call it once the checkpoint is complete."""
        target = Path(path).resolve()
        reply = self._call(Checkpoint(path=str(target), step=step))
        if reply.manifest is None:
            raise ProtocolError("the integrity sidecar signed the checkpoint but sent no manifest")
        # The sidecar cannot write next to the checkpoint (it mounts the output read-only); the
        # manifest is signed with the job's key, so carrying it over changes nothing it vouches for.
        manifest_path(target).write_text(json.dumps(reply.manifest, indent=1))

    def verify(self, path: str | os.PathLike[str]) -> None:
        """Raise IntegrityViolation (Enforce) unless the checkpoint is exactly what was signed,
        where it was signed: no file changed, added or removed, not copied from elsewhere, not
        older than the last one saved at that path."""
        self._call(Verify(path=str(Path(path).resolve())))

    def load(self, path: str | os.PathLike[str]) -> Any:
        """Read the checkpoint file once, have the sidecar check the manifest against the digest
        of exactly those bytes, then load them (no window in which the file could be swapped),
        without ever unpickling code: safetensors for `.safetensors`, else
        torch.load(weights_only=True)."""
        target = Path(path).resolve()
        data = target.read_bytes()
        self._call(Verify(path=str(target), files={target.name: hashlib.sha256(data).hexdigest()}))
        if target.suffix == ".safetensors":
            from safetensors.torch import load as load_bytes

            return load_bytes(data)
        return torch.load(io.BytesIO(data), weights_only=True)

    def close(self) -> None:
        """Stop watching."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._sock.close()
