"""CUDA device memory, streams and the device query for the TensorRT and TensorRT-for-RTX runners
and builders: cuda-python's runtime API (`cuda.bindings.runtime`), or pycuda where cuda-python is absent.

Below rtk.build and the engine runners, which both ask it for the GPU (the build for the sidecar,
the runner to check an engine against the device it is about to run on).

Where each call's usage comes from:
  cudaMalloc / cudaMallocHost / cudaMemcpyAsync / cudaStreamSynchronize with (err, value) checks:
      NVIDIA/TensorRT samples/python/common_runtime.py (cuda_call, PinnedHostMem, _do_inference_base),
      and NVIDIA/TensorRT-RTX samples/helloWorld/python/hello_world.py (cuda_assert)
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from rtk.errors import MissingDependency, RtkError, install_hint, require

FLOAT32 = np.dtype(np.float32)


def no_cuda_device(reason: str) -> MissingDependency:
    return MissingDependency(f"no CUDA device ({reason}): TensorRT needs an NVIDIA GPU and its driver")


class CudaPython:
    """cuda-python's runtime API (`cuda.bindings.runtime`, cuda-python >= 12.6.1); every call returns
    (error, *values) and is checked here. The runtime API makes the device's primary context (the
    one TensorRT uses) current in every thread, so current() has nothing to do."""

    name = "cuda-python"

    def __init__(self, extra: str = "gpu") -> None:
        self.rt = require("cuda.bindings.runtime", extra)
        self._streams: dict[int, Any] = {}  # native handle -> cudaStream_t
        self._pinned: dict[int, int] = {}  # id(array) -> cudaMallocHost pointer

    def _check(self, result: tuple[Any, ...], call: str) -> Any:
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RtkError(f"CUDA error in {call}: {self.rt.cudaGetErrorName(err)[1].decode()}")
        return values[0] if values else None

    def device(self) -> dict[str, str]:
        """{"name", "compute_capability"} of device 0; MissingDependency where there is none."""
        error, count = self.rt.cudaGetDeviceCount()
        if error != self.rt.cudaError_t.cudaSuccess:
            raise no_cuda_device(self.rt.cudaGetErrorName(error)[1].decode())
        if count < 1:
            raise no_cuda_device("0 devices")
        prop = self._check(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{prop.major}.{prop.minor}"}

    def current(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self._check(self.rt.cudaFree(pointer), "cudaFree")

    def host_array(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array in pinned (page-locked) host memory: cudaMemcpyAsync from pageable
        memory is synchronous, so the staging buffers are pinned, as NVIDIA's samples do."""
        nbytes = int(np.prod(shape)) * FLOAT32.itemsize
        pointer = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = ctypes.cast(ctypes.c_void_p(pointer), ctypes.POINTER(ctypes.c_ubyte))
        array = np.ctypeslib.as_array(raw, (nbytes,)).view(FLOAT32).reshape(shape)
        self._pinned[id(array)] = pointer
        return array

    def free_host(self, array: np.ndarray) -> None:
        self._check(self.rt.cudaFreeHost(self._pinned.pop(id(array))), "cudaFreeHost")

    def stream(self) -> int:
        stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        handle = native_handle(stream)
        self._streams[handle] = stream
        return handle

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(self._streams.pop(stream)), "cudaStreamDestroy")

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self._streams[stream]),
                    "cudaMemcpyAsync (host to device)")

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self._streams[stream]),
                    "cudaMemcpyAsync (device to host)")

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(self._streams[stream]), "cudaStreamSynchronize")


def native_handle(stream: Any) -> int:
    """The cudaStream_t handle as an int (what execute_async_v3 and CUDA events take).
    int(cudaStream_t) is deprecated from cuda-bindings 12.9.1 / 13.0 in favour of
    cuda.bindings.utils.get_cuda_native_handle (NVIDIA/cuda-python#773), absent before."""
    try:
        utils = importlib.import_module("cuda.bindings.utils")
    except ImportError:
        return int(stream)
    return int(getattr(utils, "get_cuda_native_handle", int)(stream))


class PyCuda:
    """pycuda's driver API on the device's primary context (the one TensorRT and the runtime API
    use). Driver-API contexts are current per thread, so every use is bracketed by current(),
    which pushes the context and pops it again."""

    name = "pycuda"

    def __init__(self) -> None:
        self.driver = require("pycuda.driver", "pycuda")
        self.driver.init()
        if self.driver.Device.count() < 1:
            raise no_cuda_device("pycuda sees 0 devices")
        self._device = self.driver.Device(0)
        self.context = self._device.retain_primary_context()
        self._allocations: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def device(self) -> dict[str, str]:
        major, minor = self._device.compute_capability()
        return {"name": str(self._device.name()).strip(), "compute_capability": f"{major}.{minor}"}

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.driver.Context.pop()

    def malloc(self, nbytes: int) -> int:
        allocation = self.driver.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        self._allocations.pop(pointer).free()

    def host_array(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(self.driver.pagelocked_empty(shape, FLOAT32))

    def free_host(self, array: np.ndarray) -> None:
        allocation: Any = array.base  # the HostAllocation behind pagelocked_empty's array
        allocation.free()

    def stream(self) -> int:
        stream = self.driver.Stream()
        self._streams[stream.handle] = stream
        return int(stream.handle)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(stream)

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        self.driver.memcpy_htod_async(pointer, array, self._streams[stream])

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        self.driver.memcpy_dtoh_async(array, pointer, self._streams[stream])

    def synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()


def cuda_binding(extra: str = "gpu") -> CudaPython | PyCuda:
    """cuda-python, or pycuda where cuda-python is not installed; the device query, the memory
    and the streams all go through the one chosen. `extra`: the extra whose install command a
    missing cuda-python names ("gpu": TensorRT's, "rtx": TensorRT for RTX's)."""
    try:
        return CudaPython(extra)
    except MissingDependency as no_cuda_python:
        try:
            return PyCuda()
        except MissingDependency as no_pycuda:
            if "not installed" not in str(no_pycuda):
                raise  # pycuda is there but sees no device
            raise MissingDependency(f"TensorRT needs cuda-python or pycuda for the GPU ({no_cuda_python}); "
                                    f"install it with: {install_hint(extra)}") from None
