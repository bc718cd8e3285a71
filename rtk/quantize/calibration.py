"""Calibration: onnxruntime's calibrator over CIFAR-10 training images -> per-tensor ranges, kept in
a manifest under calib/ and reused for the same model, method, N and seed.

Why rtk runs onnxruntime's calibrator itself instead of letting quantize_static do it:
quantize_static hands the calibrator only the CalibTensorRangeSymmetric / CalibMovingAverage /
CalibPercentile / ... extra options, never the histogram size (Entropy then has num_bins =
num_quantized_bins = 128, one KL candidate, and MinMax's ranges). `calibrate` collects 2048-bin |x|
histograms with onnxruntime's calibrator, takes percentile ranges from it, or for entropy searches the
KL threshold itself (entropy_range: onnxruntime's search counts the exact zeros of ReLU outputs and
clipped them to a fifth of their range), and hands the ranges to quantize_static through its
calibration cache (onnxruntime >= 1.27).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtk import data
from rtk.errors import RtkError, require
from rtk.fileio import sha256_file, write_text_atomic
from rtk.limits import VALIDATION_IMAGES
from rtk.log import Log
from rtk.names import CALIBRATION_METHODS, default_calib_dir, shipped_calib_dir
from rtk.onnx_meta import load_onnx
from rtk.preprocess import normalize_uint8_nhwc
from rtk.quantize.metadata import fp32_metadata
from rtk.quantize.qdq import CALIBRATED_OP_TYPES
from rtk.runtime.base import INPUT_NAME

MIN_ONNXRUNTIME = "1.27"  # quantize_static(calibration_cache_path=...) first shipped in 1.27.0
MANIFEST_FORMAT = "rtk.calibration/1"
CALIB_BATCH = 64  # images per calibrator session run
# The histogram calibrators hold the activations of every image of a chunk before they bin them
# (ResNet-20: ~1.9 MB of float32 per image): chunks of 2560 / depth images keep that near 250 MB
# for any depth. MinMax reduces inside the graph and does not care.
CALIB_IMAGES_PER_DEPTH = 2560
KL_CANDIDATES = 512  # thresholds the entropy search tries per tensor (the |x| histograms have ~2-3k bins)
# The training/validation split the calibration images are drawn from: rtk train's default
# (rtk.data.split_indices), so no calibration image is a validation (or test) image.
SPLIT = {"seed": 0, "val_size": VALIDATION_IMAGES}


@dataclass(frozen=True)
class Method:
    """One calibration method: onnxruntime's CalibrationMethod member and its calibrator options;
    `kl_levels` set: rtk picks each range from the calibrator's |x| histograms by KL divergence."""

    calibration_method: str
    options: Mapping[str, Any]
    kl_levels: int | None = None


# onnxruntime's histogram of |x|: 2048 bins from 0 to the first chunk's max|x|, more bins of the same
# width as later chunks reach further.
ABS_HISTOGRAM = {"num_bins": 2048, "percentile": 99.999, "symmetric": True}
METHODS: dict[str, Method] = {
    # |x| at the 99.999th percentile of the |x| histogram (clipped to the observed range).
    "percentile": Method("Percentile", ABS_HISTOGRAM),
    # The clipping of |x| whose 128-level quantization (symmetric INT8's positive levels) has the
    # smallest KL divergence from the histogram (TensorRT's entropy calibration), with the exact zeros
    # of ReLU outputs left out of the histogram (entropy_range says why).
    "entropy": Method("Percentile", ABS_HISTOGRAM, kl_levels=128),
    # The observed minimum and maximum of each tensor over all calibration images.
    "minmax": Method("MinMax", {}),
}
assert tuple(METHODS) == CALIBRATION_METHODS


class _CalibrationBatches:
    """Feeds normalized images to onnxruntime's calibrator, CALIB_BATCH at a time. (onnxruntime's
    CalibrationDataReader accepts any object with get_next, through its __subclasshook__.)"""

    def __init__(self, images: np.ndarray):  # float32 [N, 3, 32, 32]
        self._batches = iter(range(0, len(images), CALIB_BATCH))
        self._images = images

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._batches, None)
        return None if start is None else {INPUT_NAME: self._images[start:start + CALIB_BATCH]}


