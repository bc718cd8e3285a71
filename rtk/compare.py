"""Where do two artifacts of one network part ways? Layer by layer, on validation images.

    rtk compare runs/resnet20/model.onnx runs/resnet20/model.int8.tensorrt.onnx     # FP32 vs INT8 QDQ
    rtk compare runs/resnet20/model.onnx runs/resnet20/model.fp16.onnx              # FP32 vs FP16
    rtk compare model.int8.cpu.onnx model.int8.cpu.onnx --backend-b openvino        # one file, two backends

Both files are run with every tensor they share as an extra graph output, matched by name across
the QDQ rewrite (quantize_static keeps the names of the nodes it wraps in Q/DQ and names its own
tensors *_QuantizeLinear_Output / *_DequantizeLinear_Output, which only one side has) and by what
made them: a name is paired only where the same op makes it on both sides. The CPU flavour folds each
ReLU into the quantization of the tensor before it: its Conv (or Add) writes the ReLU's output name,
before the ReLU. There A's ReLU input is paired with that tensor as it is, and A's ReLU output with
the ReLU of it; a name made by different ops otherwise is left out and listed, never compared with
another quantity (it blamed every ReLU of a fine model). Per tensor, over all images, in graph order
(A's node order):

    SQNR (dB) = 10 log10(sum a^2 / sum (a - b)^2)     cosine of a and b flattened     max |a - b|

with A as the reference. The first tensor whose SQNR is under `threshold_db` is named, and so is the
tensor that loses the most SQNR from the one before it (the layer that adds the most error, "blamed";
none where no tensor loses any, as for a file and its byte copy).
For each image whose top-1 class differs, the tensor where its own SQNR falls the most is where its
error grows. Marking tensors as outputs can stop a backend from fusing across them, so the logits
(and so the flips) come from the unmodified files.

Images: N from the validation split rtk train holds out (rtk.data.split_indices defaults), never the
test set, so a layer is blamed on data no reported accuracy is measured on.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtk import data
from rtk.errors import RtkError, require
from rtk.limits import VALIDATION_IMAGES, check_count
from rtk.log import Log, info
from rtk.onnx_meta import load_onnx, missing_fields, read_metadata
from rtk.preprocess import normalize_uint8_nhwc
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME

FORMAT = "rtk.compare/1"
SQNR_CAP = 200.0  # dB, for tensors that agree exactly (JSON has no infinity)
BATCH = 100  # images per run: every shared tensor of ResNet-20 is ~1.9 MB per image in float32
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "Cast", "Constant")


@dataclass
class TensorStats:
    """Running sums of one tensor over the images seen so far, and its SQNR per image."""

    name: str
    op: str
    node: str
    b_name: str  # B's tensor that holds the same quantity
    relu: bool = False  # apply ReLU to B's tensor first (a ReLU B folded into its quantization)
    signal: float = 0.0  # sum a^2
    noise: float = 0.0  # sum (a - b)^2
    dot: float = 0.0  # sum a * b
    other: float = 0.0  # sum b^2
    max_abs: float = 0.0
    per_image_db: list[np.ndarray] = field(default_factory=list)

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.relu:
            b = np.maximum(b, 0)
        a, b = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)  # [n, numel]
        signal, noise = np.sum(a * a, axis=1), np.sum((a - b) ** 2, axis=1)
        self.signal += float(signal.sum())
        self.noise += float(noise.sum())
        self.dot += float(np.sum(a * b))
        self.other += float(np.sum(b * b))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
        self.per_image_db.append(sqnr_db(signal, noise))

    def row(self) -> dict[str, Any]:
        cosine = self.dot / math.sqrt(self.signal * self.other) if self.signal and self.other else 1.0
        return {"tensor": self.name, "op": self.op, "node": self.node, "b_tensor": self.b_name,
                **({"b_relu_applied": True} if self.relu else {}),
                "sqnr_db": float(sqnr_db(self.signal, self.noise)), "cosine": cosine, "max_abs_error": self.max_abs}


def sqnr_db(signal: Any, noise: Any) -> Any:
    """10 log10(signal / noise); inf where the two agree exactly (capped at 200 dB for JSON)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(10 * np.log10(np.asarray(signal) / np.asarray(noise)), SQNR_CAP)


