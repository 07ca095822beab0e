"""The trainer <-> sidecar protocol: the messages both send over the Unix socket on the shared emptyDir.

Pure: typed messages (what the trainer asks, `Request`, and what the sidecar answers, `Reply`),
the layout of the shared buffers, and the checks the sidecar applies to what the trainer tells it
about them. The framing of messages on the socket is `trainguard.channel`'s.

Each trainer process (rank) of the pod opens its own connection and says first who it is
(`Hello`: its rank, and whether its parameters are a data-parallel replica of the other ranks').
It shares its memory as a few *regions*: one flat buffer per kind of state (parameters, buffers,
optimizer state) and device. A CPU region is a file in the shared folder that both processes
map, handed to the sidecar as an open descriptor beside the `Register` message (its `path` only
names it); a CUDA region is one device allocation that the sidecar opens through its CUDA IPC
handle. The fingerprint of a region covers its whole buffer, so one region is one kernel launch.

A message is parsed once, where it enters (`parse_request` in the sidecar, `parse_reply` in the
trainer): unknown fields, wrong types and values outside the limits raise `ProtocolError`, whose
text says what was wrong. The JSON of a message (`WireModel.wire`) has the same field names,
order and values as the hand-written dicts it replaced.
"""

from __future__ import annotations

import base64
import bisect
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

ALIGN = 64  # tensor offsets in the shared buffer are 64-byte aligned
MAX_REGION_BYTES = 1 << 42
CUDA_HANDLE_BYTES = 64
KINDS = ("parameters", "buffers", "optimizer")
# Replicas of a data-parallel job must agree on these; buffers (batch-norm statistics) may differ.
REPLICATED_KINDS = ("parameters",)
_REGION_NAME = re.compile(rf"^({'|'.join(KINDS)})@(cpu|cuda:[0-9]{{1,2}})$")


class ProtocolError(ValueError):
    """A message the sidecar (or the trainer) refuses; the text says what was wrong."""


class WireModel(BaseModel):
    """A JSON object that crosses a process boundary: strict types, no unknown fields, immutable.

    The fields named in `omit_when_none` are left out of the JSON when they are None (they are
    optional keys of the object), those in `omit_when_default` when they hold their default (a
    field added later: what older readers know stays unchanged), every other field is always
    written, null included."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    omit_when_none: ClassVar[tuple[str, ...]] = ()
    omit_when_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.omit_when_none:
            if data.get(name) is None:
                data.pop(name, None)
        for name in self.omit_when_default:
            if name in data and data[name] == type(self).model_fields[name].default:
                del data[name]
        return data

    def wire(self) -> dict[str, Any]:
        """The message as a JSON-ready dict."""
        return self.model_dump(mode="json")


_M = TypeVar("_M", bound=BaseModel)


def explain(exc: ValidationError, prefix: str = "") -> str:
    """The first problem pydantic found, in one line: the text of our own checks as they wrote it,
    else '<field.path>: <what pydantic says>'."""
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if error["type"] == "value_error" and cause is not None:
        return str(cause)
    where = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _checked(model: type[_M], data: object, prefix: str = "") -> _M:
    """`data` as a `model`, or ProtocolError saying what is wrong with it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(explain(exc, prefix)) from exc


# ----------------------------------------------------------------- shared buffers
class Slot(WireModel):
    """Where one tensor lives in the shared buffer."""

    name: str
    offset: int
    nbytes: int


