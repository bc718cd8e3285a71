"""Bring your own weights: a CIFAR ResNet trained elsewhere -> an rtk checkpoint (`rtk import`).

    SOURCE (.th / .pt / .pth)
      read      torch.load(weights_only=True, map_location="cpu"): tensors, numbers, strings and
                containers only, mapped to the CPU whatever device saved them
      unwrap    {"state_dict": ...} / {"model": ...} wrappers; "module." (DataParallel, DDP) and
                "_orig_mod." (torch.compile) key prefixes
      refuse    option-B projection shortcuts (1x1 convolutions); another depth (3x3 convs = depth - 1)
      map       onto rtk.model.ResNet(depth) by a known key layout (LAYOUTS: akamaster's
                pytorch_resnet_cifar10, rtk's own), else by structure: the order and shape of every
                tensor, refusing anything ambiguous, missing or extra and naming the first that does not fit
      check     test accuracy on CIFAR-10 when the data is there, with a warning near chance
      write     rtk.checkpoint.save: the normalization given, CIFAR-10 classes, the source file's
                sha256 and layout in the provenance, the split marked unknown

Only the weights are taken: the architecture is rtk's (option-A shortcuts, zero-padding half the new
channels before and half after, as akamaster's `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4,
planes//4))` does), so an implementation that computes something else maps without error and shows
as low accuracy, which is what the check is for.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtk import checkpoint, data
from rtk.errors import RtkError
from rtk.fileio import check_output, sha256_file
from rtk.log import Log, info
from rtk.model import ResNet, blocks_per_stage, count_parameters
from rtk.names import IMPORT_FORMATS
from rtk.preprocess import CLASSES, MEAN, STD, normalization_metadata, normalize_uint8_nhwc
from rtk.stats import accuracy_pct


def _akamaster_name(rtk_key: str) -> str:
    """rtk's key -> akamaster's: stage<i>. -> layer<i>., fc. -> linear. (the rest is the same)."""
    return re.sub(r"^fc\.", "linear.", re.sub(r"^stage(\d)\.", r"layer\1.", rtk_key))


# Known key layouts: the name each layout gives rtk's tensor `key`.
LAYOUTS: dict[str, Callable[[str], str]] = {"rtk": lambda key: key, "akamaster": _akamaster_name}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")  # where training scripts put the weights
PREFIXES = ("module.", "_orig_mod.")
BN_ROLES = ("weight", "bias", "running_mean", "running_var")
COUNTER = "num_batches_tracked"  # a BN buffer inference never reads; 0 where an old file lacks it
NEAR_CHANCE = 2.0  # test accuracy under NEAR_CHANCE x chance (20% for 10 classes) is warned about
EVAL_BATCH = 500


@dataclass(frozen=True)
class Imported:
    """What `import_weights` wrote and how it read the source."""

    path: Path
    source: Path
    sha256: str  # of the source file
    layout: str  # "akamaster" | "rtk" | "state-dict" (mapped by structure)
    container: str  # where the state dict sat in the file: "state_dict", "model", ... or "top level"
    prefixes: tuple[str, ...]  # key prefixes removed, outermost first
    depth: int
    parameters: int
    normalization: dict[str, Any]
    test_acc: float | None  # %, on `test_images` CIFAR-10 test images; None without the data
    test_images: int


# ---------------------------------------------------------------------------------------------
# Reading the file


def read_state_dict(path: Path, depth: int | None = None) -> tuple[dict[str, torch.Tensor], str, tuple[str, ...]]:
    """(state dict with unwrapped names, where it sat in the file, prefixes removed). A file that
    declares more data than a ResNet-`depth` checkpoint holds is refused before it is read."""
    obj = checkpoint.load_weights_only(path, what="weights file", depth=depth)
    if isinstance(obj, Mapping) and obj.get("format") == checkpoint.FORMAT:
        raise RtkError(f"{path} is already an rtk checkpoint: use it as it is (e.g. rtk export --checkpoint {path})")
    container: list[str] = []
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None and any(isinstance(v, torch.Tensor) for v in obj.values()):
            others = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
            raise RtkError(f"{path} holds a state dict with {len(others)} entries that are not tensors: "
                           f"{others[0]!r} is {_kind(obj[others[0]])} (a state dict maps names to tensors only)")
        if key is None:
            keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise RtkError(f"{path} holds no state dict (a dict of tensors, at the top or under "
                           f"{', '.join(map(repr, WRAPPER_KEYS))}); its keys: {keys}")
        container.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise RtkError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = dict(obj)
    removed: list[str] = []
    while (prefix := next((p for p in PREFIXES if all(k.startswith(p) for k in tensors)), None)) is not None:
        tensors = {key[len(prefix):]: value for key, value in tensors.items()}
        removed.append(prefix)
    return tensors, ".".join(container) or "top level", tuple(removed)


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}" + (f" ({repr(value)[:60]})" if isinstance(value, (int, float, str)) else "")


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _shape(shape: torch.Size) -> str:
    return str(list(shape))  # "[16, 3, 3, 3]"


def _is_running_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", COUNTER))


def _parameters(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for k, t in tensors.items() if t.is_floating_point() and not _is_running_stat(k))


# ---------------------------------------------------------------------------------------------
# What the file holds: refusals before any mapping


def check_architecture(path: Path, tensors: Mapping[str, torch.Tensor], depth: int) -> None:
    """Refuse option-B shortcuts and another depth, with the reason (rtk maps option A only)."""
    projections = [k for k, t in tensors.items() if t.dim() == 4 and tuple(t.shape[2:]) == (1, 1)]
    if projections:
        raise RtkError(f"{path} is an option-B ResNet: it has 1x1 projection shortcuts ({projections[0]} "
                       f"{_shape(tensors[projections[0]].shape)}, {len(projections)} in all; {_parameters(tensors):,} "
                       f"parameters, where an option-B ResNet-20 has 272,474 and rtk's 269,722). rtk's ResNets "
                       f"use option A (parameter-free zero-padding shortcuts): these weights have no place in them")
    convs = sum(1 for t in tensors.values() if t.dim() == 4 and tuple(t.shape[2:]) == (3, 3))
    if convs != depth - 1:  # the stem plus two per block: 1 + 2 * 3n = depth - 1
        fits = convs + 1
        if fits < 8 or (fits - 2) % 6:
            raise RtkError(f"{path} has {convs} 3x3 convolutions, where ResNet-{depth} has {depth - 1}; "
                           f"no CIFAR ResNet (depth 6n+2) has {convs}")
        raise RtkError(f"{path} holds a ResNet-{fits} ({convs} 3x3 convolutions), not ResNet-{depth}: "
                       f"pass --depth {fits}")


# ---------------------------------------------------------------------------------------------
# Mapping onto rtk's names


def _target(depth: int) -> dict[str, torch.Size]:
    """rtk's state dict names and shapes, in module order (built on the meta device: no weights)."""
    with torch.device("meta"):
        return {key: value.shape for key, value in ResNet(depth).state_dict().items()}


