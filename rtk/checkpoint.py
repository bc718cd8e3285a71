"""Self-describing checkpoints: `load(path)` rebuilds the model from the file alone.

The file is a plain dict (nanoGPT style) that torch.load reads with weights_only=True, so loading a
checkpoint never runs code from it:

    format        "rtk.checkpoint/1"
    model         {"arch": "resnet_cifar_option_a", "depth": 20, "num_classes": 10}
    state_dict    weights of the unwrapped module (no "module." / "_orig_mod." prefixes)
    normalization rtk.preprocess.normalization_metadata()
    classes       class names, index order
    split         {"seed": 0, "val_size": 5000}
    recipe        the training options, as a dict
    metrics       {"val_acc": ..., "test_acc": ..., "epochs": ..., "steps": ...}
    provenance    rtk version, git revision, package versions
    train_state   optimizer / schedule / RNG state for --resume (absent in shipped weights)
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from rtk.errors import RtkError
from rtk.fileio import atomic_path, provenance
from rtk.model import ResNet
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
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically; returns its path."""
    net = unwrap(model)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model": {"arch": ARCH, "depth": net.depth, "num_classes": net.num_classes},
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "normalization": normalization_metadata(),
        "classes": list(CLASSES),
        "split": split,
        "recipe": recipe,
        "metrics": metrics,
        "provenance": provenance("torch", "numpy"),
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict, checked for format; a clear RtkError for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise RtkError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
        raise RtkError(f"{path} is not a readable rtk checkpoint (corrupt or truncated?): "
                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RtkError(f"{path} is not an rtk checkpoint (format {found!r}, expected {FORMAT!r})")
    return ckpt


def build_model(ckpt: dict[str, Any]) -> ResNet:
    """The network a checkpoint dict describes, weights loaded with strict=True, in eval mode."""
    spec = ckpt["model"]
    if spec.get("arch") != ARCH:
        raise RtkError(f"unknown architecture {spec.get('arch')!r} in checkpoint")
    model = ResNet(spec["depth"], spec["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise RtkError(f"checkpoint weights do not fit ResNet-{spec['depth']}: {exc}") from exc
    return model.eval()


def load(path: str | os.PathLike[str], depth: int | None = None) -> tuple[ResNet, dict[str, Any]]:
    """(model, checkpoint dict). With `depth`, a checkpoint of another depth is refused."""
    ckpt = read(path)
    if depth is not None and ckpt["model"]["depth"] != depth:
        raise RtkError(f"{path} holds ResNet-{ckpt['model']['depth']}, not ResNet-{depth} "
                       f"(drop --depth or pass the matching checkpoint)")
    return build_model(ckpt), ckpt
