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

**Driver check.** The GPU image is built for CUDA 13 (onnxruntime-gpu 1.31 and
tensorrt-cu13), which needs an R580 or newer driver; on a host with an R535/R570
driver nothing CUDA 13 can run, and the failures surface later as cryptic library
errors. :func:`probe_gpu` therefore compares the CUDA version the driver supports
(``cuDriverGetVersion``) with the one the installed wheels need
(:func:`required_cuda`) and, when the driver is too old, reports no usable GPU with
one sentence that says which driver is there and which is needed
(:func:`driver_problem`), so every model falls back to the CPU instead of crashing.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
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

#: The driver branch that first supports each CUDA major version (NVIDIA's CUDA
#: toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions").
MIN_DRIVER_BRANCH = {12: 525, 13: 580}
NVML_LIBRARIES = ("libnvidia-ml.so.1", "libnvidia-ml.so")


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


def _version_text(encoded: int) -> str:
    """``13000`` → ``"13.0"`` (CUDA's 1000 * major + 10 * minor)."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def required_cuda() -> tuple[int, int, str] | None:
    """(major, minor, which package needs it) of the CUDA the installed GPU wheels are built for.

    onnxruntime-gpu records its CUDA version in ``onnxruntime.capi.build_and_package_info``;
    the TensorRT wheel names its CUDA major (``tensorrt-cu13``). ``None`` on a CPU-only
    install (nothing to check).
    """
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        info = None
    text = str(getattr(info, "cuda_version", "") or "") if info is not None else ""
    if text:
        parts = text.split(".")
        try:
            return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0, f"onnxruntime-gpu (built for CUDA {text})"
        except ValueError:
            pass
    for major in (13, 12):
        try:
            version = importlib.metadata.version(f"tensorrt-cu{major}")
        except importlib.metadata.PackageNotFoundError:
            continue
        return major, 0, f"tensorrt-cu{major} {version}"
    return None


def driver_release() -> str | None:
    """The NVIDIA driver's release (``"580.65.06"``) through NVML, or None when NVML is absent."""
    try:
        nvml = _load_first(NVML_LIBRARIES)
        if nvml.nvmlInit_v2() != 0:
            return None
        buffer = ctypes.create_string_buffer(96)
        try:
            if nvml.nvmlSystemGetDriverVersion(buffer, 96) != 0:
                return None
        finally:
            nvml.nvmlShutdown()
    except (CudaUnavailableError, AttributeError, OSError):
        return None
    return buffer.value.decode("ascii", "replace").strip() or None


def driver_problem(driver_cuda: int, required: tuple[int, int, str] | None, release: str | None = None) -> str | None:
    """One sentence when a driver supporting CUDA ``driver_cuda`` (encoded, 12080) cannot run
    what ``required`` needs; None when it can (or when nothing is required)."""
    if required is None:
        return None
    major, minor, needed_by = required
    if driver_cuda >= major * 1000 + minor * 10:
        return None
    branch = MIN_DRIVER_BRANCH.get(major)
    driver = f"NVIDIA driver {release}" if release else "the NVIDIA driver"
    newer = f"an R{branch} or newer driver" if branch else f"a driver supporting CUDA {major}.{minor}"
    return (
        f"{driver} supports CUDA {_version_text(driver_cuda)} but {needed_by} needs CUDA {major}.{minor}, i.e. {newer}: "
        "the GPU is not used; upgrade the driver or schedule on R580+ nodes (docs/gpu.md)"
    )


def probe_gpu(device: int = 0) -> tuple[GpuInfo | None, str]:
    """``(GpuInfo, "")`` for the visible GPU ``device``, or ``(None, why not)``. Never raises.

    A driver too old for the CUDA the wheels need counts as no usable GPU (:func:`driver_problem`).
    """
    try:
        lib = _load_first(DRIVER_LIBRARIES)
    except CudaUnavailableError:
        return None, "no NVIDIA driver (libcuda.so.1 is not installed or not mounted)"
    try:
        rc = lib.cuInit(0)
        if rc != 0:
            return None, f"the CUDA driver did not initialise (error {rc}; 100 means no CUDA-capable device)"
        supported = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(supported)) == 0:
            problem = driver_problem(supported.value, required_cuda(), driver_release())
            if problem is not None:
                return None, problem
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


def cuda_runtime_version() -> tuple[str | None, str]:
    """``("13.0", "")``: the version of the CUDA runtime (libcudart) this process loads, or ``(None, why not)``.

    Needs no GPU (``cudaRuntimeGetVersion`` only reads the library). Goes into the
    TensorRT engine key: the same TensorRT release built for CUDA 12 and for CUDA 13
    gives different engines.
    """
    try:
        lib = _load_first(RUNTIME_LIBRARIES, _wheel_library_dirs())
        version = ctypes.c_int(0)
        lib.cudaRuntimeGetVersion.argtypes = [ctypes.POINTER(ctypes.c_int)]
        if lib.cudaRuntimeGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
            return None, "cudaRuntimeGetVersion failed"
    except CudaUnavailableError as exc:
        return None, f"no CUDA runtime library ({exc})"
    except (AttributeError, OSError) as exc:
        return None, f"the CUDA runtime library could not be queried ({exc})"
    return _version_text(version.value), ""


class CudaRuntime:
    """Device memory, copies and streams through ``libcudart`` (the minimum TensorRT needs)."""

    def __init__(self) -> None:
        lib = _load_first(RUNTIME_LIBRARIES, _wheel_library_dirs())
        vp, size_t = ctypes.c_void_p, ctypes.c_size_t
        try:
            lib.cudaMalloc.argtypes = [ctypes.POINTER(vp), size_t]
            lib.cudaFree.argtypes = [vp]
            lib.cudaMemcpyAsync.argtypes = [vp, vp, size_t, ctypes.c_int, vp]
            lib.cudaStreamCreate.argtypes = [ctypes.POINTER(vp)]
            lib.cudaStreamSynchronize.argtypes = [vp]
            lib.cudaStreamDestroy.argtypes = [vp]
            lib.cudaGetErrorString.argtypes = [ctypes.c_int]
            lib.cudaGetErrorString.restype = ctypes.c_char_p
        except AttributeError as exc:  # a library by that name without the runtime API
            raise CudaUnavailableError(f"the CUDA runtime library lacks {exc}") from exc
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
            ctypes.c_void_p(device_ptr),
            ctypes.c_void_p(host.ctypes.data),
            host.nbytes,
            _CUDA_MEMCPY_HOST_TO_DEVICE,
            ctypes.c_void_p(stream),
        )
        self._check(rc, "copy to device")

    def copy_to_host(self, host: np.ndarray, device_ptr: int, stream: int) -> None:
        """Queue device → host into the C-contiguous ``host`` array."""
        if not host.flags.c_contiguous:
            raise ValueError("host array must be C-contiguous")
        rc = self._lib.cudaMemcpyAsync(
            ctypes.c_void_p(host.ctypes.data),
            ctypes.c_void_p(device_ptr),
            host.nbytes,
            _CUDA_MEMCPY_DEVICE_TO_HOST,
            ctypes.c_void_p(stream),
        )
        self._check(rc, "copy to host")
