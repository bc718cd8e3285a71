"""The peer, measured by rtk: NVIDIA ModelOpt's ONNX PTQ on the same FP32 ONNX and the same
calibration images as rtk, both evaluated on the CIFAR-10 test set with onnxruntime (CPU).

ModelOpt's ONNX path needs torch, and its `[onnx]` extra pins onnxruntime-gpu and cupy, so it gets a
virtualenv of its own with only what that path imports (never a CUDA torch):

    python3 -m venv .venv-modelopt && . .venv-modelopt/bin/activate
    pip install torch==2.13.0
    pip install nvidia-modelopt==0.47.0 onnx==1.23.2 onnxruntime==1.32.0 onnx-graphsurgeon \
        onnxconverter-common onnxslim onnxscript polygraphy ml_dtypes lief cppimport
    PYTHONPATH=. RTK_DATA_DIR=/path/to/cifar-10-batches-py python scripts/modelopt_peer.py \
        --onnx runs/resnet20/model.onnx --manifest calib/resnet20-ffceb5b6a048-percentile-n1024-s0.json \
        --rtk runs/resnet20/model.int8.tensorrt.onnx --out runs/resnet20/modelopt

rtk itself is imported only for what needs numpy alone (rtk.data, rtk.preprocess, rtk.stats): the
images the manifest names, normalized as the ONNX metadata says, and the paired evidence.
ModelOpt runs with high_precision_dtype fp32 (the float parts stay FP32, as in rtk's file) and with
its defaults (FP16 float parts); `--calibration-batch` is the batch its calibrator sees, which sets
how far its entropy histograms grow.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from rtk import data, stats
from rtk.onnx_meta import read_metadata
from rtk.preprocess import normalize_uint8_nhwc


def predict(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 500]})[0].argmax(axis=1)
                           for i in range(0, len(images), 500)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="rtk's FP32 model.onnx")
    parser.add_argument("--manifest", type=Path, required=True, help="rtk calibration manifest (its images)")
    parser.add_argument("--rtk", type=Path, nargs="*", default=[], help="rtk INT8 models to evaluate beside")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calibration-batch", type=int, default=64)
    args = parser.parse_args()
    from modelopt.onnx.quantization import quantize

    cifar = data.load_cifar10(os.environ.get("RTK_DATA_DIR"))
    normalization = read_metadata(args.onnx)["normalization"]
    indices = np.asarray(json.loads(args.manifest.read_text())["indices"])
    calibration = normalize_uint8_nhwc(cifar.train_images[indices], normalization)
    # ModelOpt's ONNX calibrator reads calibration_data in batches of the model's input batch; a
    # dynamic batch is resolved by calibration_shapes
    shapes = f"input:{args.calibration_batch}x3x32x32"
    args.out.mkdir(parents=True, exist_ok=True)
    models = {}
    for method, precision in (("max", "fp32"), ("entropy", "fp32"), (None, "fp16")):
        label = f"ModelOpt {method or 'defaults (entropy)'}, float parts {precision}"
        out = args.out / f"modelopt.{method or 'default'}.{precision}.onnx"
        start = time.perf_counter()
        quantize(str(args.onnx), quantize_mode="int8", calibration_data={"input": calibration},
                 calibration_method=method, calibration_shapes=shapes, calibration_eps=["cpu"],
                 high_precision_dtype=precision, output_path=str(out), log_level="WARNING")
        models[label] = (out, time.perf_counter() - start)
    for path in args.rtk:
        models[f"rtk {path}"] = (path, None)

    images = normalize_uint8_nhwc(cifar.test_images, normalization)
    labels = cifar.test_labels
    reference = predict(args.onnx, images)
    rows = []
    for label, (path, seconds) in models.items():
        pred = predict(path, images)
        evidence = stats.paired(pred == labels, reference == labels)
        rows.append({"model": label, "file": str(path), "accuracy_pct": 100 * float(np.mean(pred == labels)),
                     "agreement_pct": 100 * float(np.mean(pred == reference)), "evidence": evidence.as_dict(),
                     "quantize_seconds": seconds})
    result = {"fp32": str(args.onnx), "fp32_accuracy_pct": 100 * float(np.mean(reference == labels)),
              "calibration": {"manifest": str(args.manifest), "images": len(indices),
                              "batch": args.calibration_batch},
              "test_images": len(labels), "rows": rows}
    (args.out / "modelopt_peer.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"FP32 {result['fp32_accuracy_pct']:.2f}% on {len(labels)} test images")
    print("| model | test accuracy | vs FP32 (points) | fixed / broken, McNemar p | top-1 agreement |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        e = row["evidence"]
        print(f"| {row['model']} | {row['accuracy_pct']:.2f}% | {e['delta_pct']:+.2f} | "
              f"{stats.brief(e)} | {row['agreement_pct']:.2f}% |")


if __name__ == "__main__":
    main()
