"""TensorRT engines (.plan + .plan.json sidecar), device memory through cuda-python or pycuda.

The engine is deserialized once and shared; each calling thread gets its own execution context,
CUDA stream and device buffers (sized for the profile's max batch), because an execution context
must not run two inferences at once. Model splits batches above the profile's max.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtk.errors import MissingDependency, RtkError, require
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME, DeviceWork, Runner

FLOAT32_BYTES = 4


class CudaPython:
    """cuda-python's runtime API (`cuda.bindings.runtime`); every call returns (error, *values)."""

    def __init__(self) -> None:
        self.rt = require("cuda.bindings.runtime", "gpu")

    def _check(self, result: tuple) -> Any:
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RtkError(f"CUDA error: {self.rt.cudaGetErrorName(err)[1].decode()}")
        return values[0] if values else None

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def free(self, pointer: int) -> None:
        self._check(self.rt.cudaFree(pointer))

    def stream(self) -> int:
        return int(self._check(self.rt.cudaStreamCreate()))

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(stream))

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream))

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream))

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def enter_thread(self) -> None:
        return None  # the runtime API makes the primary context current in every thread


class PyCuda:
    """pycuda's driver API on the device's primary context (the one TensorRT and the runtime API use)."""

    def __init__(self) -> None:
        self.driver = require("pycuda.driver", "pycuda")
        self.driver.init()
        self.context = self.driver.Device(0).retain_primary_context()
        self._allocations: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def enter_thread(self) -> None:
        self.context.push()  # driver-API contexts are current per thread

    def malloc(self, nbytes: int) -> int:
        allocation = self.driver.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        self._allocations.pop(pointer).free()

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
    """cuda-python, or pycuda where cuda-python is not installed."""
    try:
        return CudaPython()
    except MissingDependency:
        try:
            return PyCuda()
        except MissingDependency:
            raise MissingDependency("TensorRT inference needs cuda-python or pycuda for device memory; "
                                    "install it with: pip install 'rtk[gpu]'") from None


@dataclass
class ThreadState:
    """What one thread needs to run the shared engine: its own context, stream and buffers."""

    context: Any  # tensorrt.IExecutionContext
    stream: int
    input: int  # device pointer, float32 [max_batch, 3, 32, 32]
    output: int  # device pointer, float32 [max_batch, num_classes]


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
        trt = require("tensorrt", "gpu")
        self._cuda = cuda_binding()
        from rtk.build import load_engine_checked  # checks the sidecar: sha256, TensorRT version, GPU

        plan, self._sidecar = load_engine_checked(Path(self.path))
        for tensor in self._sidecar["inputs"] + self._sidecar["outputs"]:
            if tensor["dtype"] != "float32":
                raise RtkError(f"{self.path}: tensor {tensor['name']} is {tensor['dtype']}; rtk engines "
                               "take and return float32 (the precision lives inside the engine)")
        self.precision = self._sidecar["precision"]
        self._num_classes = len(self._sidecar["classes"])
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RtkError(f"TensorRT could not deserialize {self.path} (see the TensorRT log above)")

    def _state(self) -> ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            self._cuda.enter_thread()
            rows = self.max_batch or 1
            context = self._engine.create_execution_context()
            state = ThreadState(
                context=context,
                stream=self._cuda.stream(),
                input=self._cuda.malloc(rows * int(np.prod(IMAGE_SHAPE)) * FLOAT32_BYTES),
                output=self._cuda.malloc(rows * self._num_classes * FLOAT32_BYTES),
            )
            context.set_tensor_address(INPUT_NAME, state.input)
            context.set_tensor_address(OUTPUT_NAME, state.output)
            with self._lock:
                self._states.append(state)
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

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(feed[INPUT_NAME], dtype=np.float32)  # [N, 3, 32, 32]
        state = self._state()
        self._set_batch(state, len(x))
        logits = np.empty((len(x), self._num_classes), dtype=np.float32)
        self._cuda.to_device(state.input, x, state.stream)
        self._enqueue(state)
        self._cuda.to_host(logits, state.output, state.stream)
        self._cuda.synchronize(state.stream)
        return {OUTPUT_NAME: logits}

    def device_work(self, batch_size: int) -> DeviceWork:
        state = self._state()
        self._set_batch(state, batch_size)
        return DeviceWork(enqueue=lambda: self._enqueue(state), stream=state.stream)

    def _deactivate(self) -> None:
        with self._lock:
            for state in self._states:
                self._cuda.synchronize(state.stream)
                self._cuda.free(state.input)
                self._cuda.free(state.output)
                self._cuda.destroy_stream(state.stream)
            self._states.clear()
        self._local = threading.local()
        del self._engine