def calibrate(onnx_path: str | os.PathLike[str], images: np.ndarray, method: str) -> dict[str, list[float]]:
    """{tensor: [low, high]} for the inputs and outputs of every Conv, Add and Relu of the FP32
    model, from onnxruntime's calibrator with `method` over `images` (float32 [N, 3, 32, 32],
    normalized). The histogram methods see the images in chunks and merge their histograms."""
    quantization = quantization_module()
    spec = METHODS[method]
    depth = fp32_metadata(Path(onnx_path))["depth"]
    with tempfile.TemporaryDirectory(prefix="rtk-calibrate-") as work, quiet():
        calibrator = quantization.create_calibrator(
            Path(onnx_path), list(CALIBRATED_OP_TYPES),
            augmented_model_path=str(Path(work) / "augmented.onnx"),
            calibrate_method=getattr(quantization.CalibrationMethod, spec.calibration_method),
            extra_options=dict(spec.options))
        for start, stop in calibration_chunks(len(images), depth):
            calibrator.collect_data(_CalibrationBatches(images[start:stop]))
        if spec.kl_levels is not None:  # {tensor: (counts, edges, min, max)} of |x|
            return {name: entropy_range(*histogram[:2], float(histogram[2]), float(histogram[3]), spec.kl_levels)
                    for name, histogram in sorted(calibrator.collector.get_histogram_dict().items())}
        tensors = calibrator.compute_data()
    return {name: [float(np.asarray(value).item()) for value in tensors[name].range_value]
            for name in sorted(tensors)}


