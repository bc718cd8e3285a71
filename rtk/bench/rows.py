"""Which rows a bench run measures: the backend and device (`auto` or asked for), the torch FP32
baseline and its CUDA variants, and a runner per precision, with missing artifacts produced through
rtk.pipeline."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rtk import limits, pipeline
from rtk.bench.timing import TimingPlan
from rtk.errors import GPU_INSTALL, MissingDependency, RtkError, install_hint, require
from rtk.log import Log
from rtk.names import BACKENDS
from rtk.pipeline import RunPaths
from rtk.runtime import installed, make_runner
from rtk.runtime.base import Runner
from rtk.runtime.engines import engine_runtime
from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner, cuda_provider_available
from rtk.runtime.openvino_runner import OpenVinoRunner
from rtk.runtime.torch_runner import TorchRunner

DEFAULT_BATCH_SIZES = {"cpu": (1, 32, 256), "cuda": (1, 256, 4096)}
# Profile max of an engine bench builds: rtk build's default, raised to the largest benchmarked batch.
ENGINE_MAX_BATCH = 1024


@dataclass(frozen=True)
class BenchConfig:
    depth: int = 20
    precisions: tuple[str, ...] = ("int8",)
    backend: str = "auto"
    batch_sizes: tuple[int, ...] | None = None  # None: DEFAULT_BATCH_SIZES of the device
    timing: TimingPlan = field(default_factory=TimingPlan)
    threads: int | None = None  # None: every core this process may use
    checkpoint: Path | None = None
    data_dir: str | None = None
    runs_dir: str | None = None
    accuracy: bool = True
    limit_images: int | None = None  # testing aid: accuracy on the first N test images only
    torch_compile: bool = True  # CUDA only: the torch.compile row (minutes of autotuning)

    def __post_init__(self) -> None:  # rtk.limits' bounds, before any artifact is made
        limits.check_threads(self.threads)
        for size in self.batch_sizes or ():
            limits.check_batch(size)
        if self.limit_images is not None:
            limits.check_count("limit_images", self.limit_images, limits.TEST_IMAGES, "the test set")


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    device: str
    reason: str


def cuda_device() -> str | None:
    """The CUDA device's name when torch sees one, else None (torch is needed for the baseline)."""
    torch = require("torch")
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def choose_backend(asked: str, gpu: str | None, have: Callable[[str], bool] = installed,
                   ort_cuda: Callable[[], bool] = cuda_provider_available) -> BackendChoice:
    """Which backend and device class a run uses, and why (said to the user and kept in the report).

    `gpu`: the CUDA device's name or None; `have(module)`: whether a package is installed;
    `ort_cuda()`: whether onnxruntime lists CUDAExecutionProvider (the onnxruntime-gpu package).
    """
    if asked not in BACKENDS:
        raise RtkError(f"unknown backend {asked!r}; choose one of {', '.join(BACKENDS)}")
    if asked in ("tensorrt", "tensorrt-rtx"):
        runtime = engine_runtime(asked)
        if not have(runtime.module):
            raise MissingDependency(f"--backend {asked}: {runtime.product} is not installed; "
                                    f"install it with: {install_hint(runtime.extra)} (needs a CUDA GPU)")
        if gpu is None:
            raise MissingDependency(f"--backend {asked}: no CUDA device found (torch.cuda.is_available() "
                                    "is False)")
        return BackendChoice(asked, "cuda", f"asked for; CUDA device {gpu}")
    if asked == "torch":
        return BackendChoice("torch", "cuda" if gpu else "cpu",
                             f"asked for; {'CUDA device ' + gpu if gpu else 'no CUDA device: CPU'}")
    if asked in ("onnxruntime", "openvino"):
        if not have(asked):
            raise MissingDependency(f"--backend {asked}: {asked} is not installed; install it with: "
                                    f"pip install 'rtk[{'openvino' if asked == 'openvino' else 'cpu'}]'")
        if asked == "onnxruntime" and gpu is not None:
            if ort_cuda():
                return BackendChoice("onnxruntime", "cuda", f"asked for; CUDA device {gpu} through "
                                     "onnxruntime's CUDAExecutionProvider")
            return BackendChoice("onnxruntime", "cpu", f"asked for; CUDA device {gpu}, but this onnxruntime "
                                 "has no CUDAExecutionProvider (pip install onnxruntime-gpu): CPU")
        return BackendChoice(asked, "cpu", "asked for; CPU")
    if gpu is not None and have("tensorrt"):
        return BackendChoice("tensorrt", "cuda", f"auto: CUDA device {gpu} and TensorRT are present")
    if gpu is not None and have("onnxruntime") and ort_cuda():
        return BackendChoice("onnxruntime", "cuda", f"auto: CUDA device {gpu}; TensorRT is not installed, "
                             "onnxruntime-gpu is: its CUDAExecutionProvider against the torch CUDA variants")
    if gpu is not None:
        return BackendChoice("torch", "cuda", f"auto: CUDA device {gpu} but TensorRT is not installed "
                             f"({GPU_INSTALL}): measuring the torch CUDA variants only")
    cpu_backend = next((b for b in ("openvino", "onnxruntime") if have(b)), None)
    if cpu_backend is None:
        raise MissingDependency("no CPU backend installed: install one with: pip install 'rtk[openvino]' "
                                "or pip install 'rtk[cpu]'")
    others = [b for b in ("openvino", "onnxruntime") if b != cpu_backend and have(b)]
    return BackendChoice(cpu_backend, "cpu", f"auto: no CUDA device; {cpu_backend} is the fastest CPU "
                         f"backend installed" + (f" ({', '.join(others)} also measured)" if others else ""))


