"""OpenVINO on the CPU: the FP32 ONNX (as f32 or bf16) and the CPU-flavour QDQ INT8 ONNX.

OpenVINO's CPU plugin silently runs FP32 models in bf16 on CPUs with bf16 units (AMX, AVX-512 BF16)
unless INFERENCE_PRECISION_HINT says f32. So rtk sets the hint for every float file: `fp32` means
f32, and `bf16` is its own precision (the same FP32 ONNX, hint bf16). A QDQ INT8 file runs as
quantized; its float parts (the last FC) follow the plugin's default.

PERFORMANCE_HINT is LATENCY: rtk calls infer() synchronously, one request per call, and the
latency hint gives that one request every core. The THROUGHPUT hint splits the cores into streams
that only pay off with several requests in flight at once (OpenVINO's async API).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from rtk.errors import RtkError, require
from rtk.names import with_article
from rtk.onnx_meta import decode_metadata
from rtk.runtime.base import INPUT_NAME, Runner

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}  # rtk precision of an FP32 file -> OpenVINO hint


class OpenVinoRunner(Runner):
    """One compiled model shared by all threads, one infer request per thread."""

    backend = "openvino"

    def __init__(self, path: str, *, precision: str | None = None, threads: int | None = None):
        super().__init__(path, precision=precision or "fp32")
        self.requested_precision = precision
        self.threads = threads
        self._metadata: dict[str, Any] = {}
        self._local = threading.local()

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def _activate(self) -> None:
        ov = require("openvino")
        native = ov._pyopenvino  # GeneralFailure, OpConversionFailure, ...: Exception subclasses
        self.backend_errors = (RuntimeError, *(v for v in vars(native).values()
                                               if isinstance(v, type) and issubclass(v, Exception)))
        core = ov.Core()
        model = core.read_model(self.path)
        # The ONNX frontend keeps the file's metadata_props under rt_info["framework"].
        framework = model.get_rt_info(["framework"]).astype(dict) if model.has_rt_info(["framework"]) else {}
        self._metadata = decode_metadata({key: value.astype(str) for key, value in framework.items()})
        self.precision = self._precision(self._metadata.get("precision", "fp32"))
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.precision in PRECISION_HINTS:
            config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[self.precision]
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        self._compiled = core.compile_model(model, "CPU", config)
        self._local = threading.local()

    def _precision(self, file_precision: str) -> str:
        """What this file runs as: fp32 files as fp32 (f32) or bf16; int8 files as they are."""
        asked = self.requested_precision or file_precision
        if file_precision == "fp32" and asked in PRECISION_HINTS:
            return asked
        if file_precision == "int8" and asked == "int8":
            return "int8"
        if file_precision == "fp16":
            raise RtkError(f"{self.path}: OpenVINO's CPU plugin has no native FP16; run the FP32 ONNX "
                           "with precision bf16 instead")
        raise RtkError(f"{self.path} is {with_article(file_precision)} model; OpenVINO cannot run it as {asked}")

    @property
    def fixed_batch(self) -> int | None:
        size = self._compiled.input(0).get_partial_shape()[0]
        return size.get_length() if size.is_static else None

    def _deactivate(self) -> None:
        del self._compiled
        self._local = threading.local()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer({INPUT_NAME: feed[INPUT_NAME]})
        # Every output (the logits; rtk.compare's copies add tensors). The result views the
        # request's own output buffers, which the next call overwrites.
        return {output.get_any_name(): np.array(result[output], dtype=np.float32, copy=True)
                for output in self._compiled.outputs}
