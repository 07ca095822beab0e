"""The trainer <-> sidecar protocol: newline-delimited JSON over a Unix socket on the shared emptyDir.

Pure helpers only: the layout of the shared buffers, the checks the sidecar applies to what the
trainer tells it about them, and message framing.

The trainer shares its memory as a few *regions*: one flat buffer per kind of state (parameters,
buffers, optimizer state) and device. A CPU region is a file in the shared folder that both
processes map; a CUDA region is one device allocation that the sidecar opens through its CUDA IPC
handle. The fingerprint of a region covers its whole buffer, so one region is one kernel launch.
"""

from __future__ import annotations

import base64
import bisect
import json
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ALIGN = 64  # tensor offsets in the shared buffer are 64-byte aligned
MAX_MESSAGE = 16 << 20  # a register message names every tensor of a region
MAX_REGION_BYTES = 1 << 42
CUDA_HANDLE_BYTES = 64
KINDS = ("parameters", "buffers", "optimizer")
# Replicas of a data-parallel job must agree on these; buffers (batch-norm statistics) may differ.
REPLICATED_KINDS = ("parameters",)
_REGION_NAME = re.compile(rf"^({'|'.join(KINDS)})@(cpu|cuda:[0-9]{{1,2}})$")


class ProtocolError(ValueError):
    """A message the sidecar refuses; the text says what was wrong."""


@dataclass(frozen=True)
class Slot:
    """Where one tensor lives in the shared buffer."""

    name: str
    offset: int
    nbytes: int


def layout(sizes: list[tuple[str, int]]) -> tuple[list[Slot], int]:
    """Aligned slots for (name, nbytes) in order, and the buffer size they need."""
    slots, offset = [], 0
    for name, nbytes in sizes:
        slots.append(Slot(name, offset, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return slots, max(offset, ALIGN)


def slots_to_json(slots: list[Slot]) -> list[dict[str, Any]]:
    return [asdict(s) for s in slots]


def slots_from_json(data: list[dict[str, Any]]) -> list[Slot]:
    return [Slot(str(d["name"]), int(d["offset"]), int(d["nbytes"])) for d in data]


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


@dataclass(frozen=True)
class CudaHandle:
    """What the sidecar needs to open a GPU region of the trainer (see `cuda_ipc.py`)."""

    uuid: str  # the GPU's UUID: device indexes differ between containers
    handle: bytes  # the CUDA IPC handle of the region's own allocation (64 bytes)

    def to_json(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "handle": base64.b64encode(self.handle).decode()}

    @classmethod
    def from_json(cls, data: Any) -> CudaHandle:
        if not isinstance(data, dict):
            raise ProtocolError("region.cuda must be an object")
        uuid, raw = data.get("uuid"), data.get("handle")
        if not isinstance(uuid, str) or not uuid:
            raise ProtocolError("region.cuda.uuid must name the trainer's GPU")
        try:
            handle = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
        except ValueError as exc:
            raise ProtocolError("region.cuda.handle must be base64 text") from exc
        if len(handle) != CUDA_HANDLE_BYTES:
            raise ProtocolError(
                f"region.cuda.handle must be a {CUDA_HANDLE_BYTES}-byte CUDA IPC handle in base64"
            )
        return cls(uuid, handle)


@dataclass(frozen=True)
class Region:
    """One shared flat buffer: a file in the shared folder (CPU) or a CUDA allocation."""

    name: str
    nbytes: int
    slots: list[Slot] = field(default_factory=list)
    path: str | None = None
    cuda: CudaHandle | None = None

    @property
    def kind(self) -> str:
        return region_kind(self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nbytes": self.nbytes,
            "slots": slots_to_json(self.slots),
            "path": self.path,
            "cuda": self.cuda.to_json() if self.cuda else None,
        }


def parse_region(data: Any, folder: Path) -> Region:
    """The region a register message describes, checked; `folder` is the shared emptyDir.

    The trainer chooses these values, so nothing is taken on trust: a CPU region must be a file
    inside the shared folder (never, say, the key), and every slot must lie inside the buffer.
    """
    if not isinstance(data, dict):
        raise ProtocolError("region must be an object")
    name = data.get("name")
    if not isinstance(name, str) or not _REGION_NAME.match(name):
        raise ProtocolError(f"region.name {name!r} must be <kind>@<device>, kind one of {', '.join(KINDS)}")
    nbytes = data.get("nbytes")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 0 < nbytes <= MAX_REGION_BYTES:
        raise ProtocolError(f"region.nbytes must be a positive integer up to {MAX_REGION_BYTES}")
    raw_slots = data.get("slots")
    if not isinstance(raw_slots, list):
        raise ProtocolError("region.slots must be a list")
    try:
        slots = slots_from_json(raw_slots)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"region.slots: {exc}") from exc
    for i, slot in enumerate(slots):
        if slot.offset < 0 or slot.nbytes < 0 or slot.offset + slot.nbytes > nbytes:
            raise ProtocolError(f"region.slots[{i}] ({slot.name}) lies outside the {nbytes}-byte buffer")
    device = name.split("@", 1)[1]
    path, cuda = None, None
    if device == "cpu":
        raw_path = data.get("path")
        if not isinstance(raw_path, str):
            raise ProtocolError("region.path must name the region's file in the shared folder")
        resolved = Path(raw_path).resolve()
        if resolved.parent != folder.resolve():
            raise ProtocolError(f"region.path {raw_path!r} is not a file of the shared folder")
        path = str(resolved)
    else:
        cuda = CudaHandle.from_json(data.get("cuda"))
    return Region(name, nbytes, slots, path, cuda)


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


class LineReader:
    """Reads newline-delimited JSON messages from a stream socket, bounded in size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > MAX_MESSAGE:
                raise ValueError("message too large")
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message
