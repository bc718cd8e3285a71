"""The timing and accuracy harness: every backend against the PyTorch FP32 baseline, in one run.

The only module in rtk that times anything. One run:
  1. picks the backend (`auto`: TensorRT on a CUDA device with TensorRT, else the fastest CPU
     backend installed) and the rows to measure; the torch FP32 eager baseline is always one of them
     (on CUDA also FP16 channels_last, CUDA graphs and torch.compile);
  2. produces missing artifacts through rtk.pipeline (export, quantize, build);
  3. times the rows of each batch size interleaved: after every row's warm-up (excluded), ROUNDS
     slices that alternate between the rows, so a change in the machine's load hits all alike;
  4. measures top-1 of every row on the CIFAR-10 test set through rtk.runtime.Model.predict (the
     path apps use), with agreement against the baseline's predictions.

What is timed is runner.infer() on normalized float32 input (preprocessing excluded):
  cpu    "wall"        time.perf_counter around each call; threads recorded
  cuda   "compute"     CUDA events around the enqueued work, input and output resident on the GPU
         "end_to_end"  time.perf_counter around infer(): host numpy in, H2D copy, compute, D2H copy,
                       synchronised; the GPU is synchronised before timing starts
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtk import pipeline
from rtk.errors import MissingDependency, RtkError, require
from rtk.fileio import provenance, sha256_file
from rtk.log import Log
from rtk.names import BACKENDS, BENCH_PRECISIONS
from rtk.pipeline import RunPaths
from rtk.preprocess import normalize_uint8_nhwc
from rtk.runtime import Model, installed, make_runner
from rtk.runtime.base import INPUT_NAME, DeviceWork, Runner
from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rtk.runtime.openvino_runner import OpenVinoRunner
from rtk.runtime.torch_runner import TorchRunner

FORMAT = "rtk.bench/1"
PRECISIONS = BENCH_PRECISIONS
DEFAULT_BATCH_SIZES = {"cpu": (1, 32, 256), "cuda": (1, 256, 4096)}
BUSY_LOAD = 0.5  # load average per usable core above which a CPU run is flagged as noisy
# Profile max of an engine bench builds: rtk build's default, raised to the largest benchmarked batch.
ENGINE_MAX_BATCH = 1024
MIN_ITERATIONS = 5  # per point in --duration mode, however slow a call is
ROUNDS = 3  # timed slices per row and batch size, alternating between the rows
ACCURACY_BATCH = 256  # images per predict() call when measuring accuracy (a default timed batch size)
SYNTHETIC_SEED = 0  # timing input: random uint8 images, normalized (content does not change speed)
PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt",
            "cuda-python", "cuda-bindings", "pycuda")
TIMING_KINDS = {
    "wall": "CPU wall clock (time.perf_counter) per infer() call",
    "compute": "CUDA events around the enqueued work; input and output resident on the GPU",
    "end_to_end": "wall clock per infer() call after synchronisation: host numpy in, H2D, compute, D2H",
}


# ---------------------------------------------------------------- statistics (pure)

@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    throughput: float  # images per second: batch_size / mean latency


def latency_stats(seconds: Sequence[float], batch_size: int) -> LatencyStats:
    """Statistics of per-call latencies (seconds); percentiles interpolate linearly (numpy default)."""
    if len(seconds) == 0:
        raise ValueError("no timings")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return LatencyStats(batch_size=batch_size, iterations=len(ms), mean_ms=mean, p50_ms=float(p50),
                        p90_ms=float(p90), p99_ms=float(p99), min_ms=float(ms.min()),
                        throughput=batch_size / (mean / 1e3))


def top1_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Percent of predictions equal to labels."""
    return 100.0 * float(np.mean(predictions == labels))


# ---------------------------------------------------------------- timing

