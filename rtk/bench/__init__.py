"""Stage 6: the timing and accuracy harness, every backend against the PyTorch FP32 baseline, in one run.

The only part of rtk that times anything. One run (run_bench, here):
  1. picks the backend (`auto`: TensorRT on a CUDA device with TensorRT, else onnxruntime's CUDA
     provider where onnxruntime-gpu is installed, else the fastest CPU backend installed) and the
     rows to measure; the torch FP32 eager baseline is always one of them (on CUDA also FP16
     channels_last, CUDA graphs and torch.compile)                                       rows.py
  2. produces missing artifacts through rtk.pipeline (export, quantize, build)           rows.py
  3. times the rows of each batch size interleaved: after every row's warm-up (excluded), ROUNDS
     slices that alternate between the rows, so a change in the machine's load hits all alike
                                                                                        timing.py
  4. measures top-1 of every row on the CIFAR-10 test set through rtk.runtime.Model.predict (the
     path apps use), with agreement against the baseline's predictions                 accuracy.py
  5. records the machine (CPU, load, GPU, versions, command)                            machine.py
     in a BenchResult (bench.json; rtk.report draws the tables and plots)               results.py

What is timed is runner.infer() on normalized float32 input (preprocessing excluded); the timing
kinds are described in timing.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from rtk import pipeline
from rtk.bench.accuracy import measure_accuracy
from rtk.bench.machine import busy, environment, load_average, usable_cores
from rtk.bench.results import FORMAT, BenchResult, Row
from rtk.bench.rows import DEFAULT_BATCH_SIZES, BenchConfig, choose_backend, cuda_device, plan_rows
from rtk.bench.timing import (
    MIN_ITERATIONS,
    ROUNDS,
    TIMING_KINDS,
    TimingPlan,
    cuda_event_call,
    latency_stats,
    measure_interleaved,
    timing_input,
    wall_clock_call,
)
from rtk.errors import require
from rtk.fileio import sha256_file
from rtk.log import Log
from rtk.onnx_meta import read_metadata
from rtk.pipeline import RunPaths
from rtk.runtime import Model, installed, open_model

__all__ = ["BenchConfig", "BenchResult", "TimingPlan", "run_bench"]


def _speedups(rows: list[Row]) -> None:
    """Throughput of every row over the baseline's, per timing kind and batch size (same run)."""
    base = rows[0]
    for row in rows:
        for kind, stats in row.timings.items():
            base_by_batch = {s.batch_size: s.throughput for s in base.timings.get(kind, [])}
            row.speedup[kind] = {str(s.batch_size): s.throughput / base_by_batch[s.batch_size]
                                 for s in stats if s.batch_size in base_by_batch}


def _probes(rows: list[Row], models: list[Model], batch_size: int) -> list[tuple[Row, str, Callable[[], float]]]:
    """(row, timing kind, timed call) of every row that takes `batch_size`; the others note a skip."""
    probes = []
    for row, model in zip(rows, models):
        runner = model.runner
        if runner.max_batch is not None and batch_size > runner.max_batch:
            row.skipped_batch_sizes.append(batch_size)
            continue
        kind = "wall" if runner.device == "cpu" else "end_to_end"
        probes.append((row, kind, wall_clock_call(runner, timing_input(batch_size, model.normalization))))
        work = runner.device_work(batch_size)
        if work is not None:
            probes.append((row, "compute", cuda_event_call(work)))
    return probes



def _calibration(model: Model, paths: RunPaths) -> dict[str, Any] | None:
    """The calibration record of an INT8 row's artifact: its own metadata, or for a TensorRT engine
    (whose sidecar does not carry it) the metadata of the QDQ file it is built from."""
    if model.precision != "int8":
        return None
    record = model.metadata.get("calibration")
    qdq = paths.int8_onnx("tensorrt")
    if record is None and model.backend in ("tensorrt", "tensorrt-rtx") and qdq.is_file():
        record = read_metadata(qdq).get("calibration")
    return record


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
    if busy(choice, load_before):
        log(f"warning: the machine is busy (load average {load_before:.1f} on {usable_cores()} cores): "
            "CPU timings will be slower and noisier than on an idle machine")
    torch = require("torch")
    torch.set_num_threads(threads)
    synchronize = torch.cuda.synchronize if choice.device == "cuda" else (lambda: None)
    models: list[Model] = []
    try:
        for plan in planned:
            models.append(open_model(plan.make()))
        rows = [Row(name=m.name, backend=m.backend, precision=m.precision, device=m.runner.device,
                    artifact=str(p.artifact), baseline=i == 0, calibration=_calibration(m, paths))
                for i, (m, p) in enumerate(zip(models, planned))]
        for batch_size in batch_sizes:
            probes = _probes(rows, models, batch_size)
            log(f"timing batch {batch_size}: {len(probes)} timings of {len(rows)} rows, {ROUNDS} interleaved rounds")
            synchronize()
            first_calls: list[float] = []
            latencies = measure_interleaved([call for _, _, call in probes], config.timing, first_calls)
            for (row, kind, _), taken, first in zip(probes, latencies, first_calls):
                row.timings.setdefault(kind, []).append(latency_stats(taken, batch_size))
                row.first_call_s.setdefault(str(batch_size), first)
        load_after = load_average()
        _speedups(rows)
        was_busy = busy(choice, load_before) or busy(choice, load_after, own_threads=threads)
        if was_busy:
            notes.append(f"the machine was busy while timing (load average {load_before} before, "
                         f"{load_after} after, on {usable_cores()} cores): CPU figures are slower and "
                         "noisier than on an idle machine, torch's the most (its OpenMP threads wait for each other)")
        notes += [f"{row.name}: batch {', '.join(map(str, row.skipped_batch_sizes))} above the engine profile's "
                  f"max ({model.runner.max_batch}); rebuild with a larger max batch to measure it"
                  for row, model in zip(rows, models) if row.skipped_batch_sizes]
        if config.accuracy:
            measure_accuracy(rows, models, paths, config, threads, log)
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
        environment={**environment(gpu, threads, load_before, load_after), "busy": was_busy},
    )