# ---------------------------------------------------------------- planning rows

RunnerFactory = Callable[[], Runner]


@dataclass
class Planned:
    key: str  # what makes two rows the same measurement, e.g. "onnxruntime fp32"
    make: RunnerFactory
    artifact: Path


def plan_rows(choice: BackendChoice, config: BenchConfig, paths: RunPaths, checkpoint: Path,
              batch_sizes: tuple[int, ...], log: Log) -> tuple[list[Planned], list[str]]:
    """The runners to measure (baseline first) and notes on precisions a backend skips.

    Missing artifacts are produced here through rtk.pipeline.
    """
    threads, device = config.threads, choice.device
    data_dir = config.data_dir
    notes: list[str] = []

    def torch_row(precision: str = "fp32", mode: str = "eager", channels_last: bool = False) -> Planned:
        return Planned(f"torch {mode} {precision} {channels_last}",
                       lambda: TorchRunner(str(checkpoint), device=device, precision=precision,
                                           channels_last=channels_last, mode=mode, threads=threads),
                       checkpoint)

    rows = [torch_row()]  # the baseline
    if device == "cuda":
        rows += [torch_row("fp16", channels_last=True), torch_row(mode="cuda_graph")]
        if config.torch_compile:
            rows.append(torch_row("fp16", mode="compile", channels_last=True))

    def onnx(precision: str) -> Path:
        if precision == "int8":
            return pipeline.ensure_int8_onnx(paths, "cpu", checkpoint=checkpoint, data_dir=data_dir, log=log)
        return pipeline.ensure_onnx_for(paths, precision, checkpoint, data_dir, log)

    def ort_row(precision: str) -> Planned:
        path = onnx(precision)
        return Planned(f"onnxruntime {precision}", lambda: OnnxRuntimeRunner(str(path), threads=threads), path)

    def ort_cuda_row(precision: str) -> Planned:
        # INT8: the TensorRT-flavour QDQ file, the one made for GPUs (the CPU flavour quantizes Add too)
        path = pipeline.ensure_int8_onnx(paths, "tensorrt", checkpoint=checkpoint, data_dir=data_dir, log=log) \
            if precision == "int8" else onnx(precision)
        return Planned(f"onnxruntime cuda {precision}", lambda: OnnxRuntimeRunner(
            str(path), threads=threads, device="cuda", compute_stream=cuda_stream()), path)

    def ov_row(precision: str) -> Planned:
        path = onnx("fp32" if precision == "bf16" else precision)
        return Planned(f"openvino {precision}",
                       lambda: OpenVinoRunner(str(path), precision=precision, threads=threads), path)

    for precision in config.precisions:
        if choice.backend in ("tensorrt", "tensorrt-rtx"):  # TensorRT for RTX: only when asked for (--backend)
            if precision == "bf16":
                notes.append(f"bf16: {choice.backend} engines are built from FP32, FP16 or INT8 ONNX; no bf16 row")
                continue
            engine = pipeline.ensure_engine(paths, precision, checkpoint, data_dir, log, runtime=choice.backend,
                                            max_batch=max(ENGINE_MAX_BATCH, *batch_sizes))
            rows.append(Planned(f"{choice.backend} {precision}", functools.partial(make_runner, engine), engine))
        elif choice.backend == "onnxruntime" and device == "cuda":
            if precision == "bf16":
                notes.append("bf16: onnxruntime has no bf16 ONNX file in rtk; the torch bf16 row stands for it")
                rows.append(torch_row("bf16", channels_last=True))
            else:
                rows.append(ort_cuda_row(precision))
        elif choice.backend == "torch":
            if precision == "int8":
                notes.append("int8: torch has no INT8 path in rtk; use an ONNX or TensorRT backend")
            elif precision in ("fp16", "bf16") and device == "cpu":
                rows.append(torch_row(precision))
            elif precision == "bf16":
                rows.append(torch_row("bf16", channels_last=True))
        else:  # onnxruntime / openvino on the CPU; onnxruntime is also the reference for openvino
            if precision == "fp16":
                notes.append("fp16: no CPU backend here runs FP16 natively; bf16 is the CPU's half precision")
                continue
            if precision == "bf16":
                if choice.backend == "openvino":
                    rows.append(ov_row("bf16"))
                rows.append(torch_row("bf16"))
                continue
            if installed("onnxruntime"):
                rows.append(ort_row("fp32"))
                if precision == "int8":
                    rows.append(ort_row("int8"))
            if choice.backend == "openvino":
                rows.append(ov_row(precision))
    unique = {row.key: row for row in reversed(rows)}  # first occurrence wins, order kept below
    return [row for row in rows if unique[row.key] is row], notes


def cuda_stream() -> int:
    """A CUDA stream (handle) of its own for a runner's work; torch's stream pool keeps it alive."""
    return int(require("torch").cuda.Stream().cuda_stream)