@dataclass(frozen=True)
class TimingPlan:
    warmup_s: float = 1.0  # per point; at least one call is always made (CUDA graph capture, compile)
    duration_s: float | None = 3.0  # per point, at least MIN_ITERATIONS calls
    iterations: int | None = None  # fixed number of calls instead of a duration

    def __post_init__(self) -> None:
        if (self.duration_s is None) == (self.iterations is None):
            raise RtkError("give a duration or an iteration count, not both")


def wall_clock_call(runner: Runner, x: np.ndarray) -> Callable[[], float]:
    """One runner.infer(x), timed by the wall clock (infer returns with the outputs on the host)."""
    feed = {INPUT_NAME: x}

    def call() -> float:
        begin = time.perf_counter()
        runner.infer(feed)
        return time.perf_counter() - begin

    return call


def cuda_event_call(work: DeviceWork) -> Callable[[], float]:
    """One work.enqueue(), timed by CUDA events on its stream and synchronised before returning."""
    torch = require("torch")
    current = torch.cuda.current_stream()
    stream = current if work.stream == current.cuda_stream else torch.cuda.ExternalStream(work.stream)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def call() -> float:
        begin.record(stream)
        work.enqueue()
        end.record(stream)
        end.synchronize()
        return begin.elapsed_time(end) / 1e3  # elapsed_time is in ms

    return call


