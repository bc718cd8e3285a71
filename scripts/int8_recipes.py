"""INT8 recipes of one shipped model compared on the validation split, to choose the default path's
recipe there and never on the test set (docs/quantization.md, "Deeper ResNets").

Each recipe is `rtk quantize`'s own code (rtk.quantize.quantize_int8, no test-set validation) with
the calibration manifest of calib/ (its ranges; the tuned values too where the recipe is the one they
were tuned with), copied into a temporary folder so calib/ is never written. Each INT8 model and the
FP32 model run on onnxruntime over the 5,000 validation images rtk train held out (the split every
shipped checkpoint records); per recipe one JSON line: accuracy, the difference from FP32 with its
paired evidence (fixed / broken, McNemar p), top-1 agreement, KL to FP32, logit MSE, INT8 share of the
conv MACs, the logit MSE tuning recorded on the calibration images, and the wall time.

    RTK_DATA_DIR=/path/to/cifar-10-batches-py python scripts/int8_recipes.py --depth 32 \
        --target cpu --tune-steps 0,600 --out runs/recipes/resnet32-cpu.jsonl

A recipe is one --tune-steps value and one --leading-float value (the grid of both; --leading-float
sets the flavour's Flavour.leading_float_convs for the run); with --each-float, each Conv the recipe
quantizes is left float in turn (which one costs most?). With --budget, each recipe's error is split
by kind of quantized tensor in rtk.qat's simulation of its file: the logit MSE with all quantizers,
with the weights' only, and with one kind alone or all but one kind (the image; ReLU outputs inside
a block; Conv outputs before a residual Add; the residual stream: the stem's output, the Adds' and
the downsampling shortcuts'). The FP32 model is runs/resnet<depth>/model.onnx, exported from the
shipped weights when missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from rtk import data, pipeline, quantize
from rtk.names import INT8_TARGETS, shipped_calib_dir
from rtk.onnx_meta import load_onnx, read_metadata
from rtk.quantize import qdq
from rtk.quantize.calibration import SPLIT
from rtk.quantize.qdq import conv_macs, int8_mac_share
from rtk.quantize.validation import logits
from rtk.stats import kl_divergence, paired


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--target", choices=INT8_TARGETS, required=True)
    parser.add_argument("--tune-steps", type=integers, default=[600], help="comma-separated; 0: untuned")
    parser.add_argument("--leading-float", type=integers, default=None,
                        help="comma-separated counts of leading Convs left float [default: the flavour's]")
    parser.add_argument("--each-float", action="store_true",
                        help="also each Conv the recipe quantizes left float in turn (one recipe per Conv)")
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder to keep each recipe's manifest in (its tuned values), as <out stem>-<line>.json")
    parser.add_argument("--budget", action="store_true", help="also split each recipe's error by kind of tensor")
    args = parser.parse_args()

    paths = pipeline.run_paths(args.depth, args.runs_dir)
    onnx_path = pipeline.ensure_onnx(paths)
    cifar = data.load_cifar10()
    _, val_idx = data.split_indices(len(cifar.train_labels), SPLIT["val_size"], SPLIT["seed"])
    images, labels = cifar.train_images[val_idx], cifar.train_labels[val_idx]
    reference = logits(onnx_path, images)
    convs = list(conv_macs(onnx_path))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recipes = []  # (leading float Convs, tune steps, float Convs)
    for leading in args.leading_float or [qdq.FLAVOURS[args.target].leading_float_convs]:
        for steps in args.tune_steps:
            recipes += [(leading, steps, convs[:leading])] + [
                (leading, steps, [*convs[:leading], conv]) for conv in convs[leading:] if args.each_float]
    for leading, steps, float_convs in recipes:
        qdq.FLAVOURS[args.target] = dataclasses.replace(qdq.FLAVOURS[args.target], leading_float_convs=leading)
        with tempfile.TemporaryDirectory(prefix="rtk-recipes-") as work:
            calib = Path(work) / "calib"
            shutil.copytree(shipped_calib_dir() or "calib", calib)
            started = time.perf_counter()
            model = quantize.quantize_int8(onnx_path, Path(work) / "int8.onnx", target=args.target,
                                           calib_dir=calib, verify=False, tune_steps=steps,
                                           exclude=float_convs, log=lambda _: None)
            seconds = time.perf_counter() - started
            out = logits(model, images)
            budget = error_budget(onnx_path, model, images, reference) if args.budget else None
            (manifest_path,) = calib.glob(f"resnet{args.depth}-*-percentile-n1024-s0.json")
            manifest = json.loads(manifest_path.read_text())
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                lines = len(args.out.read_text().splitlines()) if args.out.is_file() else 0
                shutil.copy(manifest_path, args.keep / f"{args.out.stem}-{lines + 1}.json")
        predictions, fp32_predictions = out.argmax(1), reference.argmax(1)
        record = {
            "depth": args.depth, "target": args.target, "tune_steps": steps, "float_convs": sorted(float_convs),
            "int8_mac_share": round(int8_mac_share(onnx_path, float_convs), 4),
            "validation_images": len(labels),
            "accuracy_pct": 100 * float(np.mean(predictions == labels)),
            "fp32_accuracy_pct": 100 * float(np.mean(fp32_predictions == labels)),
            "evidence": paired(predictions == labels, fp32_predictions == labels).as_dict(),
            "agreement_pct": 100 * float(np.mean(predictions == fp32_predictions)),
            "kl_to_fp32": kl_divergence(reference, out),
            "logit_mse": float(np.mean((out - reference) ** 2)),
            "tuned_logit_mse_calibration": manifest.get("tuned", {}).get(args.target, {}).get("logit_mse")
            if steps else None,
            "seconds": round(seconds, 1),
            **({"error_budget": budget} if budget else {}),
        }
        print(json.dumps(record), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


def error_budget(onnx_path: Path, qdq_path: Path, images: np.ndarray, reference: np.ndarray) -> dict:
    """{"tensors": {kind: count}, "logit_mse": {"all", "weights only", "<kind> only", "all but <kind>"}}
    of the QDQ file `qdq_path` in rtk.qat's simulation on `images` (uint8 [N, 32, 32, 3]) against
    the FP32 logits `reference`; "<kind> only" keeps the weights quantized too."""
    import torch

    from rtk import augment, qat

    graph = load_onnx(qdq_path).graph
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, set[str]] = {}  # tensor -> the op types that read it
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    # a quantized tensor -> the op types that read its DequantizeLinear
    read_by = {node.input[0]: readers.get(dq.output[0], set()) for node in graph.node if node.op_type == "QuantizeLinear"
               for dq in graph.node if dq.op_type == "DequantizeLinear" and dq.input[0] == node.output[0]}
    first_conv = next(node for node in graph.node if node.op_type == "Conv")

    def kind(tensor: str) -> str:
        node = producer.get(tensor)
        while node is not None and node.op_type == "Relu":  # the TensorRT flavour quantizes after the ReLU
            node = producer.get(node.input[0])
        if node is None:
            return "image"
        if node.op_type in ("Add", "Pad") or node is first_conv:
            return "residual stream"
        return "before a residual Add" if "Add" in read_by.get(tensor, ()) else "ReLU inside a block"

    model = qat.folded_from_onnx(onnx_path)
    fake = qat.attach_qdq(model, qdq_path)
    kinds = {tensor: kind(tensor) for tensor in fake.tensors}
    normalization = read_metadata(onnx_path)["normalization"]
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def mse(quantized: set[str]) -> float:
        for tensor, quantizer in fake.tensors.items():
            quantizer.forward = type(quantizer).forward.__get__(quantizer) if kinds[tensor] in quantized else (
                lambda x: x)
        with torch.no_grad():
            out = torch.cat([model(augment.normalize(nchw[i:i + 500], normalization)) for i in range(0, len(nchw), 500)])
        return float(np.mean((out.numpy() - reference) ** 2))

    every = set(kinds.values())
    figures = {"all": mse(every), "weights only": mse(set())}
    for name in sorted(every):
        figures[f"{name} only"], figures[f"all but {name}"] = mse({name}), mse(every - {name})
    return {"tensors": {name: list(kinds.values()).count(name) for name in sorted(every)}, "logit_mse": figures}


if __name__ == "__main__":
    main()
