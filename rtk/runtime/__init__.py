"""What apps embed: load an rtk artifact and classify images, the same way for every backend.

    import rtk.runtime
    model = rtk.runtime.load("runs/resnet20/model.int8.cpu.onnx")   # or .plan, or checkpoint.pt
    pred = model.predict(images)        # uint8 [N, 32, 32, 3] RGB -> Prediction(classes, probs)

Importing this package needs numpy only: torch is imported for .pt checkpoints alone, onnxruntime /
OpenVINO for .onnx files, tensorrt (or tensorrt_rtx, as the engine's sidecar says) and cuda-python
for .plan engines. On a GPU:

    model = rtk.runtime.load("runs/resnet20/model.fp16.onnx", device="cuda")   # onnxruntime-gpu, CUDA
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from rtk.errors import MissingDependency, RtkError
from rtk.limits import check_threads
from rtk.names import BACKENDS
from rtk.runtime.base import DEVICES, Runner
from rtk.runtime.model import Model, Prediction

__all__ = ["BACKENDS", "DEVICES", "Model", "Prediction", "load", "make_runner", "onnx_backend", "open_model"]

ENGINE_SUFFIXES = (".plan", ".engine")  # TensorRT or TensorRT for RTX, as the sidecar says
BACKEND_FOR_SUFFIX = {".pt": "torch"}  # .onnx: onnxruntime or openvino


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def onnx_backend(precision: str | None = None) -> str:
    """The fastest installed backend for an ONNX file of `precision` on a CPU: OpenVINO, else
    onnxruntime; FP16 files always go to onnxruntime (OpenVINO's CPU plugin does not run FP16).

    OpenVINO ran ResNet-20 INT8 several times faster than onnxruntime on our CPUs (REFERENCE.md 3).
    """
    for backend in ("openvino", "onnxruntime") if precision != "fp16" else ("onnxruntime",):
        if installed(backend):
            return backend
    if precision == "fp16":
        raise MissingDependency("running an FP16 ONNX file needs onnxruntime: pip install 'rtk[cpu]'")
    raise MissingDependency("running an ONNX file needs openvino or onnxruntime; install one with: "
                            "pip install 'rtk[openvino]' or pip install 'rtk[cpu]'")


def _onnx_precision(path: Path) -> str | None:
    """rtk.precision from the file's metadata (None where onnx, which reads it, is not installed)."""
    if not installed("onnx"):
        return None
    from rtk.onnx_meta import read_metadata

    return read_metadata(path).get("precision")


def make_runner(path: str | os.PathLike[str], backend: str = "auto", precision: str | None = None,
                threads: int | None = None, device: str = "cpu") -> Runner:
    """The (inactive) runner for `path`: .plan -> TensorRT, .onnx -> OpenVINO/onnxruntime, .pt -> torch
    (arguments as for load)."""
    if not isinstance(path, (str, os.PathLike)):
        raise RtkError(f"a model path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if backend not in BACKENDS:
        raise RtkError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise RtkError(f"{path} is not a regular file" if path.exists() else f"model file not found: {path}")
    if device not in DEVICES:
        raise RtkError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    check_threads(threads)
    natural = BACKEND_FOR_SUFFIX.get(path.suffix)
    if path.suffix in ENGINE_SUFFIXES:
        from rtk.engine_meta import read_sidecar
        from rtk.runtime.engines import runtime_of

        natural = runtime_of(read_sidecar(path, verify_engine=False)).name
    if path.suffix == ".onnx":
        if backend == "auto":  # onnxruntime is rtk's one ONNX backend for CUDA
            backend = "onnxruntime" if device == "cuda" else onnx_backend(_onnx_precision(path))
        if backend not in ("onnxruntime", "openvino"):
            raise RtkError(f"{path} is an ONNX file: run it with onnxruntime or openvino, not {backend}")
        if backend == "openvino" and device == "cuda":
            raise RtkError("OpenVINO runs on the CPU in rtk; for an ONNX file on CUDA use backend onnxruntime")
    elif natural is None:
        raise RtkError(f"{path}: unknown model file type (expected .plan, .onnx or .pt)")
    elif backend not in ("auto", natural):
        raise RtkError(f"{path} runs with {natural}, not {backend}")
    else:
        backend = natural

    if backend == "tensorrt":
        from rtk.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(str(path))
    if backend == "tensorrt-rtx":
        from rtk.runtime.tensorrt_runner import TensorRTRTXRunner

        return TensorRTRTXRunner(str(path))
    if backend == "torch":
        from rtk.runtime.torch_runner import TorchRunner

        return TorchRunner(str(path), device=device, precision=precision or "fp32", threads=threads)
    if backend == "openvino":
        from rtk.runtime.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(str(path), precision=precision, threads=threads)
    from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(str(path), precision=precision, threads=threads, device=device)


def load(path: str | os.PathLike[str], backend: str = "auto", precision: str | None = None,
         threads: int | None = None, device: str = "cpu") -> Model:
    """Load an rtk artifact for inference; see Model for predict() and the errors it raises.

    backend: "auto" (the file's own: for .plan TensorRT or TensorRT for RTX, as its sidecar says;
    torch for .pt; for .onnx onnxruntime on device "cuda", else the fastest installed of OpenVINO /
    onnxruntime), or one of "onnxruntime", "openvino", "tensorrt", "tensorrt-rtx", "torch".
    precision: for OpenVINO "fp32" (true f32) or "bf16" on an FP32 ONNX; for torch "fp32", "fp16",
    "bf16"; elsewhere the file's own precision. threads: CPU threads (default: the backend's own).
    device: "cpu" (the default, also on a machine with a GPU) or "cuda": torch checkpoints on the
    GPU, ONNX files through onnxruntime's CUDAExecutionProvider (the onnxruntime-gpu package; a
    MissingDependency where it, a GPU or its CUDA libraries are absent, never a quiet CPU run).
    TensorRT and TensorRT-for-RTX engines always run on CUDA.
    """
    return open_model(make_runner(path, backend, precision, threads, device))


def open_model(runner: Runner) -> Model:
    """Activate `runner` and wrap it in a Model (deactivated again if the artifact is not rtk's)."""
    runner.activate()
    try:
        return Model(runner)
    except BaseException:
        runner.deactivate()
        raise
