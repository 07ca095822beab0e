"""What a training script imports (PyTorch): share the weights with the sidecar, mark steps.

    guard = IntegrityGuard(model)              # once, after building the model
    for step in range(steps):
        guard.begin(step)                      # before the forward pass
        ...loss.backward(); optimizer.step()
        guard.end(step)                        # after optimizer.step()

The parameters are moved once into one flat buffer backed by a file on the shared emptyDir
(mapped by the sidecar too), so the sidecar reads the very memory the trainer trains.
"""

from __future__ import annotations

import mmap
import os
import socket
from pathlib import Path
from typing import Any

import torch

from trainguard.integrity.protocol import LineReader, layout, send, slots_to_json


class IntegrityViolation(RuntimeError):
    """The sidecar found a violation and the job runs in Enforce mode."""


class IntegrityGuard:
    def __init__(self, model: torch.nn.Module, socket_path: str | os.PathLike[str] | None = None) -> None:
        path = Path(socket_path or os.environ["TRAINGUARD_INTEGRITY_SOCKET"])
        params = [(name, p) for name, p in model.named_parameters()]
        slots, total = layout([(name, p.numel() * p.element_size()) for name, p in params])
        self.buffer_path = path.parent / "weights.bin"
        with self.buffer_path.open("wb") as f:
            f.truncate(total)
        fd = os.open(self.buffer_path, os.O_RDWR)
        try:
            self._mmap = mmap.mmap(fd, total)
        finally:
            os.close(fd)
        flat = torch.frombuffer(self._mmap, dtype=torch.uint8)
        with torch.no_grad():
            for (_, param), slot in zip(params, slots, strict=True):
                view = flat[slot.offset : slot.offset + slot.nbytes].view(param.dtype).view(param.shape)
                view.copy_(param.data)
                param.data = view
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._reader = LineReader(self._sock)
        self._call({"op": "register", "path": str(self.buffer_path), "slots": slots_to_json(slots)})

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        send(self._sock, message)
        reply = self._reader.read()
        if reply is None:
            raise IntegrityViolation("the integrity sidecar went away")
        if not reply.get("ok"):
            violation = reply.get("violation") or {}
            raise IntegrityViolation(violation.get("message") or reply.get("error", "integrity check failed"))
        return reply

    def begin(self, step: int) -> None:
        self._call({"op": "begin", "step": step})

    def end(self, step: int) -> None:
        self._call({"op": "end", "step": step})

    def save(self, state: dict[str, Any], path: str | os.PathLike[str], step: int | None = None) -> None:
        """Save tensors only (loadable with weights_only=True) and have the sidecar sign them."""
        torch.save(state, path)
        self._call({"op": "checkpoint", "path": str(Path(path).resolve()), "step": step})

    def load(self, path: str | os.PathLike[str]) -> Any:
        """Verify the signed manifest first; never unpickle code (weights_only=True)."""
        self._call({"op": "verify", "path": str(Path(path).resolve())})
        return torch.load(path, weights_only=True)

    def close(self) -> None:
        self._sock.close()
