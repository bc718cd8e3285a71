"""onnxruntime: FP32, FP16 and QDQ INT8 ONNX files, on the CPU or a CUDA device."""

from __future__ import annotations

from typing import Any

import numpy as np

from rtk.errors import RtkError, require
from rtk.names import with_article
from rtk.onnx_meta import decode_metadata
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME, Runner

# Tried in this order when present; the CPU provider is always there as the fallback.
# The TensorRT execution provider is left to explicit `providers=`: it builds an engine inside the
# session (minutes), which rtk does once with `rtk build` instead.
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeRunner(Runner):
    """InferenceSession.run is thread-safe, so one session serves every thread."""

    backend = "onnxruntime"

    def __init__(self, path: str, *, precision: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None):
        super().__init__(path, precision=precision or "fp32")
        self.requested_precision = precision
        self.threads = threads
        self.providers = providers
        self._metadata: dict[str, Any] = {}

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    @property
    def device(self) -> str:
        return "cuda" if self._session.get_providers()[0] != "CPUExecutionProvider" else "cpu"

    def _activate(self) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or 0  # 0: one per physical core
        available = ort.get_available_providers()
        providers = self.providers or [p for p in DEFAULT_PROVIDERS if p in available]
        errors = ort.capi.onnxruntime_pybind11_state  # its exceptions derive from Exception only
        try:
            self._session = ort.InferenceSession(self.path, options, providers=providers)
        except (errors.Fail, errors.InvalidProtobuf, errors.InvalidGraph, errors.NoSuchFile,
                errors.NotImplemented, errors.InvalidArgument) as exc:
            raise RtkError(f"onnxruntime cannot load {self.path}: {str(exc).splitlines()[0]}") from exc
        self._metadata = decode_metadata(self._session.get_modelmeta().custom_metadata_map)
        self.precision = self._metadata.get("precision", "fp32")
        if self.requested_precision not in (None, self.precision):
            raise RtkError(f"{self.path} is {with_article(self.precision)} model; onnxruntime runs it as it is, "
                           f"not as {self.requested_precision}")

    def _deactivate(self) -> None:
        del self._session

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (logits,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: feed[INPUT_NAME]})
        return {OUTPUT_NAME: logits}
