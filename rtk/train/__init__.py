"""[1] Training: the paper's recipe by default, a fast recipe for GPUs, DDP through torchrun.

The whole training set lives on the training device as uint8 [N, 3, 32, 32] (airbench style); a batch
is an index slice, and crop/flip/normalize are batched tensor ops (rtk.augment).

Everything random is a function of (seed, step): the epoch's permutation is drawn from a generator
seeded with (seed, epoch), a batch's augmentation from one seeded with (seed, step). So a run that is
interrupted and resumed from its checkpoint takes exactly the same steps as an uninterrupted one,
with no RNG state to save (tests/test_train.py checks the weights match bit for bit on the CPU).

Batch and lr semantics under DDP: --batch-size is the global batch; each of W processes takes every
W-th image of it (batch/W per process) and gradients are averaged, so lr and schedule mean the same
as on one device.

This module holds the run (train); its parts: config.py (TrainConfig, recipes, lr schedules),
trainer.py (the model, optimizer and data, one step), records.py (metrics.jsonl, progress, curves).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rtk import checkpoint
from rtk.errors import RtkError
from rtk.fileio import check_output
from rtk.log import info
from rtk.signals import deferred_stop
from rtk.train.config import TrainConfig, lr_at, recipe_defaults, resume_conflicts, resumed_config
from rtk.train.records import MetricsLog, plot_curves, progress_display
from rtk.train.trainer import Dist, Trainer, seeded

__all__ = ["TrainConfig", "Trainer", "recipe_defaults", "resumed_config", "train"]


def _reduce_sum(values: torch.Tensor, dist_info: Dist) -> torch.Tensor:
    if dist_info.world > 1:
        dist.all_reduce(values)
    return values


def _param_checksum(model: torch.nn.Module) -> float:
    """One float per process; equal on every rank when DDP kept the replicas in sync."""
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def _split_info(cfg: TrainConfig) -> dict[str, Any]:
    return {"seed": cfg.split_seed, "val_size": cfg.val_size}


def _recipe_dict(cfg: TrainConfig) -> dict[str, Any]:
    recipe = dataclasses.asdict(cfg)
    recipe.pop("data_dir")
    return recipe



def train(cfg: TrainConfig, resume: bool = False, show_progress: bool = True, overwrite: bool = False) -> Path:
    """Run training; returns the checkpoint path (written by rank 0 only).

    Rank 0 shows a progress bar on a terminal (show_progress) and otherwise one line per epoch.
    A run folder that holds a checkpoint is continued with resume (the same trajectory options,
    see config.resume_conflicts) or started anew with overwrite; without either it is refused.
    Ctrl-C or SIGTERM finishes the step in progress, saves a checkpoint with the state --resume
    needs and raises KeyboardInterrupt (rtk.signals.Terminated for SIGTERM); a second one stops at
    once. A loss or weights that become NaN or infinity end the run with an RtkError before
    anything is saved over the last good checkpoint.
    """
    dist_info = Dist.from_env()
    if dist_info.world > 1 and not dist.is_initialized():
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist_info.local_rank)
        dist.init_process_group(backend)
    try:
        return _train(cfg, dist_info, resume, show_progress, overwrite)
    finally:
        if dist_info.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _start(cfg: TrainConfig, ckpt_path: Path, trainer: Trainer, resume: bool,
           overwrite: bool) -> tuple[int | None, list[float] | None]:
    """(the step a resumed run continues from, the sums of its epoch so far), its state loaded into
    `trainer`; (None, None) for a new run."""
    if not resume:
        if ckpt_path.exists() and not overwrite:
            raise RtkError(f"{ckpt_path.parent} holds a run ({ckpt_path.name}): continue it with --resume, "
                           "or start it anew with --overwrite")
        return None, None
    if not ckpt_path.is_file():
        raise RtkError(f"--resume: no checkpoint to resume at {ckpt_path}")
    ckpt = checkpoint.read(ckpt_path)
    if "train_state" not in ckpt:
        raise RtkError(f"{ckpt_path} holds no training state (shipped weights?); cannot resume")
    conflicts = resume_conflicts(ckpt["recipe"], dataclasses.asdict(cfg))
    if conflicts:
        raise RtkError(f"{ckpt_path} cannot be resumed with other options: {'; '.join(conflicts)}")
    trainer.load_state(ckpt)
    return trainer.step, ckpt["train_state"].get("epoch_sums")


def _diverged(step: int, cfg: TrainConfig, ckpt_path: Path) -> RtkError:
    kept = f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.is_file() else "nothing was saved"
    return RtkError(f"training diverged by step {step}: the loss or the weights became NaN or infinity "
                    f"(lr {cfg.lr}); {kept}. Train again with a lower --lr")


def _train(cfg: TrainConfig, dist_info: Dist, resume: bool, show_progress: bool, overwrite: bool) -> Path:
    out_dir = Path(cfg.out_dir or f"runs/resnet{cfg.depth}")
    ckpt_path, metrics_path, curves_path = (out_dir / name for name in ("checkpoint.pt", "metrics.jsonl", "curves.png"))
    for path in (ckpt_path, metrics_path, curves_path):
        check_output(path)  # metrics.jsonl is appended to: a FIFO there would block the run at its first epoch
    trainer = Trainer(cfg, dist_info)
    resumed_from, epoch_sums = _start(cfg, ckpt_path, trainer, resume, overwrite)
    trainer.load_data()
    if cfg.batch_size > len(trainer.train_y):  # no step could take a whole batch
        raise RtkError(f"--batch-size {cfg.batch_size} is larger than the training split ({len(trainer.train_y):,} "
                       f"images with --val-size {cfg.val_size}): choose a smaller batch")
    total = trainer.total_steps()
    if trainer.step >= total:
        raise RtkError(f"{ckpt_path} already finished its {total} steps; nothing to resume")
    # Loss sum, correct, images of the epoch so far (restored on resume, so its record is exact).
    sums = torch.tensor(epoch_sums or [0.0, 0.0, 0.0], device=trainer.device, dtype=torch.float64)
    per_step = torch.tensor([0.0, 0.0, cfg.batch_size / dist_info.world], dtype=torch.float64,
                            device=trainer.device)

    def save(metrics: dict[str, Any]) -> None:
        # On every rank (the replicas are equal), so all stop together on a diverged run.
        if checkpoint.non_finite_tensors(trainer.model.state_dict()):
            raise _diverged(trainer.step, cfg, ckpt_path)
        if dist_info.is_main:
            checkpoint.save(ckpt_path, trainer.model, split=_split_info(cfg), recipe=_recipe_dict(cfg),
                            metrics=metrics, train_state={**trainer.state(), "epoch_sums": sums.tolist()})

    with deferred_stop() as stop:
        if dist_info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            info(f"ResNet-{cfg.depth} on {trainer.device} ({trainer.precision}, {dist_info.world} process(es)): "
                 f"{total} steps of batch {cfg.batch_size} = {total / trainer.steps_per_epoch:.1f} epochs "
                 f"of {len(trainer.train_y)} images, {cfg.schedule} schedule, lr {cfg.lr}"
                 + (f", resuming at step {trainer.step}" if resumed_from is not None else ""))
        log = MetricsLog(metrics_path, resumed_from) if dist_info.is_main else None
        # Compiled: the compile time is paid (and said) here, so the run's own time is the steps alone.
        compile_seconds = trainer.warm_up() if cfg.compile != "off" else None
        if compile_seconds is not None and dist_info.is_main:
            info(f"compiled the training step (--compile {cfg.compile}) in {compile_seconds:.1f} s, "
                 "before the timed run")
        epoch_start_time, epoch_start_step = time.perf_counter(), trainer.step
        started = time.perf_counter()
        val_acc = float("nan")
        with progress_display(dist_info.is_main, show_progress, total, trainer.step) as progress:
            while trainer.step < total:
                if stop.signum is not None:  # between two steps: the state is whole
                    save({"val_acc": val_acc, "step": trainer.step, "interrupted": True})
                    if dist_info.is_main:
                        info(f"interrupted at step {trainer.step}: saved {ckpt_path}; continue with --resume")
                    stop.raise_it()
                step = trainer.step
                idx = trainer.batch_indices(step)
                loss_sum, correct = trainer.train_step(
                    trainer.train_x[idx], trainer.train_y[idx], lr_at(step, total, cfg),
                    seeded(cfg.seed, step, dist_info.rank, device=trainer.device))
                per_step[0], per_step[1] = loss_sum, correct
                sums += per_step
                trainer.step += 1
                end_of_epoch = trainer.step % trainer.steps_per_epoch == 0 or trainer.step == total
                if progress is not None and (trainer.step % 20 == 0 or end_of_epoch):
                    elapsed = time.perf_counter() - epoch_start_time
                    loss_total, correct_total, seen = sums.tolist()
                    loss, acc = loss_total / max(seen, 1), correct_total / max(seen, 1)
                    ips = seen * dist_info.world / max(elapsed, 1e-9)
                    val = "-" if math.isnan(val_acc) else f"{val_acc:.2f}%"  # none before the first epoch ends
                    progress.update(trainer.step, f"loss {loss:.3f} acc {100 * acc:.1f}% val {val} "
                                                  f"{ips:,.0f} img/s")
                if end_of_epoch:
                    totals = _reduce_sum(sums.clone(), dist_info).tolist()
                    if not math.isfinite(totals[0]):  # the same reduced sum on every rank
                        raise _diverged(trainer.step, cfg, ckpt_path)
                    val_loss, val_acc = trainer.evaluate(trainer.val_x, trainer.val_y)
                    elapsed = time.perf_counter() - epoch_start_time
                    record = {
                        "epoch": round(trainer.step / trainer.steps_per_epoch, 3), "step": trainer.step,
                        "lr": lr_at(trainer.step - 1, total, cfg),
                        "train_loss": totals[0] / totals[2], "train_acc": 100 * totals[1] / totals[2],
                        "val_loss": val_loss, "val_acc": val_acc,
                        "images_per_s": (trainer.step - epoch_start_step) * cfg.batch_size / elapsed,
                        "elapsed_s": time.perf_counter() - started,
                    }
                    sums.zero_()
                    save({"val_acc": val_acc, "step": trainer.step, "epochs": record["epoch"]})
                    if log is not None:
                        log.append(record)
                    if progress is not None:
                        progress.note(
                            f"epoch {record['epoch']:g} (step {trainer.step}/{total}): train loss "
                            f"{record['train_loss']:.3f}, train acc {record['train_acc']:.2f}%, val acc "
                            f"{val_acc:.2f}%, {record['images_per_s']:,.0f} img/s")
                    epoch_start_time, epoch_start_step = time.perf_counter(), trainer.step

        # The final model is the one reported; the test set is looked at once, after training.
        # (A stop asked for from here on lets the finished run write its results first.)
        test_loss, test_acc = trainer.evaluate(trainer.test_x, trainer.test_y)
        checksums = [_param_checksum(trainer.model)]
        if dist_info.world > 1:
            gathered: list[Any] = [None] * dist_info.world
            dist.all_gather_object(gathered, checksums[0])
            checksums = gathered
        metrics = {
            "val_acc": val_acc, "test_acc": test_acc, "test_loss": test_loss, "step": trainer.step,
            "epochs": trainer.step / trainer.steps_per_epoch, "train_seconds": time.perf_counter() - started,
            "compile_seconds": compile_seconds,
            "processes": dist_info.world, "device": str(trainer.device),
            "param_checksums": checksums, "data_sha256": trainer.data_checksum,
        }
        save(metrics)
        if dist_info.is_main and log is not None:
            log.append({"final": True, **{k: v for k, v in metrics.items() if k != "param_checksums"}})
            plot_curves(log.records(), curves_path, cfg.depth)
            info(f"final model: validation {val_acc:.2f}%, test {test_acc:.2f}% -> {ckpt_path} "
                 f"({metrics['train_seconds']:.1f} s of training"
                 + (f", {compile_seconds:.1f} s of compiling before it)" if compile_seconds is not None else ")"))
    return ckpt_path
