"""The trainer <-> sidecar protocol: newline-delimited JSON over a Unix socket on the shared emptyDir.

Pure helpers only: the layout of the shared weight buffer and message framing.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from typing import Any

ALIGN = 64  # tensor offsets in the shared buffer are 64-byte aligned
MAX_MESSAGE = 1 << 20


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
