"""TensorRT and TensorRT-for-RTX engines (.plan + .plan.json sidecar), device memory through
cuda-python or pycuda (rtk.runtime.cuda).

The engine is deserialized once and shared; each calling thread gets its own execution context,
CUDA stream, device buffers and pinned host staging buffers (all sized for the profile's max batch),
because an execution context must not run two inferences at once. Model splits batches above the
profile's max. Every TensorRT and CUDA call's result is checked where it is made.

The two runtimes share every call but two (TensorRT for RTX has TensorRT 11's runtime API, module
tensorrt_rtx): where TensorRT creates an execution context from the engine alone, TensorRT for RTX
creates it from a runtime config, and compiles the engine's kernels for this GPU then ("JIT").
TensorRTRTXRunner's runtime config holds:
  - a runtime cache, read from and written back to `<engine stem>.runtime.cache` beside the engine,
    so the JIT of a GPU happens once (TensorRT for RTX refuses a cache of another GPU, driver or
    version, and rtk then starts a new one);
  - the CUDA graph strategy WHOLE_GRAPH_CAPTURE (kernel launches recorded once per shape);
  - the dynamic-shape kernel specialization EAGER: a batch size's specialized kernels are compiled
    before its first inference (the default, LAZY, runs a generic kernel while compiling in the
    background, so the first timings of a shape would measure the generic one).

Where each call's usage comes from:
  Runtime.deserialize_cuda_engine, create_execution_context (None when out of memory),
  set_input_shape, set_tensor_address (False on a bad name), execute_async_v3:
      NVIDIA/TensorRT samples/python/common_runtime.py (do_inference), Polygraphy
      polygraphy/backend/trt/runner.py (TrtRunner), and NVIDIA/TensorRT-RTX
      samples/helloWorld/python/hello_world.py (run_inference)
  create_runtime_config, create_runtime_cache, set_runtime_cache, cuda_graph_strategy,
  dynamic_shapes_kernel_specialization_strategy, create_execution_context(runtime_config),
  IRuntimeCache.serialize: NVIDIA/TensorRT-RTX samples/apiUsage/python/api_usage.py (run_inference);
  IRuntimeCache.deserialize returning False for a cache of another environment: its docstring
Apps embed these runners; they need no Polygraphy (only `rtk build` does).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rtk.errors import RtkError, require
from rtk.fileio import atomic_path
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME, DeviceWork, Runner
from rtk.runtime.cuda import FLOAT32, cuda_binding
from rtk.runtime.engines import TENSORRT, TENSORRT_RTX, EngineRuntime, load_engine_checked, runtime_of

if TYPE_CHECKING:  # checked against typings/ (tests/test_build.py runs mypy)
    import tensorrt as trt
    import tensorrt_rtx as trt_rtx


def runtime_cache_path(plan_path: str | Path) -> Path:
    """model.int8.rtx.plan -> model.int8.rtx.runtime.cache: TensorRT for RTX's kernels for this GPU"""
    return Path(plan_path).with_suffix(".runtime.cache")


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
    """A TensorRT engine; TensorRTRTXRunner overrides what TensorRT for RTX does differently."""

    backend = "tensorrt"
    runtime: EngineRuntime = TENSORRT

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
        product = self.runtime.product
        # the sidecar first (sha256, the runtime's version, the GPU or the compute capabilities), so a
        # mismatch is one line before the runtime is asked
        plan, sidecar = load_engine_checked(Path(self.path))
        if runtime_of(sidecar) is not self.runtime:
            raise RtkError(f"{self.path} is a {runtime_of(sidecar).product} engine, not a {product} one: "
                           f"load it with backend {runtime_of(sidecar).name!r} (or 'auto')")
        module = require(self.runtime.module, self.runtime.extra)
        self._cuda = cuda_binding(self.runtime.extra)
        for tensor in sidecar["inputs"] + sidecar["outputs"]:
            if tensor["dtype"] != "float32":
                raise RtkError(f"{self.path}: tensor {tensor['name']} is {tensor['dtype']}; rtk engines "
                               "take and return float32 (the precision lives inside the engine)")
        self._sidecar = sidecar
        self.precision = sidecar["precision"]
        self._num_classes = len(sidecar["classes"])
        self._logger = module.Logger(module.Logger.WARNING)
        with self._cuda.current():
            engine: trt.ICudaEngine | None = module.Runtime(self._logger).deserialize_cuda_engine(plan)
            if engine is None:
                raise RtkError(f"{product} could not deserialize {self.path} (see the {product} log above)")
            self._engine = engine
            self._configure(module)

    def _configure(self, module: Any) -> None:
        """What the runtime needs before contexts are made (TensorRT: nothing)."""

    def _new_context(self) -> trt.IExecutionContext | None:
        return self._engine.create_execution_context()

    def _state(self) -> ThreadState:
        state: ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            rows = self.max_batch or 1
            with self._cuda.current():
                context = self._new_context()
                if context is None:
                    raise RtkError(f"{self.runtime.product} could not create an execution context for {self.path} "
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
                    raise RtkError(f"{self.runtime.product} set_tensor_address({name!r}) failed for {self.path}: "
                                   "the engine has no such tensor (see the log above)")
            self._local.state = state
        return state

    def _set_batch(self, state: ThreadState, batch_size: int) -> None:
        if not 1 <= batch_size <= (self.max_batch or 1):
            raise RtkError(f"batch of {batch_size} is outside the engine's profile 1..{self.max_batch}")
        if not state.context.set_input_shape(INPUT_NAME, (batch_size, *IMAGE_SHAPE)):
            raise RtkError(f"{self.runtime.product} refused input shape {(batch_size, *IMAGE_SHAPE)} for {self.path}")

    def _enqueue(self, state: ThreadState) -> None:
        if not state.context.execute_async_v3(state.stream):
            raise RtkError(f"{self.runtime.product} execute_async_v3 failed for {self.path} (see its log)")

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
            self._states.clear()  # the contexts go before what they were made from (TensorRT's order)
            self._local = threading.local()
            self._release()
            del self._engine

    def _release(self) -> None:
        """What the runtime keeps beside the engine, released before it (TensorRT: nothing)."""


class TensorRTRTXRunner(TensorRTRunner):
    """A TensorRT-for-RTX engine: contexts from a runtime config with a runtime cache on disk."""

    backend = "tensorrt-rtx"
    runtime = TENSORRT_RTX

    def _configure(self, module: Any) -> None:
        product, engine = self.runtime.product, cast("trt_rtx.ICudaEngine", self._engine)
        config = engine.create_runtime_config()
        if config is None:
            raise RtkError(f"{product} could not create a runtime config for {self.path}")
        cache = config.create_runtime_cache()
        if cache is None:
            raise RtkError(f"{product} could not create a runtime cache for {self.path}")
        path = runtime_cache_path(self.path)
        if path.is_file() and not cache.deserialize(path.read_bytes()):
            warnings.warn(f"{path} is from another GPU, driver or {product} version (or damaged): its kernels "
                          "are compiled again and the file replaced when the model is closed", RuntimeWarning,
                          stacklevel=2)
        if not config.set_runtime_cache(cache):
            raise RtkError(f"{product} refused the runtime cache for {self.path} (set_runtime_cache failed)")
        config.cuda_graph_strategy = module.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        config.dynamic_shapes_kernel_specialization_strategy = module.DynamicShapesKernelSpecializationStrategy.EAGER
        self._runtime_config, self._runtime_cache = config, cache

    def _new_context(self) -> trt.IExecutionContext | None:
        with self._lock:  # the JIT of a context fills the shared runtime cache: one at a time
            engine = cast("trt_rtx.ICudaEngine", self._engine)
            context = engine.create_execution_context(self._runtime_config)
        return context

    def _release(self) -> None:
        """The runtime cache written beside the engine (atomically), so the next load skips the JIT;
        a folder that cannot be written costs that JIT again, said in a warning, not an error."""
        path = runtime_cache_path(self.path)
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(bytes(self._runtime_cache.serialize()))
        except (OSError, RtkError) as exc:
            warnings.warn(f"{self.runtime.product} runtime cache not saved to {path} ({exc}): the next load "
                          "compiles the engine's kernels again", RuntimeWarning, stacklevel=2)
        del self._runtime_config, self._runtime_cache
