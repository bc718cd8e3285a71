"""TensorRT engines (.plan + .plan.json sidecar), device memory through cuda-python or pycuda.

The engine is deserialized once and shared; each calling thread gets its own execution context,
CUDA stream, device buffers and pinned host staging buffers (all sized for the profile's max batch),
because an execution context must not run two inferences at once. Model splits batches above the
profile's max. Every TensorRT and CUDA call's result is checked where it is made.

Where each call's usage comes from:
  cudaMalloc / cudaMallocHost / cudaMemcpyAsync / cudaStreamSynchronize with (err, value) checks:
      NVIDIA/TensorRT samples/python/common_runtime.py (cuda_call, PinnedHostMem, _do_inference_base)
  Runtime.deserialize_cuda_engine, create_execution_context (None when out of memory),
  set_input_shape, set_tensor_address (False on a bad name), execute_async_v3:
      the same file's do_inference, and Polygraphy polygraphy/backend/trt/runner.py (TrtRunner)
Apps embed this runner; it needs no Polygraphy (only `rtk build` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtk.errors import GPU_INSTALL, MissingDependency, RtkError, require
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME, DeviceWork, Runner

if TYPE_CHECKING:
    import tensorrt as trt  # checked against typings/tensorrt (tests/test_build.py runs mypy)

FLOAT32 = np.dtype(np.float32)


def no_cuda_device(reason: str) -> MissingDependency:
    return MissingDependency(f"no CUDA device ({reason}): TensorRT needs an NVIDIA GPU and its driver")


class CudaPython:
    """cuda-python's runtime API (`cuda.bindings.runtime`, cuda-python >= 12.6.1); every call returns
    (error, *values) and is checked here. The runtime API makes the device's primary context (the
    one TensorRT uses) current in every thread, so current() has nothing to do."""

    name = "cuda-python"

    def __init__(self) -> None:
        self.rt = require("cuda.bindings.runtime", "gpu")
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


def cuda_binding() -> CudaPython | PyCuda:
    """cuda-python, or pycuda where cuda-python is not installed; the device query, the memory
    and the streams all go through the one chosen."""
    try:
        return CudaPython()
    except MissingDependency as no_cuda_python:
        try:
            return PyCuda()
        except MissingDependency as no_pycuda:
            if "not installed" not in str(no_pycuda):
                raise  # pycuda is there but sees no device
            raise MissingDependency(f"TensorRT needs cuda-python or pycuda for the GPU ({no_cuda_python}); "
                                    f"install it with: {GPU_INSTALL}") from None


@dataclass
class ThreadState:
    """What one thread needs to run the shared engine: its own context, stream and buffers."""

    context: trt.IExecutionContext
    stream: int
    input: int  # device pointer, float32 [max_batch, 3, 32, 32]
    output: int  # device pointer, float32 [max_batch, num_classes]
    host_input: np.ndarray  # pinned, float32 [max_batch, 3, 32, 32]
    host_output: np.ndarray  # pinned, float32 [max_batch, num_classes]


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: str):
        super().__init__(path, precision="fp32")
        self._sidecar: dict[str, Any] = {}
        self._local = threading.local()
        self._states: list[ThreadState] = []
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        return "cuda"

    @property
    def metadata(self) -> dict[str, Any]:
        return self._sidecar

    @property
    def max_batch(self) -> int | None:
        return int(self._sidecar["profile"]["max"]) if self._sidecar else None

    def _activate(self) -> None:
        tensorrt = require("tensorrt", "gpu")
        self._cuda = cuda_binding()
        from rtk.build import load_engine_checked  # checks the sidecar: sha256, TensorRT version, GPU

        plan, self._sidecar = load_engine_checked(Path(self.path))
        for tensor in self._sidecar["inputs"] + self._sidecar["outputs"]:
            if tensor["dtype"] != "float32":
                raise RtkError(f"{self.path}: tensor {tensor['name']} is {tensor['dtype']}; rtk engines "
                               "take and return float32 (the precision lives inside the engine)")
        self.precision = self._sidecar["precision"]
        self._num_classes = len(self._sidecar["classes"])
        self._logger = tensorrt.Logger(tensorrt.Logger.WARNING)
        engine: trt.ICudaEngine | None = tensorrt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise RtkError(f"TensorRT could not deserialize {self.path} (see the TensorRT log above)")
        self._engine = engine

    def _state(self) -> ThreadState:
        state: ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            rows = self.max_batch or 1
            with self._cuda.current():
                context = self._engine.create_execution_context()
                if context is None:
                    raise RtkError(f"TensorRT could not create an execution context for {self.path} "
                                   "(create_execution_context returned None: out of GPU memory?)")
                state = ThreadState(
                    context=context, stream=self._cuda.stream(),
                    input=self._cuda.malloc(rows * int(np.prod(IMAGE_SHAPE)) * FLOAT32.itemsize),
                    output=self._cuda.malloc(rows * self._num_classes * FLOAT32.itemsize),
                    host_input=self._cuda.host_array((rows, *IMAGE_SHAPE)),
                    host_output=self._cuda.host_array((rows, self._num_classes)))
            with self._lock:
                self._states.append(state)  # released by _deactivate even if a binding fails below
            for name, pointer in ((INPUT_NAME, state.input), (OUTPUT_NAME, state.output)):
                if not context.set_tensor_address(name, pointer):
                    raise RtkError(f"TensorRT set_tensor_address({name!r}) failed for {self.path}: the engine "
                                   "has no such tensor (see the TensorRT log above)")
            self._local.state = state
        return state

    def _set_batch(self, state: ThreadState, batch_size: int) -> None:
        if not 1 <= batch_size <= (self.max_batch or 1):
            raise RtkError(f"batch of {batch_size} is outside the engine's profile 1..{self.max_batch}")
        if not state.context.set_input_shape(INPUT_NAME, (batch_size, *IMAGE_SHAPE)):
            raise RtkError(f"TensorRT refused input shape {(batch_size, *IMAGE_SHAPE)} for {self.path}")

    def _enqueue(self, state: ThreadState) -> None:
        if not state.context.execute_async_v3(state.stream):
            raise RtkError(f"TensorRT execute_async_v3 failed for {self.path} (see the TensorRT log)")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed[INPUT_NAME]  # [N, 3, 32, 32]
        state = self._state()
        self._set_batch(state, len(x))
        staged, logits = state.host_input[:len(x)], state.host_output[:len(x)]  # pinned views
        with self._cuda.current():
            np.copyto(staged, x, casting="same_kind")
            self._cuda.to_device(state.input, staged, state.stream)
            self._enqueue(state)
            self._cuda.to_host(logits, state.output, state.stream)
            self._cuda.synchronize(state.stream)
        return {OUTPUT_NAME: logits.copy()}  # the staging buffer is reused by the next call

    def device_work(self, batch_size: int) -> DeviceWork:
        state = self._state()
        self._set_batch(state, batch_size)

        def enqueue() -> None:
            with self._cuda.current():
                self._enqueue(state)

        return DeviceWork(enqueue=enqueue, stream=state.stream)

    def _deactivate(self) -> None:
        with self._lock, self._cuda.current():
            for state in self._states:
                self._cuda.synchronize(state.stream)
                self._cuda.free(state.input)
                self._cuda.free(state.output)
                self._cuda.free_host(state.host_input)
                self._cuda.free_host(state.host_output)
                self._cuda.destroy_stream(state.stream)
            self._states.clear()
        self._local = threading.local()
        del self._engine
