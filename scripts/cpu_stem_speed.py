"""What leaving the stem float costs the CPU INT8 flavour in speed: the shipped file (stem float, scales and
biases tuned) against the flavour before 2026-12-04 (every Conv INT8, untuned; made here from the same
calibration, in a temporary folder), and the FP32 file, on onnxruntime and OpenVINO, 2 threads, in
interleaved rounds on one random batch (docs/quantization.md, "Deeper ResNets").

    python scripts/cpu_stem_speed.py --depth 20     # after `rtk quantize --depth 20 --target cpu`

Prints one line per file, backend and batch size: the median images/s of the rounds and each round's;
with --profile, also where onnxruntime spends a batch-256 run of each file (its profiler's kernel time
per op type) and which ops its optimized graph holds (the NHWC layout of its INT8 kernels shows as
Transposes).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from rtk import pipeline, quantize
from rtk.quantize import qdq


def throughput(run, batch: np.ndarray, seconds: float) -> float:
    run(batch)  # warm-up
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - started)


def profile(ort, options, path: Path, name: str, work: Path, batch: np.ndarray, runs: int = 10) -> None:
    """onnxruntime's kernel time per op type, a call's mean over `runs` + 3 calls (the profiler runs
    from the session's start, so the 3 warm-up calls count too), and the op counts of the graph it
    optimized."""
    import onnx

    profiled = ort.SessionOptions()
    profiled.intra_op_num_threads, profiled.inter_op_num_threads = options.intra_op_num_threads, 1
    profiled.enable_profiling, profiled.profile_file_prefix = True, str(work / "profile")
    profiled.optimized_model_filepath = str(work / "optimized.onnx")
    session = ort.InferenceSession(str(path), profiled, providers=["CPUExecutionProvider"])
    for _ in range(runs + 3):
        session.run(None, {"input": batch})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) / (runs + 3) / 1000
    ops = collections.Counter(node.op_type for node in onnx.load(str(work / "optimized.onnx")).graph.node)
    print(f"onnxruntime {name}, batch {len(batch)}: {total:.1f} ms of kernels a call; by op type: "
          + ", ".join(f"{op} {us / (runs + 3) / 1000:.1f} ms" for op, us in per_op.most_common(6))
          + f"; optimized graph: {', '.join(f'{op} x{n}' for op, n in ops.most_common(6))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per file, backend, batch size and round")
    parser.add_argument("--profile", action="store_true", help="also onnxruntime's time per op type, batch 256")
    args = parser.parse_args()
    import onnxruntime as ort
    import openvino as ov

    paths = pipeline.run_paths(args.depth, os.environ.get("RTK_RUNS_DIR"))
    with tempfile.TemporaryDirectory(prefix="rtk-stem-") as work:
        before = dataclasses.replace(qdq.FLAVOURS["cpu"], leading_float_convs=0, tuned=False)
        qdq.FLAVOURS["cpu"] = before
        untuned = quantize.quantize_int8(paths.onnx, Path(work) / "every-conv.onnx", target="cpu", verify=False,
                                         calib_dir=Path(work) / "calib", tune_steps=0, log=lambda _: None)
        files = {"fp32": paths.onnx, "int8 shipped (stem float, tuned)": paths.int8_onnx("cpu"),
                 "int8 before (every Conv, untuned)": untuned}
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        core = ov.Core()
        runners = {}
        for name, path in files.items():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runners[f"onnxruntime {name}"] = lambda x, s=session: s.run(None, {"input": x})
            if name != "fp32":
                runners[f"openvino {name}"] = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 2})
        rng = np.random.default_rng(0)
        if args.profile:
            for name, path in files.items():
                profile(ort, options, path, name, Path(work), rng.standard_normal((256, 3, 32, 32)).astype(np.float32))
        for size in (256, 1):
            batch = rng.standard_normal((size, 3, 32, 32)).astype(np.float32)
            rounds: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, run in runners.items():
                    rounds.setdefault(name, []).append(throughput(run, batch, args.seconds))
            for name, values in rounds.items():
                print(f"ResNet-{args.depth} batch {size}: {name}: median {np.median(values):,.0f} img/s "
                      f"(rounds {', '.join(f'{v:,.0f}' for v in values)})")


if __name__ == "__main__":
    main()