def by_layout(path: Path, tensors: Mapping[str, torch.Tensor], depth: int, layout: str,
              *, strict: bool) -> dict[str, torch.Tensor] | None:
    """rtk-named tensors from a file in the key layout `layout`. A file with other names is None,
    or with `strict` (the layout was asked for) refused naming the first key that differs."""
    target = _target(depth)
    name_of = LAYOUTS[layout]
    wanted = {name_of(key): key for key in target}
    missing = [name for name, key in wanted.items() if name not in tensors and not key.endswith(COUNTER)]
    extra = [name for name in tensors if name not in wanted]
    if missing or extra:
        if not strict:
            return None
        what = f"has no {missing[0]}" if missing else f"has {extra[0]}, which ResNet-{depth} does not"
        raise RtkError(f"{path} is not in the {layout} key layout: it {what} "
                       f"({len(missing)} missing, {len(extra)} extra); try --format auto")
    mapped = {}
    for name, key in wanted.items():
        if name in tensors:
            mapped[key] = _fit(path, name, tensors[name], key, target[key])
    return mapped


def by_structure(path: Path, tensors: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """rtk-named tensors from a state dict with any names, by the order and shape of every tensor.

    The file's tensors (BN batch counters aside) must follow rtk's module order one to one: stem
    conv, BN, then per block conv1, bn1, conv2, bn2, then the classifier's weight and bias. A name
    ending in a parameter's role (weight, bias, running_mean, running_var) must match rtk's role
    there; a BN vector without such a name is ambiguous (its four tensors share one shape).
    """
    target = _target(depth)
    source = [(k, t) for k, t in tensors.items() if not k.endswith(COUNTER)]
    wanted = [(k, s) for k, s in target.items() if not k.endswith(COUNTER)]
    _refuse_text_order(path, [k for k, _ in source])
    mapped: dict[str, torch.Tensor] = {}
    prefix_of: dict[str, str] = {}  # rtk's BN module -> the file's, for its batch counter
    for index, (key, shape) in enumerate(wanted):
        if index == len(source):
            raise RtkError(f"{path} does not fit ResNet-{depth} by structure: it ends after "
                           f"{len(source)} tensors, with nothing for rtk's {key} {_shape(shape)} "
                           f"({len(wanted) - index} missing)")
        name, tensor = source[index]
        module, role = key.rsplit(".", 1)
        name_role = name.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(shape) or (name_role in BN_ROLES and name_role != role):
            raise RtkError(f"{path} does not fit ResNet-{depth} by structure: its tensor #{index + 1}, "
                           f"{name} {_shape(tensor.shape)}, is where rtk has {key} {_shape(shape)}")
        if role in BN_ROLES and tensor.dim() == 1 and name_role not in BN_ROLES:
            raise RtkError(f"{path} is ambiguous by structure: {name} {_shape(tensor.shape)} sits where rtk has "
                           f"{key}, but its name does not say whether it is a BN weight, bias, "
                           f"running_mean or running_var, which share that shape")
        mapped[key] = _fit(path, name, tensor, key, shape)
        prefix_of[module] = name.rsplit(".", 1)[0] if "." in name else ""
    if len(source) > len(wanted):
        name, tensor = source[len(wanted)]
        raise RtkError(f"{path} does not fit ResNet-{depth} by structure: {name} {_shape(tensor.shape)} "
                       f"comes after rtk's last tensor, {wanted[-1][0]} ({len(source) - len(wanted)} extra)")
    for key in target:
        if key.endswith(COUNTER):
            counter = f"{prefix_of[key.rsplit('.', 1)[0]]}.{COUNTER}"
            if counter in tensors:
                mapped[key] = _fit(path, counter, tensors[counter], key, target[key])
    return mapped


def _refuse_text_order(path: Path, names: list[str]) -> None:
    """Modules are registered in index order (block 2 before block 10); a file whose names were
    sorted as text (layer1.10 before layer1.2) lost that order, and blocks of one shape would swap."""
    for before, after in itertools.pairwise(names):
        for a, b in zip(before.split("."), after.split(".")):
            if a != b:
                if a.isdigit() and b.isdigit() and int(a) > int(b):
                    raise RtkError(f"{path} is ambiguous by structure: {before} comes before {after}, so the "
                                   f"tensors are not in the model's order (sorted by name as text?) and "
                                   f"blocks of the same shape cannot be told apart")
                break


def _fit(path: Path, name: str, tensor: torch.Tensor, key: str, shape: torch.Size) -> torch.Tensor:
    """The file's `name` as rtk's `key`: same shape, float32 (an int64 batch counter), finite."""
    if tuple(tensor.shape) != tuple(shape):
        raise RtkError(f"{path}: {name} has shape {_shape(tensor.shape)}, where rtk's {key} needs {_shape(shape)}")
    if key.endswith(COUNTER):
        return tensor.to(torch.int64)
    if not tensor.is_floating_point():
        raise RtkError(f"{path}: {name} holds {tensor.dtype} values, where rtk's {key} needs floats")
    values = tensor.to(torch.float32)  # any float dtype (float8 too), as rtk holds it
    if checkpoint.non_finite_tensors({name: values}):
        raise RtkError(f"{path}: {name} holds NaN or infinite values"
                       + (" as float32" if tensor.dtype == torch.float64 else ""))
    if key.endswith("running_var") and checkpoint.negative_variances({key: values}):
        raise RtkError(f"{path}: {name} is a BN running variance with values below 0 ({float(values.min()):g}): "
                       "BN divides by its square root, so every logit would be NaN")
    return values


def map_weights(path: Path, tensors: Mapping[str, torch.Tensor], depth: int,
                fmt: str = "auto") -> tuple[ResNet, str]:
    """(ResNet-`depth` holding the file's weights, in eval mode; the layout they were read in)."""
    if fmt not in IMPORT_FORMATS:
        raise RtkError(f"unknown format {fmt!r}; choose one of {', '.join(IMPORT_FORMATS)}")
    check_architecture(path, tensors, depth)
    if fmt == "auto":
        layouts = list(LAYOUTS)
    else:
        layouts = [fmt] if fmt in LAYOUTS else []
    mapped, layout = None, "state-dict"
    for name in layouts:
        mapped = by_layout(path, tensors, depth, name, strict=fmt != "auto")
        if mapped is not None:
            layout = name
            break
    if mapped is None:
        mapped = by_structure(path, tensors, depth)
    for key in _target(depth):  # batch counters an old file (torch < 0.4.1) does not have
        mapped.setdefault(key, torch.zeros((), dtype=torch.int64))
    model = ResNet(depth)
    model.load_state_dict(mapped, strict=True)
    return model.eval(), layout


# ---------------------------------------------------------------------------------------------
# The stage


def top1_percent(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                  normalization: Mapping[str, Any]) -> float:
    """Top-1 % of `model` on uint8 [N, 32, 32, 3] images, preprocessed with `normalization`."""
    with torch.inference_mode():
        logits = np.concatenate([
            model(torch.from_numpy(normalize_uint8_nhwc(images[start:start + EVAL_BATCH], dict(normalization)))).numpy()
            for start in range(0, len(images), EVAL_BATCH)])
    return accuracy_pct(logits, labels, "the imported weights")


def import_weights(source: str | os.PathLike[str], out: str | os.PathLike[str], *, depth: int,
                   fmt: str = "auto", mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
                   data_dir: str | os.PathLike[str] | None = None, overwrite: bool = False,
                   log: Log = info) -> Imported:
    """Map the weights in `source` onto rtk's ResNet-`depth` and write them to `out` as an rtk checkpoint.

    `mean` / `std` are the per-channel statistics (on the [0, 1] scale, RGB) the weights were trained
    with. `out` is never replaced unless `overwrite`. The CIFAR-10 test set, when found, gives the
    accuracy stored in the checkpoint's metrics.
    """
    source, out = Path(source), check_output(out)
    blocks_per_stage(depth)
    normalization = normalization_metadata(mean, std)
    if os.path.lexists(out) and not overwrite:
        raise RtkError(f"{out} exists: pass --force to replace it, or --out PATH to write elsewhere")
    tensors, container, prefixes = read_state_dict(source, depth)
    model, layout = map_weights(source, tensors, depth, fmt)
    how = "by structure (order and shape of every tensor)" if layout == "state-dict" else f"in the {layout} key layout"
    log(f"{source}: {len(tensors)} tensors under {container}"
        + (f", prefix {' + '.join(map(repr, prefixes))} removed" if prefixes else "")
        + f"; mapped onto ResNet-{depth} {how}")

    test_acc, test_images = _check_on_test_set(model, normalization, data_dir, log)
    sha = sha256_file(source)
    checkpoint.save(
        out, model, normalization=normalization, classes=CLASSES,
        split={"unknown": "trained outside rtk: which CIFAR-10 images these weights saw is not recorded"},
        recipe={"unknown": "trained outside rtk (imported with rtk import)"},
        metrics={"val_acc": None, "test_acc": test_acc, "test_images": test_images},
        source={"file": source.name, "sha256": sha, "format": layout, "container": container,
                "prefixes_removed": list(prefixes)})
    log(f"wrote {out}")
    return Imported(out, source, sha, layout, container, prefixes, depth, count_parameters(model),
                    normalization, test_acc, test_images)


def _check_on_test_set(model: torch.nn.Module, normalization: Mapping[str, Any],
                       data_dir: str | os.PathLike[str] | None, log: Log) -> tuple[float | None, int]:
    """(test accuracy %, images), or (None, 0) when no CIFAR-10 is found; a warning near chance."""
    test_set = data.test_set_if_present(data_dir)
    if test_set is None:
        log("no CIFAR-10 found (see `rtk data download`, --data-dir or RTK_DATA_DIR): the imported "
            "weights were not checked on real images")
        return None, 0
    images, labels = test_set
    acc = top1_percent(model, images, labels, normalization)
    # The test set, not rtk's validation split: weights trained elsewhere may have seen those images.
    log(f"test accuracy {acc:.2f}% on the {len(images):,} CIFAR-10 test images (the test set, not rtk's "
        f"validation split: these weights were trained outside rtk and may have seen its validation images)")
    chance = 100.0 / len(CLASSES)
    if acc < NEAR_CHANCE * chance:
        log(f"warning: {acc:.2f}% is near chance ({chance:.0f}%): the weights map onto ResNet-{model.depth} "
            f"but do not compute what they were trained to. Usual causes: another normalization (pass the "
            f"training mean/std with --mean R,G,B --std R,G,B, on the [0, 1] scale), another channel "
            f"order (BGR-trained weights), or a model whose option-A shortcut pads the new channels "
            f"only on one side (rtk pads half before and half after)")
    return acc, len(images)
