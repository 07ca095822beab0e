"""GPU memory the trainer and the sidecar share: CUDA IPC through the driver API (libcuda).

The trainer allocates each GPU region with `cuMemAlloc` itself, outside PyTorch's caching
allocator, and exports it with `cuIpcGetMemHandle`; the sidecar opens it with
`cuIpcOpenMemHandle`. Both wrap the raw device memory as a PyTorch tensor through
`__cuda_array_interface__`. So the two sides depend neither on PyTorch's private IPC handle
format (which changed between releases: a trainer and a sidecar image may ship different
PyTorch versions) nor on its reference-counting files in /dev/shm (created mode 0600, unreadable
by the sidecar, which runs as its own user), and the region stays shareable when the trainer
runs the caching allocator with expandable segments.

Legacy CUDA IPC works between processes that see the same process-id namespace (the pod sets
`shareProcessNamespace`) and the same GPU (the sidecar finds it by UUID): a handle opens only
memory that a process of the pod allocated. The size the trainer declares is checked against
the allocation the handle opened (`cuMemGetAddressRange`): the sidecar never reads past it.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from typing import Any

HANDLE_BYTES = 64  # sizeof(CUipcMemHandle)
_LAZY_ENABLE_PEER_ACCESS = 1


class CudaIpcError(RuntimeError):
    """A CUDA driver call for the shared region failed; the text names the call and the error."""


class _Handle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * HANDLE_BYTES)]


@dataclass
class _Driver:
    lib: Any
    open_handle: Any

    def check(self, result: int, call: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(result, ctypes.byref(name))
            text = name.value.decode() if name.value else "unknown error"
            raise CudaIpcError(f"{call} failed: {text} ({result})")


_driver: _Driver | None = None


def driver() -> _Driver:
    global _driver
    if _driver is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaIpcError(f"the CUDA driver library is not available: {exc}") from exc
        u64, size = ctypes.c_uint64, ctypes.c_size_t
        lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(u64), size]
        lib.cuMemFree_v2.argtypes = [u64]
        lib.cuIpcGetMemHandle.argtypes = [ctypes.POINTER(_Handle), u64]
        open_handle = getattr(lib, "cuIpcOpenMemHandle_v2", None) or lib.cuIpcOpenMemHandle
        open_handle.argtypes = [ctypes.POINTER(u64), _Handle, ctypes.c_uint]
        lib.cuIpcCloseMemHandle.argtypes = [u64]
        lib.cuMemGetAddressRange_v2.argtypes = [ctypes.POINTER(u64), ctypes.POINTER(size), u64]
        lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        _driver = _Driver(lib, open_handle)
    return _driver


class _DeviceMemory:
    """Raw device memory seen as a 1-D uint8 CUDA array; `release` runs when PyTorch lets go."""

    def __init__(self, pointer: int, nbytes: int, release: Any) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (pointer, False),
            "strides": None,
            "version": 2,
        }
        self._release = release

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the driver may be gone already
            self._release()


def _as_tensor(memory: _DeviceMemory, index: int) -> Any:
    import torch

    # The tensor keeps `memory` alive; when its storage dies, `memory` frees or closes it.
    return torch.as_tensor(memory, device=torch.device("cuda", index))


def allocate(nbytes: int, index: int) -> tuple[Any, bytes]:
    """A zeroed uint8 tensor of `nbytes` on GPU `index`, and the IPC handle that shares it."""
    import torch

    torch.cuda.set_device(index)
    torch.cuda.synchronize(index)  # makes the device's primary context current on this thread
    cuda = driver()
    pointer = ctypes.c_uint64()
    cuda.check(cuda.lib.cuMemAlloc_v2(ctypes.byref(pointer), nbytes), "cuMemAlloc")
    address = pointer.value

    def free() -> None:
        cuda.lib.cuMemFree_v2(address)

    flat = _as_tensor(_DeviceMemory(address, nbytes, free), index)
    flat.zero_()
    handle = _Handle()
    cuda.check(cuda.lib.cuIpcGetMemHandle(ctypes.byref(handle), address), "cuIpcGetMemHandle")
    return flat, ctypes.string_at(ctypes.addressof(handle), HANDLE_BYTES)


def extent_problem(nbytes: int, pointer: int, base: int, size: int) -> str | None:
    """Why `nbytes` from `pointer` do not fit in the allocation [base, base + size), or None.
    Pure: the driver's answer in, the refusal out."""
    if pointer < base or pointer >= base + size:
        return f"the opened memory at {pointer:#x} lies outside its allocation ({base:#x}, {size} bytes)"
    room = base + size - pointer
    if nbytes > room:
        return f"the region declares {nbytes} bytes but its allocation holds {room} from the handle's address"
    return None


def open_shared(handle: bytes, nbytes: int, index: int) -> Any:
    """The trainer's region on GPU `index`, opened from its IPC handle (closed when dropped);
    CudaIpcError when the allocation behind the handle is smaller than `nbytes`."""
    import torch

    if len(handle) != HANDLE_BYTES:
        raise CudaIpcError(f"a CUDA IPC handle has {HANDLE_BYTES} bytes, not {len(handle)}")
    torch.cuda.set_device(index)
    torch.cuda.synchronize(index)
    cuda = driver()
    pointer = ctypes.c_uint64()
    result = cuda.open_handle(
        ctypes.byref(pointer), _Handle.from_buffer_copy(handle), _LAZY_ENABLE_PEER_ACCESS
    )
    cuda.check(result, "cuIpcOpenMemHandle")
    address = pointer.value
    base, size = ctypes.c_uint64(), ctypes.c_size_t()
    try:
        cuda.check(
            cuda.lib.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), address),
            "cuMemGetAddressRange",
        )
        problem = extent_problem(nbytes, address, base.value, size.value)
        if problem is not None:
            raise CudaIpcError(problem)
    except CudaIpcError:
        cuda.lib.cuIpcCloseMemHandle(address)
        raise

    def close() -> None:
        cuda.lib.cuIpcCloseMemHandle(address)

    return _as_tensor(_DeviceMemory(address, nbytes, close), index)
