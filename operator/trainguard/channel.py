"""The trainer <-> sidecar channel: newline-delimited JSON messages over a Unix stream socket.

Framing only, shared by both deployables (`trainguard.trainer` and `trainguard.sidecar`); what a
message may say is `trainguard.integrity.protocol`'s, and the receiver parses what `read` returns.
"""

from __future__ import annotations

import json
import socket

from trainguard.integrity.protocol import WireModel

MAX_MESSAGE = 16 << 20  # a register message names every tensor of a region


def send(sock: socket.socket, message: WireModel) -> None:
    sock.sendall(json.dumps(message.wire()).encode() + b"\n")


class LineReader:
    """Reads newline-delimited JSON values from a stream socket, bounded in size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self) -> object | None:
        """The next JSON value (not yet checked: see `protocol.parse_*`); None once the peer closed.

        Raises ValueError on a line that is not JSON or too long."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > MAX_MESSAGE:
                raise ValueError("message too large")
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: object = json.loads(line)
        return message
