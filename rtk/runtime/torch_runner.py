"""PyTorch from an rtk checkpoint: the baseline every other backend is measured against.

Variants (what `rtk bench` compares on a GPU, after REFERENCE.md section 4):
    mode="eager"        plain forward; fp32, fp16 or bf16 weights, optionally channels_last
    mode="cuda_graph"   one captured CUDA graph per batch size, replayed (removes launch overhead)
    mode="compile"      torch.compile(mode="max-autotune"), one compilation per batch size
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from rtk.errors import MissingDependency, RtkError, require
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME, DeviceWork, Runner, device_work_input

MODES = ("eager", "cuda_graph", "compile")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
GRAPH_WARMUP_CALLS = 3  # forward passes on a side stream before capture, as torch.cuda.graphs asks


class TorchRunner(Runner):
    backend = "torch"
    backend_errors = (RuntimeError,)  # torch's errors (out of memory, CUDA faults) are RuntimeErrors

    def __init__(self, path: str, *, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = False, mode: str = "eager", threads: int | None = None):
        if precision not in DTYPES:
            raise RtkError(f"torch runs {', '.join(DTYPES)}, not {precision}")
        if mode not in MODES:
            raise RtkError(f"unknown torch mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "cuda_graph" and device != "cuda":
            raise RtkError("CUDA graphs need device cuda")
        super().__init__(path, precision=precision)
        self._device, self.channels_last, self.mode, self.threads = device, channels_last, mode, threads
        self._metadata: dict[str, Any] = {}
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # batch -> (graph, static input, static output)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        variant = {"eager": "eager", "cuda_graph": "cuda-graph", "compile": "compile"}[self.mode]
        return f"torch {variant} {self.precision}" + (" channels_last" if self.channels_last else "")

    @property
    def device(self) -> str:
        return self._device

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def _activate(self) -> None:
        torch = require("torch")
        from rtk import checkpoint

        if self._device == "cuda" and not torch.cuda.is_available():
            raise MissingDependency("torch sees no CUDA device (device=cuda asked)")
        if self.threads:
            torch.set_num_threads(self.threads)
        model, ckpt = checkpoint.load(self.path)
        self._metadata = {"format": ckpt["format"], "depth": ckpt["model"]["depth"], "precision": self.precision,
                          "normalization": ckpt["normalization"], "classes": ckpt["classes"],
                          "metrics": ckpt.get("metrics", {})}
        self._dtype = getattr(torch, DTYPES[self.precision])
        self._memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # Module.to takes memory_format at run time; torch's type stubs do not list it
        self._model = model.to(self._device, self._dtype, memory_format=self._memory_format)  # type: ignore[call-overload]
        self._forward = torch.compile(self._model, mode="max-autotune", dynamic=False) if self.mode == "compile" else self._model
        self._torch = torch

    def _deactivate(self) -> None:
        self._graphs.clear()
        del self._model, self._forward

    def _to_device(self, x: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(x)).to(self._device, non_blocking=True)
        return tensor.to(self._dtype, memory_format=self._memory_format)

    def _graph(self, batch_size: int) -> tuple[Any, Any, Any]:
        """The CUDA graph for `batch_size`, captured on first use (fixed input/output buffers)."""
        torch = self._torch
        if batch_size not in self._graphs:
            static_in = torch.zeros((batch_size, 3, 32, 32), device=self._device, dtype=self._dtype)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            # no_grad rather than inference_mode: the static buffers are written outside it later
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_CALLS):
                    self._model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                static_out = self._model(static_in)
            self._graphs[batch_size] = (graph, static_in, static_out)
        return self._graphs[batch_size]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed[INPUT_NAME]
        if self.mode == "cuda_graph":
            with self._lock:  # one set of static buffers per batch size: one caller at a time
                graph, static_in, static_out = self._graph(len(x))
                static_in.copy_(self._to_device(x))
                graph.replay()
                logits = static_out.float().cpu().numpy()
        else:
            with self._torch.inference_mode():
                logits = self._forward(self._to_device(x)).float().cpu().numpy()
        return {OUTPUT_NAME: logits}

    def device_work(self, batch_size: int) -> DeviceWork | None:
        if self._device != "cuda":
            return None
        torch = self._torch
        stream = torch.cuda.current_stream().cuda_stream
        x = torch.from_numpy(device_work_input(batch_size)).to(self._device, self._dtype)
        if self.mode == "cuda_graph":
            graph, static_in, _ = self._graph(batch_size)
            static_in.copy_(x)
            return DeviceWork(enqueue=graph.replay, stream=stream)
        x = x.contiguous(memory_format=self._memory_format)

        def enqueue() -> None:
            with torch.inference_mode():
                self._forward(x)

        return DeviceWork(enqueue=enqueue, stream=stream)
