"""Self-describing checkpoints: `load(path)` rebuilds the model from the file alone.

The file is a plain dict (nanoGPT style) that torch.load reads with weights_only=True, so loading a
checkpoint never runs code from it:

    format        "rtk.checkpoint/1"
    model         {"arch": "resnet_cifar_option_a", "depth": 20, "num_classes": 10}
    state_dict    weights of the unwrapped module (no "module." / "_orig_mod." prefixes)
    normalization rtk.preprocess.normalization_metadata(mean, std): rtk's CIFAR-10 statistics, or
                  those an imported model was trained with
    classes       class names, index order
    split         {"seed": 0, "val_size": 5000}; {"unknown": ...} for weights trained elsewhere
    recipe        the training options, as a dict
    metrics       {"val_acc": ..., "test_acc": ..., "epochs": ..., "steps": ...}
    provenance    rtk version, git revision, package versions; for imported weights also
                  "source": the file's name, sha256 and key layout (rtk.importer)
    train_state   optimizer / schedule / RNG state for --resume (absent in shipped weights)
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rtk.errors import RtkError
from rtk.fileio import atomic_path, provenance
from rtk.model import ResNet, parameter_count
from rtk.names import MAX_DEPTH, depth_problem
from rtk.preprocess import CLASSES, normalization_metadata

FORMAT = "rtk.checkpoint/1"
ARCH = "resnet_cifar_option_a"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain ResNet inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def save(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    split: dict[str, Any],
    recipe: dict[str, Any],
    metrics: dict[str, Any],
    normalization: Mapping[str, Any] | None = None,
    classes: Sequence[str] = CLASSES,
    source: Mapping[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically; returns its path.

    `normalization` (default: rtk's, normalization_metadata()) and `classes` are what the weights
    expect and predict; `source` describes the file imported weights came from.
    """
    net = unwrap(model)
    if len(classes) != net.num_classes:
        raise RtkError(f"{len(classes)} class names for a model of {net.num_classes} classes")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model": {"arch": ARCH, "depth": net.depth, "num_classes": net.num_classes},
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "normalization": dict(normalization or normalization_metadata()),
        "classes": list(classes),
        "split": split,
        "recipe": recipe,
        "metrics": metrics,
        "provenance": provenance("torch", "numpy"),
    }
    if source is not None:
        payload["provenance"]["source"] = dict(source)
    if train_state is not None:
        payload["train_state"] = train_state
    # Through a Python file, so a failed write (a full disk) is the OSError that atomic_path reports
    # in one line; given a path, torch writes in C++ and says only "basic_ios::clear: iostream error".
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
    return Path(path)


