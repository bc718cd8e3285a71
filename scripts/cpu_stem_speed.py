"""What leaving the stem float costs the CPU INT8 flavour in speed: the shipped file (stem float, scales and
biases tuned) against the flavour before 2026-12-04 (every Conv INT8, untuned; made here from the same
calibration, in a temporary folder), and the FP32 file, on onnxruntime and OpenVINO, 2 threads, in
interleaved rounds on one random batch (docs/quantization.md, "Deeper ResNets").

    python scripts/cpu_stem_speed.py --depth 20     # after `rtk quantize --depth 20 --target cpu`

Prints one line per file, backend and batch size: the median images/s of the rounds and each round's.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per file, backend, batch size and round")
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