def entropy_range(counts: np.ndarray, edges: np.ndarray, low: float, high: float, levels: int) -> list[float]:
    """[low, high] of one tensor from its |x| histogram (counts [B], edges [B + 1] from 0): the
    threshold T whose `levels`-level quantization of the clipped histogram is closest in KL divergence
    to the histogram with everything beyond T piled into the last bin (TensorRT's entropy
    calibration; candidates from `levels` bins to all of them), clipped to the observed [low, high].

    A ReLU output (low >= 0) is about half exact zeros. They sit in bin 0, which the quantizer
    represents exactly whatever T is, yet they dominate the divergence: smearing that spike over the
    group of bins it is merged with costs less the narrower the window, so the search clipped ReLU
    outputs to a fifth of their range (onnxruntime's entropy lost 2.8 points of the shipped ResNet-20 on
    the validation split, TensorRT's algorithm as is 61). Bin 0 is left out for such tensors.
    onnxruntime's own search (HistogramCollector.get_entropy_threshold) cannot leave it out, spends
    half its levels on the empty negative side of a one-sided tensor, and loops over bins in Python
    (minutes per model): this is the same divergence over whole arrays.
    """
    counts = np.asarray(counts, np.float64).copy()
    if low >= 0:
        counts[0] = 0.0
    beyond = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # beyond[i] = counts[i:].sum()
    best, best_bins = np.inf, len(counts)
    first = min(levels, len(counts))
    step = -(-(len(counts) - first) // KL_CANDIDATES) or 1  # candidates 0.2% of the range apart or closer
    for bins in [*range(first, len(counts), step), len(counts)]:
        p = counts[:bins].copy()  # the reference: clipped at edges[bins], outliers in the last bin
        p[-1] += beyond[bins]
        if not p.sum():
            continue
        # q: `levels` groups of bins (the last takes the remainder), each group's count spread
        # evenly over its non-empty bins, as a quantizer with T = edges[bins] would see them
        starts = np.arange(levels) * (bins // levels)
        sizes = np.diff(np.append(starts, bins))
        filled = p != 0
        per_bin = np.add.reduceat(counts[:bins], starts) / np.maximum(np.add.reduceat(filled * 1.0, starts), 1.0)
        q = np.repeat(per_bin, sizes) * filled  # [bins]
        support = p > 0
        if not q.sum() or not q[support].all():
            continue
        p, q = p[support] / p.sum(), q[support] / q.sum()
        divergence = float(np.sum(p * np.log(p / q)))
        if divergence < best:
            best, best_bins = divergence, bins
    threshold = float(edges[best_bins])
    return [max(-threshold, low), min(threshold, high)]


def calibration_chunks(num_images: int, depth: int) -> list[tuple[int, int]]:
    """(start, stop) of the images of each calibrator.collect_data call.

    The histogram calibrators stack the outputs of all session runs of one collect_data call with
    np.asarray, which fails on batches of different sizes ("inhomogeneous shape"): so every chunk
    holds whole CALIB_BATCH batches (about CALIB_IMAGES_PER_DEPTH / depth images), and the images
    that do not fill a last batch go in a call of their own.
    """
    per_chunk = CALIB_BATCH * max(1, CALIB_IMAGES_PER_DEPTH // depth // CALIB_BATCH)
    whole = num_images - num_images % CALIB_BATCH
    chunks = [(start, min(start + per_chunk, whole)) for start in range(0, whole, per_chunk)]
    return chunks + ([(whole, num_images)] if whole < num_images else [])


def calibration_manifest_path(calib_dir: str | os.PathLike[str] | None, meta: Mapping[str, Any],
                              method: str, num_images: int, seed: int,
                              onnx_path: str | os.PathLike[str]) -> Path:
    """calib/resnet<depth>-<checkpoint sha256[:12]>-<method>-n<N>-s<seed>.json in `calib_dir` (default:
    rtk.names.default_calib_dir), where it is written (the ONNX file's sha256 stands in for a model
    without a recorded checkpoint); readable_manifest says where it is read from."""
    model_id = meta.get("checkpoint_sha256") or sha256_file(onnx_path)
    root = Path(calib_dir) if calib_dir is not None else default_calib_dir()
    return root / f"resnet{meta['depth']}-{model_id[:12]}-{method}-n{num_images}-s{seed}.json"


def calibration_for(onnx_path: Path, meta: Mapping[str, Any], cifar: data.Cifar10, path: Path,
                    method: str, num_images: int, seed: int, log: Log) -> dict[str, Any]:
    """The manifest of `path` with ranges for this exact FP32 file: reused when it has them,
    calibrated on its recorded images when the ONNX changed, created when there is none. It is read
    from readable_manifest(path) and written, when it changes, to `path`."""
    onnx_sha = sha256_file(onnx_path)
    checksum = cifar.checksum()
    source = readable_manifest(path)  # the user's calib dir's, else the one shipped with rtk
    train_idx, _ = data.split_indices(len(cifar.train_labels), SPLIT["val_size"], SPLIT["seed"])
    if source.is_file():
        manifest = read_manifest(source)
        expected = {"method": method, "num_images": num_images, "seed": seed}
        found = {key: manifest.get(key) for key in expected}
        if found != expected:
            raise RtkError(f"calibration manifest {source} records {found}, not {expected}; delete it")
        if manifest["data"]["checksum"] != checksum:
            raise RtkError(f"calibration manifest {source} was made from other CIFAR-10 data (checksum "
                           f"{manifest['data']['checksum'][:12]}, this copy {checksum[:12]}); "
                           f"delete it to recalibrate")
        indices = np.asarray(manifest["indices"], dtype=np.int64)
        if len(indices) != num_images or len(np.unique(indices)) != num_images or not np.isin(indices, train_idx).all():
            raise RtkError(f"calibration manifest {source} lists other images than {num_images} distinct ones of the "
                           f"training split; delete it to recalibrate")
        if (manifest["model"].get("onnx_sha256") == onnx_sha and manifest.get("ranges")
                and _same_calibrator(manifest.get("calibrator"), _calibrator_record(method))):
            check_covers(source, manifest, onnx_path)
            log(f"reusing the calibration in {source} ({method}, {len(indices)} images, seed {seed})")
            return manifest
        log(f"{source} was calibrated from another {onnx_path.name} or by another calibrator: "
            f"recalibrating on its {len(indices)} images")
    else:
        indices = data.calibration_indices(cifar.train_labels, train_idx, num_images, seed)
        manifest = {
            "format": MANIFEST_FORMAT,
            "data": {"checksum": checksum, "split": SPLIT, "subset": "training split"},
            "method": method, "num_images": num_images, "seed": seed,
            "class_counts": np.bincount(cifar.train_labels[indices], minlength=data.NUM_CLASSES).tolist(),
            "indices": indices.tolist(),
        }
    images = normalize_uint8_nhwc(cifar.train_images[indices], meta["normalization"])
    log(f"calibrating ({method}) on {len(indices)} CIFAR-10 training images with onnxruntime")
    manifest["model"] = {"depth": meta["depth"], "checkpoint_sha256": meta.get("checkpoint_sha256"),
                         "onnx": onnx_path.name, "onnx_sha256": onnx_sha}
    manifest["calibrator"] = _calibrator_record(method)
    manifest["ranges"] = calibrate(onnx_path, images, method)
    manifest.pop("quantized", None)  # scales of models quantized from other ranges
    manifest.pop("tuned", None)  # and the values tuned from them
    write_manifest(path, manifest)
    log(f"wrote {path}")
    return manifest



def _calibrator_record(method: str) -> dict[str, Any]:
    """What made a manifest's ranges; ranges made otherwise are not reused."""
    spec = METHODS[method]
    record = {"onnxruntime": onnxruntime_version(), "method": spec.calibration_method,
              "options": dict(spec.options), "op_types": list(CALIBRATED_OP_TYPES)}
    if spec.kl_levels is not None:
        record["range_search"] = {"kl_levels": spec.kl_levels, "relu_zeros": "left out"}
    return record


def _same_calibrator(recorded: Any, current: dict[str, Any]) -> bool:
    """Whether ranges recorded by `recorded` are this calibrator's; another onnxruntime release
    running the same method and options counts as the same (a tracked manifest is not rewritten)."""
    return isinstance(recorded, dict) and {k: v for k, v in recorded.items() if k != "onnxruntime"} == \
        {k: v for k, v in current.items() if k != "onnxruntime"}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names no key twice (json keeps the last of two ranges of one tensor, silently)."""
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"{twice[0]!r} is given {keys.count(twice[0])} times")
    return dict(pairs)


def range_problem(name: str, value: Any) -> str | None:
    """Why `value` is not a usable calibrated range of tensor `name`: [low, high], finite in float32
    (the scale onnxruntime derives is float32), low <= high, of non-zero width."""
    if not isinstance(value, list) or len(value) != 2 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"the range of {name} is {value!r}, not [low, high]"
    low, high = (np.float32(v) for v in value)
    with np.errstate(over="ignore"):
        width = high - low
    if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(width)):
        return f"the range of {name}, {value}, is not finite"
    if not width > 0:
        return f"the range of {name}, {value}, {'has low > high' if low > high else 'has no width'}"
    return None


def _manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """What in a manifest's ranges, tuned values, indices and records rtk could not use as read."""
    problems = [problem for name, value in manifest["ranges"].items() if (problem := range_problem(name, value))]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in manifest["indices"]):
        problems.append("indices must be image numbers (integers >= 0)")
    tuned = manifest.get("tuned", {})
    if not isinstance(tuned, dict) or not isinstance(manifest.get("quantized", {}), dict):
        problems.append("tuned and quantized must be objects")
    else:
        for target, record in tuned.items():  # each flavour's tuned values (rtk.quantize.tuning)
            ranges, shifts = (record.get("ranges"), record.get("bias_shifts")) if isinstance(record, dict) else (None, None)
            if not isinstance(ranges, dict) or not isinstance(shifts, dict) or not all(
                    isinstance(v, list) and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v)
                    for v in shifts.values()):
                problems.append(f"tuned.{target} needs ranges and bias_shifts (lists of finite numbers)")
            else:
                problems += [f"tuned.{target}: {problem}" for name, value in ranges.items()
                             if (problem := range_problem(name, value))]
    return problems


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`, checked for what rtk reads from it: a damaged or hand-edited one is one
    RtkError naming the file (it is reused by every later run until it is fixed or deleted)."""
    try:
        manifest = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except (OSError, ValueError) as exc:
        raise RtkError(f"cannot read calibration manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise RtkError(f"{path} is not an rtk calibration manifest (format {MANIFEST_FORMAT})")
    fields = {"model": dict, "data": dict, "indices": list, "ranges": dict}
    broken = [key for key, kind in fields.items() if not isinstance(manifest.get(key), kind)]
    if broken or "checksum" not in manifest["data"]:
        raise RtkError(f"calibration manifest {path} is incomplete ({', '.join(broken) or 'data.checksum'} "
                       "missing or malformed); delete it to recalibrate")
    problems = _manifest_problems(manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RtkError(f"calibration manifest {path} cannot be used: {problems[0]}{more}; fix it, or delete it "
                       "to recalibrate")
    return manifest


def check_covers(path: Path, manifest: Mapping[str, Any], onnx_path: Path) -> None:
    """RtkError naming the manifest at `path` unless its ranges are exactly one per tensor the
    calibrator measures in the FP32 model at `onnx_path` (quantize_static needs every one)."""
    graph = load_onnx(onnx_path, load_weights=False).graph
    weights = {init.name for init in graph.initializer}
    wanted = {name for node in graph.node if node.op_type in CALIBRATED_OP_TYPES
              for name in (*node.input, *node.output) if name and name not in weights}
    missing, extra = sorted(wanted - set(manifest["ranges"])), sorted(set(manifest["ranges"]) - wanted)
    if missing or extra:
        what = f"no range for {missing[0]}" if missing else f"a range for {extra[0]}, which it does not calibrate"
        raise RtkError(f"calibration manifest {path} does not fit {onnx_path.name}: it has {what} "
                       f"({len(missing)} missing, {len(extra)} extra); delete it to recalibrate")


# The order a reviewer reads a manifest in; the long list of image indices goes last.
MANIFEST_KEYS = ("format", "model", "data", "method", "num_images", "seed", "calibrator", "class_counts",
                 "ranges", "tuned", "quantized", "indices")


def readable_manifest(path: Path) -> Path:
    """Where the manifest that belongs at `path` (in the user's calib dir) is read from: `path` when
    it exists, else the manifest of that name shipped with rtk (rtk.names.shipped_calib_dir: those
    of the shipped weights) when there is one, else `path` (none yet)."""
    shipped = shipped_calib_dir()
    if path.is_file() or shipped is None or not (shipped / path.name).is_file():
        return path
    return shipped / path.name


def manifest_named(name: str, calib_dir: str | os.PathLike[str] | None) -> Path:
    """Where the manifest an INT8 file names (its rtk.calibration.manifest) is read from."""
    return readable_manifest((Path(calib_dir) if calib_dir is not None else default_calib_dir()) / name)


def write_manifest(path: Path, manifest: Mapping[str, Any], source: Path | None = None) -> None:
    """Write the manifest to `path`, unless the file it was read from (`source`, default `path`)
    already says exactly this: a reused manifest (tracked in git, shipped in calib/) is left as it
    is, mode and bytes, and none is copied into the user's calib dir."""
    ordered = {key: manifest[key] for key in MANIFEST_KEYS if key in manifest}
    text = json.dumps(ordered, indent=1) + "\n"
    try:
        if (source or path).read_text() == text:
            return
    except OSError:
        pass  # none yet, or unreadable: written
    write_text_atomic(path, text)


def tensors_data(quantization: Any, ranges: Mapping[str, list[float]], method: str) -> Any:
    """The manifest's ranges as onnxruntime's TensorsData, for quantize_static's calibration cache."""
    method_member = getattr(quantization.CalibrationMethod, METHODS[method].calibration_method)
    return quantization.TensorsData(method_member, {
        name: quantization.TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
        for name, (low, high) in ranges.items()})




def quantization_module() -> Any:
    require("onnxruntime", min_version=MIN_ONNXRUNTIME)
    return require("onnxruntime.quantization")


def onnxruntime_version() -> str:
    return str(require("onnxruntime").__version__)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization while it runs: its calibrators print progress to stdout
    (where rtk prints results) and it logs a "consider pre-processing" warning on every call;
    rtk logs its own one-line messages instead. Errors still raise."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)