def layout(sizes: list[tuple[str, int]]) -> tuple[list[Slot], int]:
    """Aligned slots for (name, nbytes) in order, and the buffer size they need."""
    slots, offset = [], 0
    for name, nbytes in sizes:
        slots.append(Slot(name=name, offset=offset, nbytes=nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return slots, max(offset, ALIGN)


def tensors_in_chunks(slots: list[Slot], chunks: list[int], chunk_bytes: int) -> list[str]:
    """The tensors (slot names, in order) with bytes in any of the given chunks of a region.

    A change outside every slot (alignment padding) names no tensor; the caller still reports
    that the region changed."""
    changed = sorted(set(chunks))
    names = []
    for slot in slots:
        if slot.nbytes == 0:
            continue
        first, last = slot.offset // chunk_bytes, (slot.offset + slot.nbytes - 1) // chunk_bytes
        i = bisect.bisect_left(changed, first)
        if i < len(changed) and changed[i] <= last:
            names.append(slot.name)
    return names


def region_name(kind: str, device: str) -> str:
    return f"{kind}@{device}"


def region_kind(name: str) -> str:
    return name.split("@", 1)[0]


class CudaHandle(WireModel):
    """What the sidecar needs to open a GPU region of the trainer (see `trainguard.gpu.cuda_ipc`).

    On the wire the handle is base64 text."""

    uuid: str  # the GPU's UUID: device indexes differ between containers
    handle: bytes  # the CUDA IPC handle of the region's own allocation (64 bytes)

    @field_validator("uuid", mode="before")
    @classmethod
    def _uuid(cls, value: object) -> object:
        if not isinstance(value, str) or not value:
            raise ValueError("region.cuda.uuid must name the trainer's GPU")
        return value

    @field_validator("handle", mode="before")
    @classmethod
    def _handle(cls, value: object) -> bytes:
        if isinstance(value, str):
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError as exc:
                raise ValueError("region.cuda.handle must be base64 text") from exc
        else:
            raw = value if isinstance(value, bytes) else b""
        if len(raw) != CUDA_HANDLE_BYTES:
            raise ValueError(
                f"region.cuda.handle must be a {CUDA_HANDLE_BYTES}-byte CUDA IPC handle in base64"
            )
        return raw

    @field_serializer("handle")
    def _handle_text(self, handle: bytes) -> str:
        return base64.b64encode(handle).decode()


class Region(WireModel):
    """One shared flat buffer: a file in the shared folder (CPU) or a CUDA allocation.

    The trainer chooses these values, so nothing is taken on trust: every slot must lie inside
    the buffer, a CPU region names its file and a GPU region its IPC handle. That the file is one
    of the shared folder is `in_shared_folder`'s check (it needs the folder)."""

    name: str
    nbytes: int
    slots: list[Slot]
    path: str | None = None
    cuda: CudaHandle | None = None

    @property
    def kind(self) -> str:
        return region_kind(self.name)

    @property
    def device(self) -> str:
        return self.name.split("@", 1)[1]

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> object:
        if not isinstance(value, str) or not _REGION_NAME.match(value):
            raise ValueError(f"region.name {value!r} must be <kind>@<device>, kind one of {', '.join(KINDS)}")
        return value

    @field_validator("nbytes", mode="before")
    @classmethod
    def _nbytes(cls, value: object) -> object:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_REGION_BYTES:
            raise ValueError(f"region.nbytes must be a positive integer up to {MAX_REGION_BYTES}")
        return value

    @field_validator("slots", mode="before")
    @classmethod
    def _slots(cls, value: object) -> object:
        if not isinstance(value, list):
            raise ValueError("region.slots must be a list")
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise ValueError("region.path must name the region's file in the shared folder")
        return value

    @field_validator("cuda", mode="before")
    @classmethod
    def _cuda(cls, value: object) -> object:
        if value is not None and not isinstance(value, dict | CudaHandle):
            raise ValueError("region.cuda must be an object")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for i, slot in enumerate(self.slots):
            if slot.offset < 0 or slot.nbytes < 0 or slot.offset + slot.nbytes > self.nbytes:
                raise ValueError(
                    f"region.slots[{i}] ({slot.name}) lies outside the {self.nbytes}-byte buffer"
                )
        if self.device == "cpu":
            if self.path is None:
                raise ValueError("region.path must name the region's file in the shared folder")
            if self.cuda is not None:
                raise ValueError("region.cuda is for GPU regions only")
        else:
            if self.cuda is None:
                raise ValueError("region.cuda must be an object")
            if self.path is not None:
                raise ValueError("region.path is for CPU regions only")
        return self


def in_shared_folder(region: Region, folder: Path) -> Region:
    """`region`, its file resolved, if that file is one of the shared `folder` (never, say, the
    key); GPU regions have no file."""
    if region.path is None:
        return region
    resolved = Path(region.path).resolve()
    if resolved.parent != folder.resolve():
        raise ProtocolError(f"region.path {region.path!r} is not a file of the shared folder")
    return region.model_copy(update={"path": str(resolved)})


def parse_region(data: object, folder: Path) -> Region:
    """The region a register message describes, checked; `folder` is the shared emptyDir."""
    return in_shared_folder(_checked(Region, data, "region"), folder)


# ----------------------------------------------------------------- trainer -> sidecar
def _integer_step(value: object) -> object:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError("step must be an integer")
    return value


def _string_path(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("path must be a string")
    return value


MAX_RANK = 4095


class Hello(WireModel):
    """The first message of a connection: which rank of the pod's trainer processes speaks on it
    (torchrun's LOCAL_RANK), and whether its parameters are a data-parallel replica of the
    other ranks' (tensor- and pipeline-parallel shards are not: they are never compared)."""

    op: Literal["hello"] = "hello"
    rank: int
    replicated: bool = True

    @field_validator("rank", mode="before")
    @classmethod
    def _rank(cls, value: object) -> object:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RANK:
            raise ValueError(f"rank must be an integer from 0 to {MAX_RANK}")
        return value


class Register(WireModel):
    """Share a region (again: a region of the same name replaces the old one). A CPU region's
    file travels as a descriptor beside the message (SCM_RIGHTS): the sidecar maps that open
    file, never a path (which another process could swap); `path` only names it."""

    op: Literal["register"] = "register"
    region: Region


MAX_CONTROLS = 4096  # hyperparameters and generator values per message
MAX_CONTROL_NAME = 200
Controls = dict[str, int | float]


def _controls(value: object) -> object:
    """What the optimizer and the random generators will do next, as flat name -> number pairs
    (see `trainguard.trainer.guard.controls`): checked, never trusted for size."""
    if value is None:
        return value
    if not isinstance(value, dict) or len(value) > MAX_CONTROLS:
        raise ValueError(f"controls must be an object of at most {MAX_CONTROLS} names")
    for name, number in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_CONTROL_NAME:
            raise ValueError(f"controls: {name!r} is not a name of 1 to {MAX_CONTROL_NAME} characters")
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"controls.{name} must be a number, got {number!r}")
    return value


class Begin(WireModel):
    """Step `step` starts: the state must be what the end of the step before left. With the guard
    watching the optimizer, `begin` is sent just before `optimizer.step()`, so that everything
    between two optimizer steps (data loading, forward, backward) lies inside the checked window.
    `controls` are the hyperparameters and generator states now (None: none are watched)."""

    op: Literal["begin"] = "begin"
    step: int
    controls: Controls | None = None

    omit_when_none: ClassVar[tuple[str, ...]] = ("controls",)
    check_step = field_validator("step", mode="before")(_integer_step)
    check_controls = field_validator("controls", mode="before")(_controls)


class End(WireModel):
    """Step `step` ended (just after `optimizer.step()`): fingerprint the state it produced, and take
    `controls` as what the next step must start from."""

    op: Literal["end"] = "end"
    step: int
    controls: Controls | None = None

    omit_when_none: ClassVar[tuple[str, ...]] = ("controls",)
    check_step = field_validator("step", mode="before")(_integer_step)
    check_controls = field_validator("controls", mode="before")(_controls)


class Adjust(WireModel):
    """The training code changed hyperparameters or generators on purpose, between two steps: a
    watched learning-rate scheduler stepped, or code ran inside `guard.adjusting()`. `before` must
    be what the last step left (else something changed them unannounced); `after` is what the
    next step must start from. `reason` says who (it is in the signed report)."""

    op: Literal["adjust"] = "adjust"
    reason: str
    before: Controls
    after: Controls

    check_before = field_validator("before", mode="before")(_controls)
    check_after = field_validator("after", mode="before")(_controls)

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: object) -> object:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_CONTROL_NAME:
            raise ValueError(f"reason must be text of 1 to {MAX_CONTROL_NAME} characters")
        return value


class Checkpoint(WireModel):
    """Sign the checkpoint (a file, or a directory of shards) at `path`."""

    op: Literal["checkpoint"] = "checkpoint"
    path: str
    step: int | None = None

    check_path = field_validator("path", mode="before")(_string_path)
    check_step = field_validator("step", mode="before")(_integer_step)


class Verify(WireModel):
    """Check the checkpoint at `path` against its signed manifest. `files` (file name -> SHA-256)
    are the digests of the bytes the trainer read and will load, so that what is verified is what
    is loaded (no window in which the file could be swapped); without them the sidecar reads the
    files itself."""

    op: Literal["verify"] = "verify"
    path: str
    files: dict[str, str] | None = None
    omit_when_none: ClassVar[tuple[str, ...]] = ("files",)

    check_path = field_validator("path", mode="before")(_string_path)


Request = Hello | Register | Begin | End | Adjust | Checkpoint | Verify
_REQUESTS: dict[str, type[Request]] = {
    "hello": Hello,
    "register": Register,
    "begin": Begin,
    "end": End,
    "adjust": Adjust,
    "checkpoint": Checkpoint,
    "verify": Verify,
}


def parse_request(data: object, folder: Path) -> Request:
    """A message from the trainer, checked; `folder` is the shared emptyDir."""
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    op = data.get("op")
    model = _REQUESTS.get(op) if isinstance(op, str) else None
    if model is None:
        raise ProtocolError(f"unknown op {op!r}")
    request = _checked(model, data)
    if isinstance(request, Register):
        return request.model_copy(update={"region": in_shared_folder(request.region, folder)})
    return request


# ----------------------------------------------------------------- what the next step will do
def control_kind(name: str) -> str:
    """The violation kind a changed control is reported as: "RandomState" for a generator's values
    (`rng.<generator>.seed`, `.offset`), "Hyperparameters" for the optimizer's."""
    return "RandomState" if name.startswith("rng.") else "Hyperparameters"


def _number(value: int | float | None) -> str:
    return "absent" if value is None else repr(value)


def control_changes(expected: Controls, now: Controls) -> dict[str, list[str]]:
    """How `now` differs from `expected`, per violation kind, each change in words. A generator's
    offset (the CUDA Philox counter) may only grow: it moves on with every random number drawn, and
    goes back only when someone reseeds or restores an older state. Everything else must be equal:
    a learning rate, a beta, a weight decay, a seed, the number of parameter groups and of
    parameters in each."""
    changes: dict[str, list[str]] = {}
    for name in sorted(set(expected) | set(now)):
        before, after = expected.get(name), now.get(name)
        if before is not None and after is not None and name.startswith("rng.") and name.endswith(".offset"):
            if after >= before:
                continue
            text = f"{name} went back from {before} to {after}"
        elif before == after:
            continue
        else:
            text = f"{name} {_number(before)} -> {_number(after)}"
        changes.setdefault(control_kind(name), []).append(text)
    return changes


# ----------------------------------------------------------------- the order of steps
class StepSequence:
    """The order a trainer's step messages must follow: `begin(t)`, then `end(t)`, then `begin(t+1)`.

    Anything else (a step begun twice, an `end` with no `begin`, a repeated `end`, a skipped or a
    backwards step) is a protocol violation, never a silent new baseline: the sidecar compares
    the state at `begin(t+1)` with what `end(t)` fingerprinted, and a trainer (or a process
    speaking for it) that could bend the order could move that baseline past its own tampering.
    One exception: the first message may be `end(t)`, taking the state as loaded (a fresh model,
    or one resumed from a checkpoint) as the baseline of step `t`.

    Each method returns what was wrong (None when nothing was) and moves on as if the message were
    right, so that an Audit-mode job keeps being checked after a report.
    """

    def __init__(self) -> None:
        self.current: int | None = None  # begun, not ended yet
        self.last_end: int | None = None
        self.seen = False

    def begin(self, step: int) -> str | None:
        problem = None
        if self.current is not None:
            problem = (
                f"begin({step}) while step {self.current} has not ended (end({self.current}) is missing)"
            )
        elif self.last_end is not None and step != self.last_end + 1:
            what = "goes backwards" if step <= self.last_end else "skips a step"
            problem = f"begin({step}) after end({self.last_end}) {what}: the next step is {self.last_end + 1}"
        self.current, self.seen = step, True
        return problem

    def end(self, step: int) -> str | None:
        problem = None
        if self.current is None and self.seen:
            problem = f"end({step}) with no begin({step})" + (
                f" (end({self.last_end}) came last)" if self.last_end is not None else ""
            )
        elif self.current is not None and step != self.current:
            problem = f"end({step}) during step {self.current} (begun with begin({self.current}))"
        self.current, self.last_end, self.seen = None, step, True
        return problem

    def adjust(self) -> str | None:
        """Hyperparameters and generators are changed on purpose between steps, never inside one
        (the state `begin(t)` saw is what `optimizer.step()` must run with)."""
        if self.current is not None:
            return f"hyperparameters adjusted during step {self.current} (between begin and end)"
        return None


# ----------------------------------------------------------------- sidecar -> trainer
class ViolationNotice(WireModel):
    """What the trainer is told of a violation (the signed report says more)."""

    kind: str
    step: int | None
    message: str


class Reply(WireModel):
    """The sidecar's answer to every request. `ok` is False on a refused request (`error`) and,
    in Enforce mode, on a violation; `manifest` answers a checkpoint request."""

    ok: bool
    error: str | None = None
    violation: ViolationNotice | None = None
    manifest: dict[str, Any] | None = None
    omit_when_none: ClassVar[tuple[str, ...]] = ("error", "violation", "manifest")


def parse_reply(data: object) -> Reply:
    if not isinstance(data, dict):
        raise ProtocolError("a reply must be a JSON object")
    return _checked(Reply, data)
