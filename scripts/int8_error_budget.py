"""Where the INT8 error of the TensorRT flavour comes from, and how much of a test-set figure is noise.

Every row is one INT8 model of the same FP32 ONNX, from the same calibration manifest, measured
against FP32 on the validation split (rtk train's 5,000 held-out training images) and the 10,000
test images with onnxruntime (CPU):

    tensorrt            the manifest's ranges, as `rtk quantize` writes the TensorRT flavour
    jitter-<k>          the same ranges, each end moved by a random 0.3% (seed k): models as well
                        calibrated as the first, for the spread of agreement and accuracy between them
    weights-only        every activation Q/DQ removed (the weights stay INT8)
    only-<group>        weights INT8, and of the activations only <group>: `input` (the image), `mid`
                        (the ReLU output inside each block), `stream` (the residual stream: the stem
                        ReLU, every block output, the two downsampled shortcuts)
    cpu                 the CPU flavour (U8S8, 8-bit unsigned activations) from the same ranges

and what was tried to bring the TensorRT flavour closer to FP32 without training:

    shortcuts-float     Q/DQ on the Conv inputs only, the residual Adds read their shortcut in float
    bias-corrected      each Conv's bias moved by the mean error of its output channels on the
                        calibration images, Conv by Conv in graph order (empirical bias correction)
    stem-float          the stem Conv float (what `--max-drop 0.0` chose), 18 of 19 Convs INT8
    stem+<conv>-float   and the Conv whose float copy brings the validation KL down most, 17 of 19
    stem-float+shortcuts-float   both of the stem-float and shortcuts-float edits

Besides top-1 agreement and the accuracy difference (with its paired evidence), two measures that do
not depend on which few images sit on a decision boundary: the mean KL divergence of the softmax
outputs, KL(FP32 || INT8), and the mean squared logit error.

    RTK_DATA_DIR=/path/to/cifar-10-batches-py python scripts/int8_error_budget.py \
        --onnx runs/resnet20/model.onnx --manifest calib/resnet20-ffceb5b6a048-percentile-n1024-s0.json \
        --out docs/results/int8_error_budget.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rtk import data, stats
from rtk.fileio import write_text_atomic
from rtk.onnx_meta import read_metadata
from rtk.preprocess import normalize_uint8_nhwc
from rtk.quantize import quantize_int8
from rtk.quantize.calibration import SPLIT, read_manifest, write_manifest
from rtk.quantize.qdq import conv_macs
from rtk.quantize.validation import logits


def activation_groups(model) -> dict[str, set[str]]:
    """{group: tensors} of the activations a QDQ model quantizes (QuantizeLinear inputs)."""
    producer = {name: node for node in model.graph.node for name in node.output}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    weights = {init.name for init in model.graph.initializer}
    groups: dict[str, set[str]] = {"input": set(), "mid": set(), "stream": set()}
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in weights:
            continue
        tensor = q.input[0]
        dequantized = {op for node in model.graph.node if node.op_type == "DequantizeLinear"
                       and node.input[0] == q.output[0] for op in readers.get(node.output[0], ())}
        if tensor == model.graph.input[0].name:
            groups["input"].add(tensor)
        elif dequantized & {"Add", "Slice"} or producer[tensor].op_type == "Pad":
            groups["stream"].add(tensor)  # read by a residual Add or a downsampling shortcut
        else:
            groups["mid"].add(tensor)  # inside a block: read by its second Conv only
    return groups


def without_activation_qdq(path: Path, out: Path, tensors: set[str]) -> None:
    """`path` with the Quantize/Dequantize pair of each tensor in `tensors` removed (its readers
    read the float tensor)."""
    import onnx

    model = onnx.load(path)
    graph = model.graph
    rename, drop = {}, []
    for q in [node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] in tensors]:
        for dq in [node for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] == q.output[0]]:
            rename[dq.output[0]] = q.input[0]
            drop.append(dq)
        drop.append(q)
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    _prune(model)
    onnx.save(model, out)


def shortcuts_float(path: Path, out: Path) -> None:
    """`path` with every residual Add reading its shortcut before the shortcut's Q/DQ."""
    import onnx

    model = onnx.load(path)
    producer = {name: node for node in model.graph.node for name in node.output}
    for add in [node for node in model.graph.node if node.op_type == "Add"]:
        for i, name in enumerate(add.input):
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                add.input[i] = producer[dq.input[0]].input[0]  # Q's input
    _prune(model)  # the Q/DQ pairs nothing reads any more (the downsampled shortcuts')
    onnx.save(model, out)


