"""onnxruntime: FP32, FP16 and QDQ INT8 ONNX files, on the CPU or a CUDA device.

    OnnxRuntimeRunner("model.onnx")                  # device "cpu": CPUExecutionProvider only
    OnnxRuntimeRunner("model.onnx", device="cuda")   # CUDAExecutionProvider (the onnxruntime-gpu package)

The device is asked for, never inferred from what is installed: rtk.runtime.load(path, device="cuda")
and `rtk bench` on a CUDA machine choose CUDA (see rtk.runtime.load). The onnxruntime-gpu package
provides the same `onnxruntime` module as the CPU package, with CUDAExecutionProvider added; the CPU
provider stays in the session behind it, for any node the CUDA provider has no kernel for.

onnxruntime drops a CUDA provider that it cannot load (no GPU, CUDA or cuDNN libraries not found,
or the CPU package installed) with a warning and runs on the CPU. A CPU figure reported as a CUDA
one would be worse than none, so activate() checks session.get_providers() and refuses that.

Compute-only timing (device_work) goes through io-binding: input and output live on the GPU and
session.run_with_iobinding() runs on `compute_stream` (onnxruntime's user_compute_stream), the CUDA
stream on which rtk.bench records its events. The TensorRT execution provider is not used: it builds
an engine inside the session (minutes), which rtk does once with `rtk build` instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtk.errors import MissingDependency, RtkError, require
from rtk.names import with_article
from rtk.onnx_meta import decode_metadata
from rtk.runtime.base import DEVICES, INPUT_NAME, OUTPUT_NAME, DeviceWork, Runner, device_work_input

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# PyPI's onnxruntime-gpu (1.31.1) is a CUDA 13 build, the one gpu-cu13 extra of pyproject.toml brings.
GPU_INSTALL = "pip uninstall onnxruntime && pip install onnxruntime-gpu (or pip install 'rtk[gpu-cu13]')"


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime lists CUDAExecutionProvider (the onnxruntime-gpu package).

    Listed is not loaded: whether CUDA and cuDNN load shows only when a session is made.
    """
    from rtk.runtime import installed

    return installed("onnxruntime") and CUDA_PROVIDER in require("onnxruntime").get_available_providers()


def backend_errors(ort: Any) -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception types (Fail, InvalidArgument, ...: they derive from Exception only)."""
    errors = ort.capi.onnxruntime_pybind11_state
    return tuple(v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception))


class OnnxRuntimeRunner(Runner):
    """InferenceSession.run is thread-safe, so one session serves every thread."""

    backend = "onnxruntime"

    def __init__(self, path: str, *, precision: str | None = None, threads: int | None = None,
                 device: str = "cpu", compute_stream: int | None = None, device_id: int = 0):
        if device not in DEVICES:
            raise RtkError(f"onnxruntime runs on {' or '.join(DEVICES)}, not {device!r}")
        if compute_stream is not None and device != "cuda":
            raise RtkError("a compute stream needs device cuda")
        super().__init__(path, precision=precision or "fp32")
        self.requested_precision = precision
        self.threads = threads
        self._device, self.compute_stream, self.device_id = device, compute_stream, device_id
        self._metadata: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """'onnxruntime int8' on the CPU, 'onnxruntime cuda int8' on CUDA."""
        return f"onnxruntime {'cuda ' if self._device == 'cuda' else ''}{self.precision}"

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    @property
    def device(self) -> str:
        return self._device

    def _providers(self, ort: Any) -> list[Any]:
        if self._device == "cpu":
            return [CPU_PROVIDER]
        if CUDA_PROVIDER not in ort.get_available_providers():
            raise MissingDependency(f"device cuda: onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
                                    f"(this is the CPU package); install the GPU one: {GPU_INSTALL}")
        # Loads the CUDA and cuDNN libraries of the nvidia-* wheels (torch's own, where it is compatible),
        # so the CUDA provider finds them without LD_LIBRARY_PATH.
        ort.preload_dlls()
        options: dict[str, str] = {"device_id": str(self.device_id)}
        if self.compute_stream is not None:
            options.update(has_user_compute_stream="1", user_compute_stream=str(self.compute_stream))
        return [(CUDA_PROVIDER, options), CPU_PROVIDER]

    def _activate(self) -> None:
        ort = require("onnxruntime", "gpu-cu13" if self._device == "cuda" else "cpu")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or 0  # 0: one per physical core
        self.backend_errors = backend_errors(ort)  # activate() turns them into one RtkError
        self._session = ort.InferenceSession(self.path, options, providers=self._providers(ort))
        if self._device == "cuda" and CUDA_PROVIDER not in self._session.get_providers():
            del self._session
            raise MissingDependency(f"onnxruntime could not start {CUDA_PROVIDER} for {self.path} and fell "
                                    "back to the CPU (no CUDA device, or its CUDA/cuDNN libraries were not found: "
                                    "see onnxruntime's warning above); refusing to run it as a CUDA model")
        self._metadata = decode_metadata(self._session.get_modelmeta().custom_metadata_map)
        self.precision = self._metadata.get("precision", "fp32")
        if self.requested_precision not in (None, self.precision):
            raise RtkError(f"{self.path} is {with_article(self.precision)} model; onnxruntime runs it as it is, "
                           f"not as {self.requested_precision}")

    @property
    def fixed_batch(self) -> int | None:
        size = self._session.get_inputs()[0].shape[0]  # an int, or the dynamic axis's name
        return size if isinstance(size, int) else None

    def _deactivate(self) -> None:
        del self._session

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph: the logits, and for rtk.compare's copies the tensors it added."""
        names = [output.name for output in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, {INPUT_NAME: feed[INPUT_NAME]})))

    def device_work(self, batch_size: int) -> DeviceWork | None:
        """One run on device_work_input bound on the GPU (io-binding), on `compute_stream`; None on the
        CPU or without a compute stream (the events that time the work need the stream it runs on)."""
        if self._device != "cuda" or self.compute_stream is None:
            return None
        ort = require("onnxruntime", "gpu-cu13")
        binding = self._session.io_binding()
        x = ort.OrtValue.ortvalue_from_numpy(device_work_input(batch_size), "cuda", self.device_id)
        binding.bind_ortvalue_input(INPUT_NAME, x)  # the binding keeps x's device memory alive
        binding.bind_output(OUTPUT_NAME, "cuda", self.device_id)  # logits [batch, classes] stay on the GPU

        def enqueue() -> None:
            # run_with_iobinding returns once the stream is done (onnxruntime synchronises each run)
            self._session.run_with_iobinding(binding)

        return DeviceWork(enqueue=enqueue, stream=self.compute_stream)
