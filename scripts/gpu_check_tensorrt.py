#!/usr/bin/env python3
"""GPU check of the TensorRT path, end to end, for a machine with TensorRT and an NVIDIA GPU.

    RTK_DATA_DIR=/path/to/cifar-10-batches-py python scripts/gpu_check_tensorrt.py [--depth 20]
        [--runs-dir runs] [--work-dir runs/gpu_check] [--num-images 10000] [--precision fp32 fp16 int8]

For each precision it takes the ONNX the engine is built from (runs/resnet<depth>/model.onnx,
model.fp16.onnx, model.int8.tensorrt.onnx; made by export / quantize through rtk.pipeline when
missing), builds a strongly typed engine into --work-dir with rtk.build (through Polygraphy; the
runs' own engines are left alone), runs it with rtk.runtime's TensorRT runner on real CIFAR-10
test images and compares its logits with onnxruntime (CPU) running the same ONNX file (for INT8 the
same QDQ file, so both sides run the same quantized arithmetic):

    fp32  built with TF32 off, so both sides do FP32 arithmetic: max |logit difference| <= 1e-3
          and top-1 agreement >= 99.9%
    fp16  top-1 agreement >= 99.5% (and the max |logit difference|, reported)
    int8  top-1 agreement >= 99.5%: TensorRT runs the same QDQ arithmetic as onnxruntime

with the accuracy of both on the same images. Then Polygraphy's own comparison checks the same
ONNX file independently of rtk's build and runner: `polygraphy run <onnx> --trt --onnxrt
--strongly-typed` on the first 256 of those images, with the tolerance of POLYGRAPHY_TOLERANCE
(limits chosen before any run; the report keeps Polygraphy's output, with the differences it saw).

It writes one JSON report (--report, default <work-dir>/gpu_check_tensorrt.json) and exits 0 when
every check passes, 1 when one fails or a step errs, and 2 with one line where TensorRT,
Polygraphy, cuda-python or a CUDA device is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

# precision -> (minimum top-1 agreement in %, maximum |logit difference| or None)
CHECKS: dict[str, tuple[float, float | None]] = {
    "fp32": (99.9, 1e-3),
    "fp16": (99.5, None),
    "int8": (99.5, None),
}
# precision -> atol and rtol of `polygraphy run --trt --onnxrt` (logits; TF32 as rtk builds it:
# off for fp32, on otherwise). Limits set before any TensorRT run, to revisit with its report.
POLYGRAPHY_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "int8": 1e-1}
POLYGRAPHY_IMAGES = 256
REPORT_FORMAT = "rtk.gpu_check_tensorrt/2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--depth", type=int, default=20, help="ResNet depth (default 20)")
    parser.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("RTK_RUNS_DIR", "runs")),
                        help="holds runs/resnet<depth>/ with the ONNX files (default: runs or RTK_RUNS_DIR)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="engines, timing cache and report go here (default: <runs-dir>/gpu_check)")
    parser.add_argument("--data-dir", default=os.environ.get("RTK_DATA_DIR"),
                        help="CIFAR-10 cifar-10-batches-py folder (default: RTK_DATA_DIR)")
    parser.add_argument("--num-images", type=int, default=10_000, help="test images compared (default 10000)")
    parser.add_argument("--precision", nargs="+", choices=tuple(CHECKS), default=list(CHECKS),
                        help="precisions to build and compare (default: all three)")
    parser.add_argument("--report", type=Path, default=None,
                        help="JSON report (default: <work-dir>/gpu_check_tensorrt.json)")
    return parser.parse_args(argv)


def compare(precision: str, engine_logits: np.ndarray, reference_logits: np.ndarray,
            labels: np.ndarray) -> dict[str, Any]:
    """The figures of one precision and whether they pass CHECKS[precision]; logits float32 [N, 10]."""
    min_agreement, max_diff = CHECKS[precision]
    agreement = 100.0 * float(np.mean(engine_logits.argmax(1) == reference_logits.argmax(1)))
    diff = float(np.max(np.abs(engine_logits - reference_logits)))
    passed = agreement >= min_agreement and (max_diff is None or diff <= max_diff)
    return {
        "top1_agreement_pct": round(agreement, 4),
        "max_abs_logit_diff": diff,
        "tensorrt_accuracy_pct": round(100.0 * float(np.mean(engine_logits.argmax(1) == labels)), 4),
        "onnxruntime_accuracy_pct": round(100.0 * float(np.mean(reference_logits.argmax(1) == labels)), 4),
        "limits": {"min_top1_agreement_pct": min_agreement, "max_abs_logit_diff": max_diff},
        "passed": passed,
    }


def polygraphy_command(onnx_path: Path, inputs_json: Path, precision: str, batch: int) -> list[str]:
    """`polygraphy run` comparing TensorRT with onnxruntime on the saved inputs (Polygraphy's CLI,
    run with this interpreter so it sees the same packages)."""
    tolerance = str(POLYGRAPHY_TOLERANCE[precision])
    return [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())",
            "run", str(onnx_path), "--trt", "--onnxrt", "--strongly-typed",
            "--input-shapes", f"input:[{batch},3,32,32]", "--load-inputs", str(inputs_json),
            "--atol", tolerance, "--rtol", tolerance, *(["--tf32"] if precision != "fp32" else [])]


def polygraphy_check(onnx_path: Path, inputs_json: Path, precision: str, batch: int) -> dict[str, Any]:
    command = polygraphy_command(onnx_path, inputs_json, precision, batch)
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    output = (done.stdout + done.stderr).strip().splitlines()
    return {"command": shlex.join(["polygraphy", *command[3:]]), "returncode": done.returncode,
            "tolerance": POLYGRAPHY_TOLERANCE[precision], "passed": done.returncode == 0,
            "output_tail": output[-40:]}


def save_polygraphy_inputs(images: np.ndarray, path: Path) -> tuple[Path, int]:
    """The first POLYGRAPHY_IMAGES test images, normalized as rtk does ([N, 3, 32, 32] float32), as
    one iteration of Polygraphy's --load-inputs JSON."""
    from polygraphy.json import save_json

    from rtk.preprocess import normalize_uint8_nhwc

    batch = normalize_uint8_nhwc(images[:POLYGRAPHY_IMAGES])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json([{"input": batch}], str(path))
    return path, len(batch)