def _prune(model) -> None:
    """Remove the nodes whose outputs nothing reads, then the initializers no node reads."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        dead = [node for node in graph.node if not set(node.output) & used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def bias_corrected(fp32: Path, path: Path, out: Path, images: np.ndarray) -> None:
    """`path` with each Conv's bias plus the mean FP32 - INT8 difference of its output channels
    over `images`, measured Conv by Conv on the model corrected so far (float32 [N, 3, 32, 32])."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    def channel_means(model, tensor: str) -> np.ndarray:  # [C] over images and positions
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.mean(np.concatenate([session.run([tensor], {"input": images[i:i + 256]})[0].mean(axis=(2, 3))
                                       for i in range(0, len(images), 256)]), axis=0)

    reference, model = onnx.load(fp32), onnx.load(path)
    initializers = {init.name: init for init in model.graph.initializer}
    for conv in [node for node in model.graph.node if node.op_type == "Conv"]:
        shift = channel_means(reference, conv.output[0]) - channel_means(model, conv.output[0])
        bias = numpy_helper.to_array(initializers[conv.input[2]])
        initializers[conv.input[2]].CopyFrom(numpy_helper.from_array((bias + shift).astype(np.float32), conv.input[2]))
    onnx.save(model, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the FP32 model.onnx")
    parser.add_argument("--manifest", type=Path, required=True, help="its calibration manifest (calib/...)")
    parser.add_argument("--jitter", type=int, default=4, help="jittered replicas of the TensorRT flavour")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the rows")
    args = parser.parse_args()
    import onnx

    cifar = data.load_cifar10(None)
    _, val_idx = data.split_indices(len(cifar.train_labels), SPLIT["val_size"], SPLIT["seed"])
    sets = {"validation": (cifar.train_images[val_idx], cifar.train_labels[val_idx]), "test": data.load_test_set(None)}
    reference = {name: logits(args.onnx, images) for name, (images, _) in sets.items()}
    manifest = read_manifest(args.manifest)
    rows = []
    start = time.perf_counter()

    def measure(name: str, path: Path) -> None:
        row = {"model": name}
        for split, (images, labels) in sets.items():
            out, ref = logits(path, images), reference[split]
            row[split] = {"agreement_pct": round(100.0 * float(np.mean(out.argmax(1) == ref.argmax(1))), 2),
                          "evidence": stats.paired(out.argmax(1) == labels, ref.argmax(1) == labels).as_dict(),
                          "kl": round(stats.kl_divergence(ref, out), 6), "logit_mse": round(float(np.mean((out - ref) ** 2)), 5)}
        rows.append(row)
        print(f"{name:26s} " + " | ".join(
            f"{split}: agreement {row[split]['agreement_pct']:.2f}%, "
            f"{stats.Paired(**row[split]['evidence']).summary()}, KL {row[split]['kl']:.5f}, "
            f"logit MSE {row[split]['logit_mse']:.4f}" for split in sets), flush=True)

    with tempfile.TemporaryDirectory(prefix="rtk-budget-") as work:
        def quantized(name: str, ranges: dict[str, list[float]], target: str = "tensorrt",
                      exclude: tuple[str, ...] = ()) -> Path:
            source = Path(work) / f"{name}.manifest.json"
            write_manifest(source, {**manifest, "ranges": ranges})
            out = Path(work) / f"{name}.onnx"
            quantize_int8(args.onnx, out, target=target, method=manifest["method"], ranges_from=source,
                          num_images=manifest["num_images"], seed=manifest["seed"], verify=False,
                          exclude=exclude, log=lambda _: None)
            return out

        tensorrt = quantized("tensorrt", manifest["ranges"])
        measure("tensorrt", tensorrt)
        for seed in range(1, args.jitter + 1):
            rng = np.random.default_rng(seed)
            jittered = {name: [low * (1 + 0.003 * rng.standard_normal()), high * (1 + 0.003 * rng.standard_normal())]
                        for name, (low, high) in manifest["ranges"].items()}
            measure(f"jitter-{seed}", quantized(f"jitter-{seed}", jittered))
        groups = activation_groups(onnx.load(tensorrt))
        everything = set().union(*groups.values())
        without_activation_qdq(tensorrt, Path(work) / "weights-only.onnx", everything)
        measure("weights-only", Path(work) / "weights-only.onnx")
        for group, tensors in groups.items():
            without_activation_qdq(tensorrt, Path(work) / f"only-{group}.onnx", everything - tensors)
            measure(f"only-{group}", Path(work) / f"only-{group}.onnx")
        measure("cpu", quantized("cpu", manifest["ranges"], target="cpu"))

        shortcuts_float(tensorrt, Path(work) / "shortcuts-float.onnx")
        measure("shortcuts-float", Path(work) / "shortcuts-float.onnx")
        calibration_images = normalize_uint8_nhwc(cifar.train_images[manifest["indices"]],
                                                  read_metadata(args.onnx)["normalization"])
        bias_corrected(args.onnx, tensorrt, Path(work) / "bias-corrected.onnx", calibration_images)
        measure("bias-corrected", Path(work) / "bias-corrected.onnx")
        convs = list(conv_macs(args.onnx))
        stem = convs[0]
        stem_float = quantized("stem-float", manifest["ranges"], exclude=(stem,))
        measure("stem-float", stem_float)
        shortcuts_float(stem_float, Path(work) / "stem-shortcuts-float.onnx")
        measure("stem-float+shortcuts-float", Path(work) / "stem-shortcuts-float.onnx")
        images = sets["validation"][0]
        kl_with = {conv: stats.kl_divergence(reference["validation"], logits(
            quantized("candidate", manifest["ranges"], exclude=(stem, conv)), images)) for conv in convs[1:]}
        second = min(kl_with, key=kl_with.__getitem__)  # chosen on the validation split only
        measure(f"stem+{second}-float", quantized("two-float", manifest["ranges"], exclude=(stem, second)))

    report = {"format": "rtk.int8_error_budget/1", "onnx": str(args.onnx), "manifest": str(args.manifest),
              "groups": {group: sorted(tensors) for group, tensors in groups.items()},
              "second_float_conv_validation_kl": kl_with, "seconds": round(time.perf_counter() - start),
              "rows": rows}
    write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
