"""The few CUDA calls Mirage makes itself, through ``ctypes``: GPU identity and device buffers.

Two libraries, both loaded lazily so this module imports on any CPU machine:

- the **driver** (``libcuda.so.1``, installed with the NVIDIA driver and mounted
  into containers by the NVIDIA container toolkit) answers "which GPU is this":
  name, compute capability, memory. Those go into the TensorRT engine cache key.
- the **runtime** (``libcudart``, in the CUDA base image or the ``nvidia-cuda-runtime``
  wheel) gives device memory, copies and a stream for running TensorRT engines.

Using ``ctypes`` keeps the GPU image free of an extra CUDA binding package
(PyCUDA, cuda-python) for five functions. Device 0 is the first GPU *visible to
this process*: Ray sets ``CUDA_VISIBLE_DEVICES`` for each GPU replica.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import os
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so")
RUNTIME_LIBRARIES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_CUDA_MEMCPY_HOST_TO_DEVICE = 1
_CUDA_MEMCPY_DEVICE_TO_HOST = 2


class CudaUnavailableError(RuntimeError):
    """CUDA cannot be used in this process (no driver, no GPU, no runtime library)."""


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for compiled engines: its model name and compute capability."""

    name: str
    compute_capability: str  # "8.6" for an A10G
    memory_total_mb: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "compute_capability": self.compute_capability, "memory_total_mb": self.memory_total_mb}


def _load_first(names: tuple[str, ...], extra_dirs: tuple[str, ...] = ()) -> ctypes.CDLL:
    errors: list[str] = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    for folder in extra_dirs:
        for name in names:
            for path in sorted(glob.glob(os.path.join(folder, name + "*"))):
                try:
                    return ctypes.CDLL(path)
                except OSError as exc:
                    errors.append(str(exc))
    raise CudaUnavailableError(f"none of {', '.join(names)} could be loaded")


def _wheel_library_dirs() -> tuple[str, ...]:
    """``lib`` folders of NVIDIA's pip wheels (``nvidia/*/lib``), where pip-installed CUDA lives."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return ()
    dirs: list[str] = []
    for root in spec.submodule_search_locations:
        dirs.extend(sorted(glob.glob(os.path.join(root, "*", "lib"))))
    return tuple(dirs)


def probe_gpu(device: int = 0) -> tuple[GpuInfo | None, str]:
    """``(GpuInfo, "")`` for the visible GPU ``device``, or ``(None, why not)``. Never raises."""
    try:
        lib = _load_first(DRIVER_LIBRARIES)
    except CudaUnavailableError:
        return None, "no NVIDIA driver (libcuda.so.1 is not installed or not mounted)"
    try:
        rc = lib.cuInit(0)
        if rc != 0:
            return None, f"the CUDA driver did not initialise (error {rc}; 100 means no CUDA-capable device)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return None, "the NVIDIA driver reports no GPU"
        if device >= count.value:
            return None, f"GPU {device} requested but only {count.value} visible"
        handle = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(handle), device) != 0:
            return None, f"cuDeviceGet({device}) failed"
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, handle)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle)
        total = ctypes.c_size_t(0)
        memory_mb: int | None = None
        total_mem = getattr(lib, "cuDeviceTotalMem_v2", None)
        if total_mem is not None and total_mem(ctypes.byref(total), handle) == 0:
            memory_mb = int(total.value // (1024 * 1024))
    except (AttributeError, OSError) as exc:  # a broken or partial driver install
        return None, f"the CUDA driver could not be queried ({exc})"
    gpu_name = name.value.decode("utf-8", "replace").strip() or "unknown NVIDIA GPU"
    return GpuInfo(gpu_name, f"{major.value}.{minor.value}", memory_mb), ""


class CudaRuntime:
    """Device memory, copies and streams through ``libcudart`` (the minimum TensorRT needs)."""

    def __init__(self) -> None:
        lib = _load_first(RUNTIME_LIBRARIES, _wheel_library_dirs())
        vp, size_t = ctypes.c_void_p, ctypes.c_size_t
        lib.cudaMalloc.argtypes = [ctypes.POINTER(vp), size_t]
        lib.cudaFree.argtypes = [vp]
        lib.cudaMemcpyAsync.argtypes = [vp, vp, size_t, ctypes.c_int, vp]
        lib.cudaStreamCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cudaStreamSynchronize.argtypes = [vp]
        lib.cudaStreamDestroy.argtypes = [vp]
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        self._lib = lib

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            text = self._lib.cudaGetErrorString(rc)
            raise CudaUnavailableError(f"CUDA {what} failed: {text.decode() if text else rc}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(ptr), max(int(nbytes), 1)), f"cudaMalloc({nbytes})")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        if ptr:
            self._lib.cudaFree(ctypes.c_void_p(ptr))

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_destroy(self, stream: int) -> None:
        if stream:
            self._lib.cudaStreamDestroy(ctypes.c_void_p(stream))

    def synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def copy_to_device(self, device_ptr: int, host: np.ndarray, stream: int) -> None:
        """Queue host → device; ``host`` must stay alive until the stream is synchronised."""
        if not host.flags.c_contiguous:
            raise ValueError("host array must be C-contiguous")
        rc = self._lib.cudaMemcpyAsync(
            ctypes.c_void_p(device_ptr), ctypes.c_void_p(host.ctypes.data), host.nbytes, _CUDA_MEMCPY_HOST_TO_DEVICE, ctypes.c_void_p(stream)
        )
        self._check(rc, "copy to device")

    def copy_to_host(self, host: np.ndarray, device_ptr: int, stream: int) -> None:
        """Queue device → host into the C-contiguous ``host`` array."""
        if not host.flags.c_contiguous:
            raise ValueError("host array must be C-contiguous")
        rc = self._lib.cudaMemcpyAsync(
            ctypes.c_void_p(host.ctypes.data), ctypes.c_void_p(device_ptr), host.nbytes, _CUDA_MEMCPY_DEVICE_TO_HOST, ctypes.c_void_p(stream)
        )
        self._check(rc, "copy to host")