# The most a CIFAR ResNet checkpoint holds: 32 bytes a parameter (its weights in float64 at most, with
# optimizer state of up to three times their size: momentum, Adam's two moments) and 16 MiB for the
# rest (the pickle, RNG states, metrics). Each record a zip-format torch file declares is held to it
# before torch inflates any: torch reads a whole record before it compares its size with the tensor's.
BYTES_PER_PARAMETER = 32
OTHER_BYTES = 16 << 20
_STORAGE_RECORD = re.compile(r"(^|/)data/\d+$")


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a loaded structure of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _check_declared_sizes(path: Path, depth: int | None) -> None:
    """RtkError, before anything is inflated, for a zip-format torch file whose records declare more
    bytes than its tensors hold, or whose tensors hold more than a ResNet-`depth` checkpoint can (the
    depth the file records, where none is given; rtk.names.MAX_DEPTH where it records none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except zipfile.BadZipFile:
        return  # torch's legacy format holds its storages as they are (or it is no torch file: torch says so)
    big = next((r for r in records if not _STORAGE_RECORD.search(r.filename) and r.file_size > OTHER_BYTES), None)
    if big is not None:
        raise RtkError(f"{path} declares a {big.file_size:,}-byte {big.filename}, more than a checkpoint's pickle "
                       "holds: refused before inflating it")
    structure = torch.load(path, map_location="meta", weights_only=True)  # the pickle alone: tensors on "meta"
    held = sum(t.untyped_storage().nbytes() for t in _tensors(structure))
    declared = sum(r.file_size for r in records if _STORAGE_RECORD.search(r.filename))
    if declared > held:
        raise RtkError(f"{path} declares {declared:,} bytes of tensor data where its tensors hold {held:,} (a zip "
                       "bomb?): refused before inflating it")
    if depth is None and isinstance(structure, Mapping) and isinstance(structure.get("model"), Mapping):
        recorded = structure["model"].get("depth")
        depth = recorded if not depth_problem(recorded) else None
    limit = BYTES_PER_PARAMETER * parameter_count(depth or MAX_DEPTH) + OTHER_BYTES
    if held > limit:
        raise RtkError(f"{path} holds {held:,} bytes of tensors, more than any ResNet-{depth or MAX_DEPTH} "
                       f"checkpoint ({limit:,}): refused before reading them")


# torch's restricted unpickler starts every refusal with "Weights only load failed" and names what
# it refused on a later line: "Unsupported global: GLOBAL argparse.Namespace was not an allowed
# global ..." or "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_weights_only(path: str | os.PathLike[str], what: str = "checkpoint", depth: int | None = None) -> Any:
    """What torch.save wrote to `path`, read with weights_only=True and every storage mapped to the
    CPU, whatever device it was saved from. One RtkError for a missing file, a corrupt or truncated
    one, one that holds pickled code or Python objects (which is refused, never unpickled), and one
    that declares more data than a ResNet-`depth` checkpoint holds (_check_declared_sizes)."""
    path = Path(path)
    if not path.is_file():  # a FIFO would block the read
        raise RtkError(f"{path} is not a regular file" if path.exists() else f"{what} not found: {path}")
    try:
        _check_declared_sizes(path, depth)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("Weights only load failed"):  # never repeat torch's advice to turn it off
            found = _REFUSED_GLOBAL.search(str(exc))
            raise RtkError(f"{path} contains pickled code or Python objects "
                           f"({found.group(1) if found else 'not tensors or plain data'}) that rtk does "
                           f"not load: it reads only tensors, numbers, strings and containers of them, so "
                           f"nothing in a file runs; save the weights alone where the file was made, "
                           f"torch.save(model.state_dict(), PATH), and use that file") from exc
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RtkError(f"{path} is not a readable {what} (corrupt or truncated?): {reason}") from exc
    except (zipfile.BadZipFile, RuntimeError, EOFError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RtkError(f"{path} is not a readable {what} (corrupt or truncated?): {reason}") from exc
    except OSError as exc:
        raise RtkError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _check_fields(path: Path, ckpt: dict[str, Any]) -> None:
    """Every field the readers use is there with its type, so a forged or damaged dict is refused
    here in one line instead of failing later with a KeyError."""
    problems = [f"{key} is missing or not {kind}" for key, kind, ok in (
        ("model", "a dict", isinstance(ckpt.get("model"), dict)),
        ("state_dict", "a dict of tensors", isinstance(ckpt.get("state_dict"), dict)
         and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["state_dict"].items())),
        ("normalization", "a dict", isinstance(ckpt.get("normalization"), dict)),
        ("classes", "a list of names", isinstance(ckpt.get("classes"), list)
         and all(isinstance(c, str) for c in ckpt["classes"])),
    ) if not ok]
    for key in ("split", "recipe", "metrics", "provenance", "train_state"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            problems.append(f"{key} is not a dict")
    if not problems:
        spec = ckpt["model"]
        depth, num_classes = spec.get("depth"), spec.get("num_classes")
        if spec.get("arch") != ARCH:
            problems.append(f"model.arch is {spec.get('arch')!r}, not {ARCH!r}")
        if depth_problem(depth):
            problems.append(f"model.{depth_problem(depth)}")
        if not isinstance(num_classes, int) or num_classes != len(ckpt["classes"]):
            problems.append(f"model.num_classes is {num_classes!r} for {len(ckpt['classes'])} class names")
        if not {"mean", "std", "scale"} <= set(ckpt["normalization"]):
            problems.append("normalization lacks mean, std or scale")
    if "train_state" in ckpt and not problems:
        state = ckpt["train_state"]
        if not isinstance(state.get("step"), int) or not isinstance(state.get("optimizer"), dict):
            problems.append("train_state lacks its step or optimizer state")
    if problems:
        raise RtkError(f"{path} is not a complete rtk checkpoint: {'; '.join(problems)}")


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict, checked for format and fields; a clear RtkError for a missing, corrupt,
    forged or incomplete file, or one that declares more data than the ResNet it records holds."""
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RtkError(f"{path} is not an rtk checkpoint (format {found!r}, expected {FORMAT!r}); weights "
                       f"trained elsewhere can be imported: rtk import {path} --depth N")
    _check_fields(path, ckpt)
    return ckpt


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity (a diverged run's weights). Read in
    float64, which holds every float8/16/32 value exactly (torch.isfinite has no float8 kernel)."""
    return [name for name, t in state_dict.items()
            if t.is_floating_point() and not torch.isfinite(t.to(torch.float64)).all()]


def negative_variances(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the BN running_var tensors with an entry below 0: BN divides by sqrt(var + eps), so
    every logit after one is NaN."""
    return [name for name, t in state_dict.items()
            if name.endswith("running_var") and t.is_floating_point() and bool((t.to(torch.float64) < 0).any())]


def build_model(ckpt: dict[str, Any]) -> ResNet:
    """The network a checkpoint dict describes, weights loaded with strict=True, in eval mode.
    Weights with NaN or infinity are refused: nothing built from them predicts anything."""
    spec = ckpt["model"]
    if spec.get("arch") != ARCH:
        raise RtkError(f"unknown architecture {spec.get('arch')!r} in checkpoint")
    bad = non_finite_tensors(ckpt["state_dict"])
    if bad:
        raise RtkError(f"the checkpoint's weights hold NaN or infinity in {len(bad)} tensors ({bad[0]}, ...): "
                       "the training diverged; train again with a lower --lr")
    negative = negative_variances(ckpt["state_dict"])
    if negative:
        raise RtkError(f"the checkpoint's BN statistics are not variances: {negative[0]} holds values below 0 "
                       f"({len(negative)} tensors in all); every logit would be NaN")
    model = ResNet(spec["depth"], spec["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise RtkError(f"checkpoint weights do not fit ResNet-{spec['depth']}: "
                       + " ".join(line.strip() for line in str(exc).splitlines())) from exc
    return model.eval()


def load(path: str | os.PathLike[str], depth: int | None = None) -> tuple[ResNet, dict[str, Any]]:
    """(model, checkpoint dict). With `depth`, a checkpoint of another depth is refused."""
    ckpt = read(path)
    if depth is not None and ckpt["model"]["depth"] != depth:
        raise RtkError(f"{path} holds ResNet-{ckpt['model']['depth']}, not ResNet-{depth} "
                       f"(drop --depth or pass the matching checkpoint)")
    return build_model(ckpt), ckpt
