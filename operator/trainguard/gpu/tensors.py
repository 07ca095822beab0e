"""PyTorch tensors for the CPU reference fingerprint (`trainguard.integrity.fingerprint`), which
reads numpy arrays and buffers only: numpy has no bfloat16, so a tensor goes as its raw bytes."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainguard.integrity.fingerprint import FingerprintKey, fingerprint


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor of any dtype (bf16 too), in C order, copied to the host if needed."""
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return raw.numpy().data


def cpu_fingerprint(key: FingerprintKey, tensors: Iterable[torch.Tensor]) -> str:
    """`fingerprint.fingerprint` of PyTorch tensors, on the CPU: what the GPU kernel must match."""
    return fingerprint(key, (tensor_bytes(t) for t in tensors))