def shared_tensors(a: Any, b: Any) -> tuple[list[TensorStats], list[dict[str, str]]]:
    """The float tensors of A that B holds too, in A's graph order (TensorStats, empty), and those
    left out: a name both graphs have, made by different ops ({"tensor", "a_op", "b_op"})."""
    def producers(model: Any) -> dict[str, Any]:
        return {name: node for node in model.graph.node if node.op_type not in QDQ_OPS for name in node.output}

    mine, theirs = producers(a), producers(b)
    # A's ReLU input u -> B's tensor of the ReLU's output name t, written by the op that makes u in A
    folded = {node.input[0]: node.output[0] for node in a.graph.node
              if node.op_type == "Relu" and node.input[0] in mine and node.output[0] in theirs
              and theirs[node.output[0]].op_type == mine[node.input[0]].op_type}
    pairs, left_out = [], []
    for name, node in mine.items():
        other = theirs.get(name)
        if name == OUTPUT_NAME:
            continue
        if other is None and name in folded:
            pairs.append(TensorStats(name, node.op_type, node.name, folded[name]))
        elif other is not None and other.op_type == node.op_type:
            pairs.append(TensorStats(name, node.op_type, node.name, name))
        elif other is not None and name in folded.values():
            pairs.append(TensorStats(name, node.op_type, node.name, name, relu=True))
        elif other is not None:
            left_out.append({"tensor": name, "a_op": node.op_type, "b_op": other.op_type})
    return pairs, left_out


def _with_outputs(model: Any, names: list[str], path: Path) -> Path:
    """A copy of `model` at `path` that also returns `names` (types left to the backend)."""
    onnx = require("onnx")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    onnx.save(copy, path)
    return path


def compare(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], *, backend_a: str = "onnxruntime",
            backend_b: str = "onnxruntime", num_images: int = 500, threshold_db: float = 20.0,
            data_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
            log: Log = info) -> dict[str, Any]:
    """The layer-by-layer comparison of B against A on `num_images` validation images (rtk.compare/1)."""
    from rtk.runtime import make_runner

    path_a, path_b = Path(path_a), Path(path_b)
    check_count("--images", num_images, VALIDATION_IMAGES, "the validation split")
    if (path_a.resolve(), backend_a) == (path_b.resolve(), backend_b):
        raise RtkError("A and B are the same file on the same backend: nothing to compare")
    meta_a, meta_b = read_metadata(path_a), read_metadata(path_b)
    for path, meta in ((path_a, meta_a), (path_b, meta_b)):
        if missing_fields(meta):  # the images are normalized as each file's metadata says
            raise RtkError(f"{path} carries no rtk metadata ({', '.join(missing_fields(meta))} missing): compare "
                           "reads the network and its normalization from it; export it with `rtk export`")
    for key in ("depth", "checkpoint_sha256", "normalization", "classes"):
        if meta_a.get(key) != meta_b.get(key):
            raise RtkError(f"{path_a} and {path_b} are not one network as exported: their {key} differs "
                           f"({meta_a.get(key)} vs {meta_b.get(key)})")
    model_a, model_b = load_onnx(path_a), load_onnx(path_b)
    stats, left_out = shared_tensors(model_a, model_b)
    if not stats:
        raise RtkError(f"{path_a} and {path_b} share no intermediate tensor made by the same op")
    cifar = data.load_cifar10(data_dir)
    _, val_idx = data.split_indices(len(cifar.train_labels))
    indices = val_idx[:num_images]
    images = normalize_uint8_nhwc(cifar.train_images[indices], meta_a["normalization"])
    labels = cifar.train_labels[indices]
    log(f"comparing {len(stats)} tensors of {path_a} ({backend_a}) and {path_b} ({backend_b}) on {len(indices)} "
        f"validation images" + (f"; left out, made by other ops in B: {', '.join(t['tensor'] for t in left_out)}"
                                if left_out else ""))

    logits: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    wanted = {"a": [stat.name for stat in stats], "b": sorted({stat.b_name for stat in stats})}
    with tempfile.TemporaryDirectory(prefix="rtk-compare-") as work:
        runs = {}
        for side, path, model, backend in (("a", path_a, model_a, backend_a), ("b", path_b, model_b, backend_b)):
            augmented = _with_outputs(model, wanted[side], Path(work) / f"{side}.onnx")
            # The logits come from the file itself, not from the augmented copy: exposing the
            # intermediate tensors stops onnxruntime fusing Q/DQ around them, which moves the INT8
            # logits, so agreement and flips would describe another model than the one deployed.
            runs[side] = (make_runner(augmented, backend, threads=threads), make_runner(path, backend, threads=threads))
        try:
            for runner in (r for pair in runs.values() for r in pair):
                runner.activate()
            for start in range(0, num_images, BATCH):
                feed = {INPUT_NAME: images[start:start + BATCH]}
                inner = {side: runs[side][0].infer(feed) for side in runs}
                for stat in stats:
                    stat.add(inner["a"][stat.name], inner["b"][stat.b_name])
                for side in runs:
                    logits[side].append(runs[side][1].infer(feed)[OUTPUT_NAME])
        finally:
            for runner in (r for pair in runs.values() for r in pair):
                runner.deactivate()
    return {**_result(path_a, path_b, backend_a, backend_b, indices, labels, stats,
                      np.concatenate(logits["a"]), np.concatenate(logits["b"]), threshold_db), "left_out": left_out}


