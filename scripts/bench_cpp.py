"""The C++ Classifier beside rtk.runtime: images/s on the same rtk ONNX file and machine, in one run.

    RTK_DATA_DIR=/path/to/cifar-10-batches-py python scripts/bench_cpp.py \
        [--model runs/resnet20/model.int8.cpu.onnx ...] [--batch-sizes 1,256] [--threads 2] \
        [--seconds 2] [--rounds 3] [--build build/cpp] [--out runs/bench-cpp.json]

Both sides do what an app does: uint8 CIFAR-10 test images in, top classes out, through OpenVINO
on the CPU with --threads threads and rtk.runtime's configuration (C++: rtk::Classifier::classify,
timed by cpp/tools/classify_speed; Python: rtk.runtime.load(MODEL, backend="openvino").predict).
Each of --rounds rounds runs the C++ program, then Python, each after a one-second warm-up and for
--seconds timed: a change in the machine's load during the run hits both alike. Images/s is the batch size over the
mean call latency of all rounds. Builds cpp/ into --build first (OpenVINO's CMake package from the
installed openvino wheel). Prints a Markdown table and writes the figures, the machine and the load
average before and after to --out. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from compare_cpp_top5 import write_cifar_binary  # scripts/ is on sys.path when a script in it runs

from rtk.bench.machine import cpu_model, load_average
from rtk.bench.timing import latency_stats
from rtk.data import load_test_set
from rtk.errors import RtkError

ROOT = Path(__file__).resolve().parent.parent
WARMUP_S = 1


def build_cpp(build: Path) -> Path:
    """cpp/ configured with the installed wheel's OpenVINO and built; the classify_speed program."""
    import openvino

    openvino_dir = Path(openvino.__file__).parent / "cmake"
    for command in (["cmake", "-S", ROOT / "cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DRTK_BUILD_TESTS=OFF",
                     "-DRTK_REQUIRE_OPENVINO=ON", f"-DOpenVINO_DIR={openvino_dir}"],
                    ["cmake", "--build", build, "--parallel", "--target", "classify_speed"]):
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RtkError(f"{' '.join(map(str, command[:2]))} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return build / "classify_speed"


def cpp_latencies(program: Path, model: Path, images_file: Path, batch: int, threads: int,
                  seconds: int) -> list[float]:
    result = subprocess.run([str(program), str(model), str(images_file), "--batch", str(batch), "--threads",
                             str(threads), "--warmup", str(WARMUP_S), "--seconds", str(seconds)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RtkError(f"classify_speed failed: {result.stderr.strip()}")
    return [float(line) for line in result.stdout.split()]


def python_latencies(model: Any, images: np.ndarray, seconds: float) -> list[float]:
    """model.predict(images) over and over, timed as classify_speed times classify()."""
    start = time.perf_counter()
    while True:  # warm-up: at least one call
        model.predict(images)
        if time.perf_counter() - start >= WARMUP_S:
            break
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < 5 or time.perf_counter() - start < seconds:
        call = time.perf_counter()
        model.predict(images)
        latencies.append(time.perf_counter() - call)
    return latencies


def bench(model_path: Path, program: Path, batch_sizes: list[int], threads: int, seconds: int,
          rounds: int, images: np.ndarray, images_file: Path) -> list[dict]:
    import rtk.runtime

    rows = []
    with rtk.runtime.load(model_path, backend="openvino", threads=threads) as model:
        for batch in batch_sizes:
            cpp: list[float] = []
            python: list[float] = []
            for _ in range(rounds):
                cpp += cpp_latencies(program, model_path, images_file, batch, threads, seconds)
                python += python_latencies(model, images[:batch], seconds)
            cpp_stats, python_stats = latency_stats(cpp, batch), latency_stats(python, batch)
            rows.append({"model": model_path.name, "precision": model.precision, "batch": batch,
                         "cpp": asdict(cpp_stats), "python": asdict(python_stats),
                         "ratio": cpp_stats.throughput / python_stats.throughput})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | C++ images/s | rtk.runtime images/s | C++ / Python | C++ p50 ms | Python p50 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['batch']} | {row['cpp']['throughput']:,.0f} | "
                     f"{row['python']['throughput']:,.0f} | {row['ratio']:.2f} | {row['cpp']['p50_ms']:.3f} | "
                     f"{row['python']['p50_ms']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="rtk ONNX file (repeatable) [default: runs/resnet20/model.int8.cpu.onnx]")
    parser.add_argument("--batch-sizes", default="1,256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=2, help="timed seconds per side, batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "cpp")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-cpp.json")
    args = parser.parse_args()
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        if not all(1 <= b <= 10_000 for b in batch_sizes) or not 1 <= args.threads <= 1024:
            raise RtkError("batch sizes must lie in 1..10000 and --threads in 1..1024")
        if not 1 <= args.rounds <= 100 or not 1 <= args.seconds <= 3600:
            raise RtkError("--rounds must lie in 1..100 and --seconds in 1..3600")
        models = args.model or [ROOT / "runs" / "resnet20" / "model.int8.cpu.onnx"]
        for model in models:
            if not model.is_file():
                raise RtkError(f"model not found: {model} (make it with `rtk export` / `rtk quantize --target cpu`)")
        program = build_cpp(args.build)
        images, labels = load_test_set()
        load_before = load_average()
        with tempfile.TemporaryDirectory() as tmp:
            images_file = Path(tmp) / "test_images.bin"
            write_cifar_binary(images_file, images[:max(batch_sizes)], labels[:max(batch_sizes)])
            rows = [row for model in models for row in bench(model, program, batch_sizes, args.threads,
                                                             args.seconds, args.rounds, images, images_file)]
    except RtkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "seconds": args.seconds,
              "rounds": args.rounds, "load_before": load_before, "load_after": load_average(),
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"\n{report['cpu']}, {report['cores']} cores, {args.threads} threads; load average "
          f"{load_before} before, {report['load_after']} after ({report['time']}); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
