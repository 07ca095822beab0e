"""The trainer <-> sidecar channel: newline-delimited JSON messages over a Unix stream socket,
with file descriptors passed beside a message (SCM_RIGHTS).

Framing only, shared by both deployables (`trainguard.trainer` and `trainguard.sidecar`); what a
message may say is `trainguard.integrity.protocol`'s, and the receiver parses what `read` returns.

Descriptors travel with the first bytes of the message they belong to (one `sendmsg`), and Linux
never hands out the bytes of a later `sendmsg` carrying descriptors in the same `recvmsg` as
earlier ones after them: a descriptor belongs to the message holding the last byte received with
it. The reader keeps that position, so a descriptor is never attributed to the wrong message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Sequence

from trainguard.integrity.protocol import WireModel

MAX_MESSAGE = 16 << 20  # a register message names every tensor of a region
MAX_FDS = 4  # descriptors one read may carry (a register passes one)


def send(sock: socket.socket, message: WireModel, fds: Sequence[int] = ()) -> None:
    """Send one message; `fds` (open descriptors, still the caller's) travel with it."""
    data = json.dumps(message.wire()).encode() + b"\n"
    if not fds:
        sock.sendall(data)
        return
    sent = socket.send_fds(sock, [data], list(fds))
    if sent < len(data):
        sock.sendall(data[sent:])


class LineReader:
    """Reads newline-delimited JSON values from a stream socket, bounded in size, and the
    descriptors that came with each."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.consumed = 0  # stream position of buffer[0]
        self.fds: list[tuple[int, int]] = []  # (stream position of the message byte, descriptor)

    def read(self) -> object | None:
        """The next JSON value, closing any descriptor that came with it (see `read_with_fds`)."""
        message, fds = self.read_with_fds()
        for fd in fds:
            os.close(fd)
        return message

    def read_with_fds(self) -> tuple[object | None, list[int]]:
        """The next JSON value (not yet checked: see `protocol.parse_*`) and the descriptors that
        came with it, now the caller's to close; (None, []) once the peer closed.

        Raises ValueError on a line that is not JSON or too long (descriptors of it closed)."""
        while b"\n" not in self.buffer:
            try:
                chunk, fds, _, _ = socket.recv_fds(self.sock, 65536, MAX_FDS)
            except OSError:
                self.close()
                raise
            end = self.consumed + len(self.buffer) + len(chunk) - 1
            self.fds += [(end, fd) for fd in fds]
            if not chunk:
                self.close()
                return None, []
            self.buffer += chunk
            if len(self.buffer) > MAX_MESSAGE:
                self.close()
                raise ValueError("message too large")
        length = self.buffer.index(b"\n") + 1
        line, self.buffer = self.buffer[: length - 1], self.buffer[length:]
        last = self.consumed + length - 1
        self.consumed += length
        mine = [fd for position, fd in self.fds if position <= last]
        self.fds = [(position, fd) for position, fd in self.fds if position > last]
        try:
            message: object = json.loads(line)
        except ValueError:
            for fd in mine:
                os.close(fd)
            raise
        return message, mine

    def close(self) -> None:
        """Close the descriptors received and not handed out yet."""
        for _, fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