def check_precision(precision: str, args: argparse.Namespace, work: Path, images: np.ndarray,
                    labels: np.ndarray) -> dict[str, Any]:
    import rtk.runtime
    from rtk.build import build_engine
    from rtk.engine_meta import read_sidecar
    from rtk.pipeline import ensure_onnx_for, run_paths

    onnx_path = ensure_onnx_for(run_paths(args.depth, args.runs_dir), precision, data_dir=args.data_dir)
    # FP32 without TF32, so the comparison with onnxruntime's FP32 measures the engine, not TF32 rounding.
    plan = build_engine(onnx_path, work / f"model.{precision}.plan", precision=precision,
                        timing_cache=work / "timing.cache", tf32=precision != "fp32")
    with rtk.runtime.load(plan) as engine:
        engine_logits = engine.logits(images)
    with rtk.runtime.load(onnx_path, backend="onnxruntime") as reference:
        reference_logits = reference.logits(images)
    sidecar = read_sidecar(plan)
    result = {"onnx": str(onnx_path), "engine": str(plan), "tf32": sidecar["tf32"],
              "layer_precisions": sidecar["layer_precisions"],
              **compare(precision, engine_logits, reference_logits, labels)}
    inputs_json, batch = save_polygraphy_inputs(images, work / "polygraphy_inputs.json")
    result["polygraphy"] = polygraphy_check(onnx_path, inputs_json, precision, batch)
    result["passed"] = result["passed"] and result["polygraphy"]["passed"]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rtk.build import builder_environment
    from rtk.errors import MissingDependency, RtkError

    try:
        tensorrt_version, gpu = builder_environment()  # TensorRT, Polygraphy and a CUDA device
        from rtk.runtime.cuda import cuda_binding

        cuda_binding()  # the runner's device memory: cuda-python or pycuda
    except MissingDependency as exc:
        print(f"TensorRT check not run: {exc}", file=sys.stderr)
        return 2

    from rtk import data
    from rtk.fileio import provenance, write_text_atomic

    work = args.work_dir or args.runs_dir / "gpu_check"
    report_path = args.report or work / "gpu_check_tensorrt.json"
    report: dict[str, Any] = {"format": REPORT_FORMAT, "tensorrt_version": tensorrt_version, "gpu": gpu,
                              "depth": args.depth, "num_images": args.num_images, "results": {}}
    try:
        images, labels = data.load_test_set(args.data_dir)
        images, labels = images[:args.num_images], labels[:args.num_images]
        for precision in args.precision:
            result = check_precision(precision, args, work, images, labels)
            report["results"][precision] = result
            print(f"{precision}: top-1 agreement {result['top1_agreement_pct']:.2f}%, max |logit diff| "
                  f"{result['max_abs_logit_diff']:.2e}, accuracy TensorRT {result['tensorrt_accuracy_pct']:.2f}% "
                  f"/ onnxruntime {result['onnxruntime_accuracy_pct']:.2f}%, polygraphy run "
                  f"{'passed' if result['polygraphy']['passed'] else 'FAILED'} -> "
                  f"{'pass' if result['passed'] else 'FAIL'}")
    except RtkError as exc:
        report["error"] = str(exc)
        print(f"error: {exc}", file=sys.stderr)
    report["passed"] = "error" not in report and all(r["passed"] for r in report["results"].values())
    report["provenance"] = provenance("tensorrt", "polygraphy", "onnxruntime", "cuda-python", "pycuda", "numpy")
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    print(f"{'PASS' if report['passed'] else 'FAIL'}: report in {report_path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