def _result(path_a: Path, path_b: Path, backend_a: str, backend_b: str, indices: np.ndarray, labels: np.ndarray,
            stats: list[TensorStats], logits_a: np.ndarray, logits_b: np.ndarray,
            threshold_db: float) -> dict[str, Any]:
    from rtk.stats import paired

    rows = [stat.row() for stat in stats]
    per_image = np.stack([np.concatenate(stat.per_image_db) for stat in stats], axis=1)  # [N, tensors]
    # SQNR change at each tensor from the one before it in graph order (0 for the first)
    drops = np.diff(per_image, axis=1, prepend=per_image[:, :1])  # [N, tensors]
    sqnr = np.array([row["sqnr_db"] for row in rows])
    step = np.diff(sqnr, prepend=sqnr[:1])
    below = [row["tensor"] for row in rows if row["sqnr_db"] < threshold_db]
    top_a, top_b = logits_a.argmax(axis=1), logits_b.argmax(axis=1)
    flips = [{"image": int(indices[i]), "label": int(labels[i]), "a": int(top_a[i]), "b": int(top_b[i]),
              "grows_at": rows[int(np.argmin(drops[i]))]["tensor"]}
             for i in np.flatnonzero(top_a != top_b)]
    blamed = int(np.argmin(step))
    return {
        "format": FORMAT,
        "a": {"file": str(path_a), "backend": backend_a}, "b": {"file": str(path_b), "backend": backend_b},
        "images": {"split": "validation", "count": len(indices)},
        "threshold_db": threshold_db,
        "tensors": rows,
        "first_below_threshold": below[0] if below else None,
        # None where no tensor is further from A than the one before it (a file and its byte copy)
        "blamed": None if step[blamed] >= 0 else {
            **{key: rows[blamed][key] for key in ("tensor", "op", "node", "sqnr_db")},
            "after": rows[blamed - 1]["tensor"], "sqnr_lost_db": float(-step[blamed])},
        "top1": {"agreement_pct": 100.0 * float(np.mean(top_a == top_b)),
                 "accuracy_a_pct": 100.0 * float(np.mean(top_a == labels)),
                 "accuracy_b_pct": 100.0 * float(np.mean(top_b == labels)),
                 "evidence": paired(top_b == labels, top_a == labels).as_dict()},
        "flips": flips,
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """SQNR through the depth of the network, the threshold dashed, the blamed tensor marked."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtk.fileio import atomic_path

    rows = result["tensors"]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.18), 4.5))
    ax.plot(range(len(rows)), [row["sqnr_db"] for row in rows], marker=".", label="SQNR of B against A")
    ax.axhline(result["threshold_db"], linestyle="--", color="grey", label=f"{result['threshold_db']:g} dB")
    if result["blamed"] is not None:
        blamed = next(i for i, row in enumerate(rows) if row["tensor"] == result["blamed"]["tensor"])
        ax.plot([blamed], [rows[blamed]["sqnr_db"]], "o", color="red",
                label=f"most SQNR lost: {rows[blamed]['tensor']}")
    ax.set_xticks(range(len(rows)), [row["tensor"] for row in rows], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(f"{Path(result['b']['file']).name} ({result['b']['backend']}) vs "
                 f"{Path(result['a']['file']).name} ({result['a']['backend']}), "
                 f"{result['images']['count']} validation images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
