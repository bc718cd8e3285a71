"""A training run's settings: TrainConfig (stored in the checkpoint as its recipe), the named recipes,
and the learning-rate schedules."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rtk.errors import RtkError
from rtk.limits import VALIDATION_IMAGES

SCHEDULES = ("paper", "cosine", "onecycle")
PAPER_ITERATIONS = 64_000  # the paper stops at 64k iterations of batch 128 (~182 epochs of 45k)
PAPER_MILESTONES = (0.5, 0.75)  # lr / 10 at 32k and 48k of 64k
# The paper's ResNet-110 note: lr 0.01, a tenth of 0.1, for the first ~400 iterations of batch 128, "until the
# training error is below 80%", then back to 0.1. rtk holds every schedule at a tenth of its lr for the same
# number of images (51,200: 400 steps of batch 128, 100 of the fast recipe's 512) at depth >= 110.
WARMUP_DEPTH = 110
PAPER_WARMUP_IMAGES = 400 * 128
ONECYCLE_WARMUP = 0.2  # fraction of the run spent rising linearly to the peak lr


@dataclass
class TrainConfig:
    """Every option of a run; stored in the checkpoint as its recipe."""

    depth: int = 20
    recipe: str = "paper"
    epochs: float | None = None  # one of epochs / iterations; neither: the paper's 64k iterations
    iterations: int | None = None
    batch_size: int = 128  # global batch, images
    lr: float = 0.1  # peak lr for onecycle
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "paper"
    seed: int = 0
    split_seed: int = 0
    val_size: int = VALIDATION_IMAGES
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: str = "off"  # torch.compile mode for training steps: off | default | reduce-overhead | max-autotune
    channels_last: bool | None = None  # None: on for CUDA
    out_dir: str = ""
    data_dir: str | None = None
    eval_batch_size: int = 1000


# Options that say only where and how fast a run goes: a resumed run may change them. Every other
# option shapes the trajectory (the steps, their order, their lr), so a resume must keep it.
PLACEMENT_OPTIONS = frozenset({"device", "compile", "channels_last", "eval_batch_size", "out_dir", "data_dir"})


def resume_conflicts(recipe: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """How `options` (TrainConfig fields) contradict the recipe a run was started with."""
    return [f"--{name.replace('_', '-')} {value} differs from the run's {recipe[name]}"
            for name, value in options.items()
            if name not in PLACEMENT_OPTIONS and name in recipe and value != recipe[name]]


def resumed_config(recipe: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """The config a resumed run continues with: its own `recipe` (from its checkpoint), with the
    options the user `given` applied; RtkError when one of those contradicts the run."""
    conflicts = resume_conflicts(recipe, given)
    if conflicts:
        raise RtkError("--resume continues a run as it was started: " + "; ".join(conflicts)
                       + " (drop them, or start anew with --overwrite)")
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in recipe.items() if k in names}, **given})


RECIPES: dict[str, dict[str, Any]] = {
    # He et al. 2016, section 4.2.
    "paper": {"batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False,
              "schedule": "paper"},
    # GPU-resident one-cycle run: 92.29% in 128 s on an H100 over 150 epochs in a probe
    # (REFERENCE.md section 4).
    "fast": {"batch_size": 512, "lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
             "schedule": "onecycle", "epochs": 150, "precision": "bf16"},
}


def recipe_defaults(recipe: str) -> dict[str, Any]:
    if recipe not in RECIPES:
        raise RtkError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[recipe])


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`."""
    if cfg.schedule not in SCHEDULES:
        raise RtkError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if cfg.depth >= WARMUP_DEPTH and step * cfg.batch_size < PAPER_WARMUP_IMAGES:
        return cfg.lr / 10
    if cfg.schedule == "paper":
        drops = sum(step >= int(f * total) for f in PAPER_MILESTONES)
        return cfg.lr * 0.1**drops
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    rise = max(1, int(ONECYCLE_WARMUP * total))  # onecycle
    if step < rise:
        return cfg.lr * (0.1 + 0.9 * step / rise)
    return cfg.lr * max(0.0, (total - step) / (total - rise))

