"""Timing: per-call latencies of runner.infer() (wall clock) or of enqueued GPU work (CUDA events),
interleaved between the rows so a change in the machine's load hits all alike, and their statistics.

  cpu    "wall"        time.perf_counter around each call; threads recorded
  cuda   "compute"     CUDA events around the enqueued work, input and output resident on the GPU
         "end_to_end"  time.perf_counter around infer(): host numpy in, H2D copy, compute, D2H copy,
                       synchronised; the GPU is synchronised before timing starts
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtk.errors import RtkError, require
from rtk.preprocess import normalize_uint8_nhwc
from rtk.runtime.base import INPUT_NAME, DeviceWork, Runner

MIN_ITERATIONS = 5  # per point in --duration mode, however slow a call is
ROUNDS = 3  # timed slices per row and batch size, alternating between the rows
SYNTHETIC_SEED = 0  # timing input: random uint8 images, normalized (content does not change speed)
TIMING_KINDS = {
    "wall": "CPU wall clock (time.perf_counter) per infer() call",
    "compute": "CUDA events around the enqueued work; input and output resident on the GPU",
    "end_to_end": "wall clock per infer() call after synchronisation: host numpy in, H2D, compute, D2H",
}



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


def measure_interleaved(calls: Sequence[Callable[[], float]], plan: TimingPlan,
                        first_calls: list[float] | None = None) -> list[list[float]]:
    """Latencies (seconds) of each timed call, after its warm-up, in ROUNDS slices that alternate
    between the calls: a change in the machine's load during the run then hits every row alike.

    `first_calls` gets the wall time of each call's first warm-up call, where torch.compile
    compiles and autotunes and a CUDA graph is captured.
    """
    for call in calls:
        start = time.perf_counter()
        call()
        if first_calls is not None:
            first_calls.append(time.perf_counter() - start)
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



def timing_input(batch_size: int, normalization: dict[str, Any]) -> np.ndarray:
    """Random pixels, normalized as the model's metadata says (so also for imported weights)."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    return normalize_uint8_nhwc(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8), normalization)
