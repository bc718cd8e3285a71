"""What one bench run records: the rows measured, their timings and accuracy, and the whole result
(the content of bench.json, which rtk.report reads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rtk.bench.timing import LatencyStats

FORMAT = "rtk.bench/1"


@dataclass
class Accuracy:
    top1: float  # percent on `images` test images
    images: int
    delta_vs_baseline: float | None = None  # points, top1 - baseline top1
    agreement_vs_baseline: float | None = None  # percent of images with the baseline's top-1 class
    # rtk.stats.Paired.as_dict() against the baseline: images fixed / broken, 95% interval, McNemar p
    evidence_vs_baseline: dict[str, Any] | None = None
    # INT8 on CUDA (TensorRT, onnxruntime CUDA): the same against onnxruntime on the CPU, same QDQ file
    reference: str | None = None
    delta_vs_reference: float | None = None
    agreement_vs_reference: float | None = None
    evidence_vs_reference: dict[str, Any] | None = None


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
    first_call_s: dict[str, float] = field(default_factory=dict)  # {batch: seconds}, compile/capture included
    # INT8 rows: how the artifact was calibrated, as its metadata records (method, num_images, seed, ...)
    calibration: dict[str, Any] | None = None


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