def measure_interleaved(calls: Sequence[Callable[[], float]], plan: TimingPlan) -> list[list[float]]:
    """Latencies (seconds) of each timed call, after its warm-up, in ROUNDS slices that alternate
    between the calls: a change in the machine's load during the run then hits every row alike."""
    for call in calls:
        start = time.perf_counter()
        call()
        while time.perf_counter() - start < plan.warmup_s:
            call()
    latencies: list[list[float]] = [[] for _ in calls]
    min_calls = -(-MIN_ITERATIONS // ROUNDS)  # per slice, rounded up
    for index in range(ROUNDS):
        for call, taken in zip(calls, latencies):
            if plan.iterations is not None:  # split exactly: 7 calls in 3 rounds -> 3, 2, 2
                taken.extend(call() for _ in range(plan.iterations // ROUNDS + (index < plan.iterations % ROUNDS)))
                continue
            start, made = time.perf_counter(), 0
            while made < min_calls or time.perf_counter() - start < (plan.duration_s or 0.0) / ROUNDS:
                taken.append(call())
                made += 1
    return latencies


# ---------------------------------------------------------------- rows and their results

@dataclass
class Accuracy:
    top1: float  # percent on `images` test images
    images: int
    delta_vs_baseline: float | None = None  # points, top1 - baseline top1
    agreement_vs_baseline: float | None = None  # percent of images with the baseline's top-1 class
    # TensorRT INT8: the same against onnxruntime running the same QDQ file
    reference: str | None = None
    delta_vs_reference: float | None = None
    agreement_vs_reference: float | None = None


@dataclass
class Row:
    name: str  # runner.name, e.g. "openvino int8"
    backend: str
    precision: str
    device: str
    artifact: str
    baseline: bool = False
    timings: dict[str, list[LatencyStats]] = field(default_factory=dict)  # timing kind -> per batch size
    speedup: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> {batch: x baseline}
    accuracy: Accuracy | None = None
    skipped_batch_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class BenchConfig:
    depth: int = 20
    precisions: tuple[str, ...] = ("int8",)
    backend: str = "auto"
    batch_sizes: tuple[int, ...] | None = None  # None: DEFAULT_BATCH_SIZES of the device
    timing: TimingPlan = TimingPlan()
    threads: int | None = None  # None: every core this process may use
    checkpoint: Path | None = None
    data_dir: str | None = None
    runs_dir: str | None = None
    accuracy: bool = True
    limit_images: int | None = None  # testing aid: accuracy on the first N test images only
    torch_compile: bool = True  # CUDA only: the torch.compile row (minutes of autotuning)


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    device: str
    reason: str


# ---------------------------------------------------------------- backend selection

def cuda_device() -> str | None:
    """The CUDA device's name when torch sees one, else None (torch is needed for the baseline)."""
    torch = require("torch")
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def choose_backend(asked: str, gpu: str | None, have: Callable[[str], bool] = installed) -> BackendChoice:
    """Which backend and device class a run uses, and why (said to the user and kept in the report).

    `gpu`: the CUDA device's name or None; `have(module)`: whether a package is installed.
    """
    if asked not in BACKENDS:
        raise RtkError(f"unknown backend {asked!r}; choose one of {', '.join(BACKENDS)}")
    if asked == "tensorrt":
        if not have("tensorrt"):
            raise MissingDependency("--backend tensorrt: TensorRT is not installed; "
                                    "install it with: pip install 'rtk[gpu]' (needs a CUDA GPU)")
        if gpu is None:
            raise MissingDependency("--backend tensorrt: no CUDA device found (torch.cuda.is_available() "
                                    "is False)")
        return BackendChoice("tensorrt", "cuda", f"asked for; CUDA device {gpu}")
    if asked == "torch":
        return BackendChoice("torch", "cuda" if gpu else "cpu",
                             f"asked for; {'CUDA device ' + gpu if gpu else 'no CUDA device: CPU'}")
    if asked in ("onnxruntime", "openvino"):
        if not have(asked):
            raise MissingDependency(f"--backend {asked}: {asked} is not installed; install it with: "
                                    f"pip install 'rtk[{'openvino' if asked == 'openvino' else 'cpu'}]'")
        return BackendChoice(asked, "cpu", "asked for; CPU")
    if gpu is not None and have("tensorrt"):
        return BackendChoice("tensorrt", "cuda", f"auto: CUDA device {gpu} and TensorRT are present")
    if gpu is not None:
        return BackendChoice("torch", "cuda", f"auto: CUDA device {gpu} but TensorRT is not installed "
                             "(pip install 'rtk[gpu]'): measuring the torch CUDA variants only")
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
        return Planned(f"onnxruntime {precision}", lambda: OnnxRuntimeRunner(
            str(path), threads=threads, providers=["CPUExecutionProvider"]), path)

    def ov_row(precision: str) -> Planned:
        path = onnx("fp32" if precision == "bf16" else precision)
        return Planned(f"openvino {precision}",
                       lambda: OpenVinoRunner(str(path), precision=precision, threads=threads), path)

    for precision in config.precisions:
        if choice.backend == "tensorrt":
            if precision == "bf16":
                notes.append("bf16: TensorRT engines are built from FP32, FP16 or INT8 ONNX; no bf16 row")
                continue
            engine = pipeline.ensure_engine(paths, precision, checkpoint, data_dir, log,
                                            max_batch=max(ENGINE_MAX_BATCH, *batch_sizes))
            rows.append(Planned(f"tensorrt {precision}", functools.partial(make_runner, engine), engine))
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


# ---------------------------------------------------------------- the run

@dataclass
class BenchResult:
    format: str
    model: dict[str, Any]
    config: dict[str, Any]
    backend_choice: dict[str, str]
    device: str
    threads: int
    batch_sizes: list[int]
    timing_kinds: dict[str, str]
    rows: list[Row]
    notes: list[str]
    environment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Instruction sets that decide CPU inference speed: INT8 dot products (VNNI, AMX) and bf16 units.
CPU_FEATURES = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo(key: str) -> str | None:
    """The first value of `key` in /proc/cpuinfo (Linux), else None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == key), None)


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    flags = set((_cpuinfo("flags") or "").split())
    return [feature for feature in CPU_FEATURES if feature in flags]


def gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def load_average() -> float | None:
    """The 1-minute load average, rounded to 0.1: other work on the machine skews CPU timings."""
    try:
        return round(os.getloadavg()[0], 1)
    except OSError:
        return None


def _busy(choice: BackendChoice, load: float | None, own_threads: int = 0) -> bool:
    """Other work on the CPU: the load average beyond this process's own `own_threads` (the
    threads it was timing with, which the load average right after timing still counts)."""
    return choice.device == "cpu" and load is not None and load - own_threads > BUSY_LOAD * usable_cores()


def environment(gpu: str | None, threads: int, load_before: float | None,
                load_after: float | None) -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, load, GPU, driver, versions, git, command."""
    env = provenance(*PACKAGES)
    env.update({
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "load_average_before": load_before,
        "load_average_after": load_after,  # when timing ended
        "gpu": gpu,
        "gpu_driver": gpu_driver() if gpu else None,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    })
    if gpu:
        torch = require("torch")
        env["cuda"] = torch.version.cuda
        env["gpu_compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        # torch's FP32 convolutions may use TF32 (cuDNN's default), as TensorRT's FP32 layers do
        env["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    if installed("tensorrt"):  # the wheel may be named tensorrt-cu12 / -cu13: ask the module itself
        env["tensorrt"] = require("tensorrt", "gpu").__version__
    return env


def _speedups(rows: list[Row]) -> None:
    """Throughput of every row over the baseline's, per timing kind and batch size (same run)."""
    base = rows[0]
    for row in rows:
        for kind, stats in row.timings.items():
            base_by_batch = {s.batch_size: s.throughput for s in base.timings.get(kind, [])}
            row.speedup[kind] = {str(s.batch_size): s.throughput / base_by_batch[s.batch_size]
                                 for s in stats if s.batch_size in base_by_batch}


def _timing_input(batch_size: int) -> np.ndarray:
    rng = np.random.default_rng(SYNTHETIC_SEED)
    return normalize_uint8_nhwc(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8))


def _probes(rows: list[Row], models: list[Model], batch_size: int) -> list[tuple[Row, str, Callable[[], float]]]:
    """(row, timing kind, timed call) of every row that takes `batch_size`; the others note a skip."""
    probes = []
    for row, model in zip(rows, models):
        runner = model.runner
        if runner.max_batch is not None and batch_size > runner.max_batch:
            row.skipped_batch_sizes.append(batch_size)
            continue
        kind = "wall" if runner.device == "cpu" else "end_to_end"
        probes.append((row, kind, wall_clock_call(runner, _timing_input(batch_size))))
        work = runner.device_work(batch_size)
        if work is not None:
            probes.append((row, "compute", cuda_event_call(work)))
    return probes


def predictions(model: Model, images: np.ndarray) -> np.ndarray:
    """Top-1 class of every image through Model.predict, ACCURACY_BATCH images per call.

    The last chunk is padded to ACCURACY_BATCH so every call has one shape: CUDA graphs and
    torch.compile then reuse what the timing at batch 256 captured or compiled.
    """
    classes = []
    for start in range(0, len(images), ACCURACY_BATCH):
        chunk = images[start:start + ACCURACY_BATCH]
        padded = np.concatenate([chunk, np.zeros((ACCURACY_BATCH - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        classes.append(model.predict(padded).classes[:len(chunk)])
    return np.concatenate(classes)


def _accuracy(rows: list[Row], models: list[Model], paths: RunPaths, config: BenchConfig,
              threads: int, log: Log) -> None:
    from rtk import data

    images, labels = data.load_test_set(config.data_dir)
    if config.limit_images:
        images, labels = images[:config.limit_images], labels[:config.limit_images]
    base_pred = None
    for row, model in zip(rows, models):
        log(f"accuracy: {row.name} on {len(images)} test images")
        pred = predictions(model, images)
        if base_pred is None:
            base_pred = pred
        row.accuracy = Accuracy(top1=top1_accuracy(pred, labels), images=len(images),
                                delta_vs_baseline=top1_accuracy(pred, labels) - top1_accuracy(base_pred, labels),
                                agreement_vs_baseline=top1_accuracy(pred, base_pred))
        if row.backend == "tensorrt" and row.precision == "int8":
            qdq = paths.int8_onnx("tensorrt")
            with Model(_active(OnnxRuntimeRunner(str(qdq), threads=threads))) as reference:
                ref_pred = predictions(reference, images)
            row.accuracy.reference = f"onnxruntime on {qdq.name}"
            row.accuracy.delta_vs_reference = top1_accuracy(pred, labels) - top1_accuracy(ref_pred, labels)
            row.accuracy.agreement_vs_reference = top1_accuracy(pred, ref_pred)


def _active(runner: Runner) -> Runner:
    runner.activate()
    return runner


def run_bench(config: BenchConfig, log: Log) -> BenchResult:
    """Measure every row of `config`; the result holds everything the report shows."""
    gpu = cuda_device()
    choice = choose_backend(config.backend, gpu, installed)
    log(f"backend: {choice.backend} on {choice.device} ({choice.reason})")
    threads = config.threads or usable_cores()
    batch_sizes = tuple(config.batch_sizes or DEFAULT_BATCH_SIZES[choice.device])
    paths = pipeline.run_paths(config.depth, config.runs_dir)
    checkpoint = pipeline.ensure_checkpoint(paths, config.checkpoint, log)
    planned, notes = plan_rows(choice, config, paths, checkpoint, batch_sizes, log)

    load_before = load_average()
    if _busy(choice, load_before):
        log(f"warning: the machine is busy (load average {load_before:.1f} on {usable_cores()} cores): "
            "CPU timings will be slower and noisier than on an idle machine")
    torch = require("torch")
    torch.set_num_threads(threads)
    synchronize = torch.cuda.synchronize if choice.device == "cuda" else (lambda: None)
    models: list[Model] = []
    try:
        for plan in planned:
            models.append(Model(_active(plan.make())))
        rows = [Row(name=m.name, backend=m.backend, precision=m.precision, device=m.runner.device,
                    artifact=str(p.artifact), baseline=i == 0)
                for i, (m, p) in enumerate(zip(models, planned))]
        for batch_size in batch_sizes:
            probes = _probes(rows, models, batch_size)
            log(f"timing batch {batch_size}: {len(probes)} timings of {len(rows)} rows, {ROUNDS} interleaved rounds")
            synchronize()
            latencies = measure_interleaved([call for _, _, call in probes], config.timing)
            for (row, kind, _), taken in zip(probes, latencies):
                row.timings.setdefault(kind, []).append(latency_stats(taken, batch_size))
        load_after = load_average()
        _speedups(rows)
        if _busy(choice, load_before) or _busy(choice, load_after, own_threads=threads):
            notes.append(f"the machine was busy while timing (load average {load_before} before, "
                         f"{load_after} after, on {usable_cores()} cores): CPU figures are slower and "
                         "noisier than on an idle machine, torch's the most (its OpenMP threads wait for each other)")
        notes += [f"{row.name}: batch {', '.join(map(str, row.skipped_batch_sizes))} above the engine profile's "
                  f"max ({model.runner.max_batch}); rebuild with a larger max batch to measure it"
                  for row, model in zip(rows, models) if row.skipped_batch_sizes]
        if config.accuracy:
            _accuracy(rows, models, paths, config, threads, log)
    finally:
        for model in models:
            model.close()

    ckpt_meta = models[0].metadata
    return BenchResult(
        format=FORMAT,
        model={"depth": config.depth, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
               "metrics": ckpt_meta.get("metrics", {})},
        config={"precisions": list(config.precisions), "backend": config.backend,
                "warmup_s": config.timing.warmup_s, "duration_s": config.timing.duration_s,
                "iterations": config.timing.iterations, "min_iterations": MIN_ITERATIONS, "rounds": ROUNDS,
                "accuracy": config.accuracy, "limit_images": config.limit_images,
                "timing_input": "synthetic uint8 images, normalized; preprocessing not timed"},
        backend_choice=asdict(choice),
        device=choice.device,
        threads=threads,
        batch_sizes=list(batch_sizes),
        timing_kinds={k: v for k, v in TIMING_KINDS.items() if any(k in r.timings for r in rows)},
        rows=rows,
        notes=notes,
        environment=environment(gpu, threads, load_before, load_after),
    )
