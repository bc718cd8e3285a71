"""[1] Training: the paper's recipe by default, a fast recipe for GPUs, DDP through torchrun.

The whole training set lives on the training device as uint8 [N, 3, 32, 32] (airbench style); a batch
is an index slice, and crop/flip/normalize are batched tensor ops (rtk.data.augment / normalize).

Everything random is a function of (seed, step): the epoch's permutation is drawn from a generator
seeded with (seed, epoch), a batch's augmentation from one seeded with (seed, step). So a run that is
interrupted and resumed from its checkpoint takes exactly the same steps as an uninterrupted one,
with no RNG state to save (tests/test_train.py checks the weights match bit for bit on the CPU).

Batch and lr semantics under DDP: --batch-size is the global batch; each of W processes takes every
W-th image of it (batch/W per process) and gradients are averaged, so lr and schedule mean the same
as on one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rtk import checkpoint, data
from rtk.errors import RtkError
from rtk.fileio import atomic_path
from rtk.log import info
from rtk.model import ResNet

SCHEDULES = ("paper", "cosine", "onecycle")
PAPER_ITERATIONS = 64_000  # the paper stops at 64k iterations of batch 128 (~182 epochs of 45k)
PAPER_MILESTONES = (0.5, 0.75)  # lr / 10 at 32k and 48k of 64k
PAPER_WARMUP_STEPS = 400  # lr 0.01 for ~400 iterations for depth >= 110 (the paper's ResNet-110 note)
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
    val_size: int = 5000
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: str = "off"  # torch.compile mode for training steps: off | default | reduce-overhead | max-autotune
    channels_last: bool | None = None  # None: on for CUDA
    out_dir: str = ""
    data_dir: str | None = None
    eval_batch_size: int = 1000


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
    if cfg.schedule == "paper":
        if cfg.depth >= 110 and step < PAPER_WARMUP_STEPS:
            return 0.01
        drops = sum(step >= int(f * total) for f in PAPER_MILESTONES)
        return cfg.lr * 0.1**drops
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "onecycle":
        rise = max(1, int(ONECYCLE_WARMUP * total))
        if step < rise:
            return cfg.lr * (0.1 + 0.9 * step / rise)
        return cfg.lr * max(0.0, (total - step) / (total - rise))
    raise RtkError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                   int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str, dist_info: Dist) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RtkError("--device cuda asked for, but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use --device cpu")
        return torch.device("cuda", dist_info.local_rank)
    if requested == "cpu":
        return torch.device("cpu")
    raise RtkError(f"unknown device {requested!r}; choose auto, cpu or cuda")


def _seeded(seed: int, *salt: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on (seed, salt). On CUDA it lives on the GPU: drawing
    on the CPU and copying would make the host wait for the GPU at every step."""
    gen = torch.Generator(device=device)
    gen.manual_seed(hash((seed, *salt)) & 0x7FFF_FFFF_FFFF_FFFF)  # tuples of ints hash stably
    return gen


class Trainer:
    """Holds the model, optimizer and data of one run; `train_step` is the unit of work."""

    def __init__(self, cfg: TrainConfig, dist_info: Dist | None = None):
        self.cfg = cfg
        self.dist = dist_info or Dist()
        self.device = pick_device(cfg.device, self.dist)
        on_cuda = self.device.type == "cuda"
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if on_cuda else "fp32")
        if precision not in ("fp32", "bf16"):
            raise RtkError(f"unknown training precision {precision!r}; choose auto, fp32 or bf16")
        self.precision = precision
        self.channels_last = on_cuda if cfg.channels_last is None else cfg.channels_last
        if cfg.batch_size % self.dist.world:
            raise RtkError(f"--batch-size {cfg.batch_size} must divide by the {self.dist.world} processes")

        torch.manual_seed(cfg.seed)  # He init of the weights
        self.model = ResNet(cfg.depth).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if on_cuda else None)
        if cfg.compile != "off":
            # reduce-overhead replays CUDA graphs: a ResNet-20 step at batch 128 is launch bound.
            self.net = torch.compile(self.net, mode=None if cfg.compile == "default" else cfg.compile)
        # Weight decay on every parameter, BN included, as the paper's recipe does.
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, fused=on_cuda or None)
        self.step = 0
        self._perm_epoch = -1  # epoch whose permutation self._perm holds

    # -- data -----------------------------------------------------------------------------
    def load_data(self) -> None:
        """Put the train/val split (and the test set) on the device as uint8 NCHW."""
        cifar = data.load_cifar10(self.cfg.data_dir)
        train_idx, val_idx = data.split_indices(len(cifar.train_labels), self.cfg.val_size,
                                                self.cfg.split_seed)

        def to_device(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
            # uint8 [N, 32, 32, 3] -> uint8 [N, 3, 32, 32] on the device (4x smaller than float)
            x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(self.device)
            return x, torch.from_numpy(labels).long().to(self.device)

        self.train_x, self.train_y = to_device(cifar.train_images[train_idx], cifar.train_labels[train_idx])
        self.val_x, self.val_y = to_device(cifar.train_images[val_idx], cifar.train_labels[val_idx])
        self.test_x, self.test_y = to_device(cifar.test_images, cifar.test_labels)
        self.data_checksum = cifar.checksum()

    @property
    def steps_per_epoch(self) -> int:
        # Drop the last partial batch: every step sees a full batch, so its lr means the same.
        return len(self.train_y) // self.cfg.batch_size

    def total_steps(self) -> int:
        if self.cfg.iterations is not None:
            return int(self.cfg.iterations)
        if self.cfg.epochs is not None:
            return max(1, round(self.cfg.epochs * self.steps_per_epoch))
        return PAPER_ITERATIONS

    def batch_indices(self, step: int) -> torch.Tensor:
        """This process's share of the global batch for `step`: int64 [batch / world]."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._perm_epoch != epoch:
            perm = torch.randperm(len(self.train_y), generator=_seeded(self.cfg.seed, epoch))
            self._perm, self._perm_epoch = perm.to(self.device), epoch
        batch = self._perm[offset * self.cfg.batch_size:(offset + 1) * self.cfg.batch_size]
        return batch[self.dist.rank::self.dist.world]

    # -- one step -------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _prepare(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = data.normalize(images_u8)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_step(self, images_u8: torch.Tensor, labels: torch.Tensor, lr: float,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on uint8 [B, 3, 32, 32] images; returns (loss sum, correct count) on device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        x = self._prepare(data.augment(images_u8, generator))
        with self._autocast():
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = labels.numel()
        return loss.detach() * n, (logits.argmax(1) == labels).sum()

    @torch.no_grad()
    def evaluate(self, images_u8: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """(mean loss, top-1 accuracy %) of the plain model (eval mode, no augmentation)."""
        if len(labels) == 0:
            return float("nan"), float("nan")
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for i in range(0, len(labels), self.cfg.eval_batch_size):
            x = self._prepare(images_u8[i:i + self.cfg.eval_batch_size])
            y = labels[i:i + self.cfg.eval_batch_size]
            logits = self.model(x).float()  # fp32 even after bf16 training: reported numbers
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return loss_sum.item() / len(labels), 100.0 * correct.item() / len(labels)

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer.state_dict()}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["state_dict"], strict=True)
        self.optimizer.load_state_dict(ckpt["train_state"]["optimizer"])
        self.step = int(ckpt["train_state"]["step"])


# ---- the run ------------------------------------------------------------------------------
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


class _MetricsLog:
    """metrics.jsonl: one JSON line per epoch (and a final line); on resume, later lines are cut."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        lines = []
        if resume_step is not None and path.is_file():
            lines = [ln for ln in path.read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in lines))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


class _Progress:
    """A rich progress bar on a terminal; elsewhere (a log file, CI) one plain line per epoch."""

    def __init__(self, bar: Any = None, task: Any = None):
        self.bar, self.task = bar, task

    def update(self, done: int, stats: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, stats=stats)

    def epoch_done(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message)  # above the live bar
        else:
            info(message)


@contextlib.contextmanager
def _progress(is_main: bool, bar_wanted: bool, total: int, start: int) -> Iterator[_Progress | None]:
    """None on DDP ranks other than 0 (they print nothing)."""
    if not is_main:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not (bar_wanted and console.is_terminal):
        yield _Progress()
        return
    with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        yield _Progress(bar, bar.add_task("train", total=total, completed=start, stats=""))


def train(cfg: TrainConfig, resume: bool = False, show_progress: bool = True) -> Path:
    """Run training; returns the checkpoint path (written by rank 0 only).

    Rank 0 shows a progress bar on a terminal (show_progress) and otherwise one line per epoch.
    Ctrl-C saves a checkpoint with the state needed by --resume and re-raises KeyboardInterrupt.
    """
    dist_info = Dist.from_env()
    if dist_info.world > 1 and not dist.is_initialized():
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist_info.local_rank)
        dist.init_process_group(backend)
    try:
        return _train(cfg, dist_info, resume, show_progress)
    finally:
        if dist_info.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, dist_info: Dist, resume: bool, show_progress: bool) -> Path:
    out_dir = Path(cfg.out_dir or f"runs/resnet{cfg.depth}")
    ckpt_path = out_dir / "checkpoint.pt"
    trainer = Trainer(cfg, dist_info)
    resumed_from = None
    if resume:
        if not ckpt_path.is_file():
            raise RtkError(f"--resume: no checkpoint to resume at {ckpt_path}")
        ckpt = checkpoint.read(ckpt_path)
        if "train_state" not in ckpt:
            raise RtkError(f"{ckpt_path} holds no training state (shipped weights?); cannot resume")
        if ckpt["model"]["depth"] != cfg.depth:
            raise RtkError(f"{ckpt_path} is ResNet-{ckpt['model']['depth']}, not ResNet-{cfg.depth}")
        trainer.load_state(ckpt)
        resumed_from = trainer.step
    trainer.load_data()
    total = trainer.total_steps()
    if trainer.step >= total:
        raise RtkError(f"{ckpt_path} already finished its {total} steps; nothing to resume")
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        info(f"ResNet-{cfg.depth} on {trainer.device} ({trainer.precision}, {dist_info.world} process(es)): "
             f"{total} steps of batch {cfg.batch_size} = {total / trainer.steps_per_epoch:.1f} epochs "
             f"of {len(trainer.train_y)} images, {cfg.schedule} schedule, lr {cfg.lr}"
             + (f", resuming at step {trainer.step}" if resumed_from is not None else ""))
    log = _MetricsLog(out_dir / "metrics.jsonl", resumed_from) if dist_info.is_main else None

    def save(metrics: dict[str, Any]) -> None:
        if dist_info.is_main:
            checkpoint.save(ckpt_path, trainer.model, split=_split_info(cfg), recipe=_recipe_dict(cfg),
                            metrics=metrics, train_state=trainer.state())

    sums = torch.zeros(3, device=trainer.device, dtype=torch.float64)  # loss sum, correct, images
    per_step = torch.tensor([0.0, 0.0, cfg.batch_size / dist_info.world], dtype=torch.float64,
                            device=trainer.device)
    epoch_start_time, epoch_start_step = time.perf_counter(), trainer.step
    started = time.perf_counter()
    val_acc = float("nan")
    try:
        with _progress(dist_info.is_main, show_progress, total, trainer.step) as progress:
            while trainer.step < total:
                step = trainer.step
                idx = trainer.batch_indices(step)
                loss_sum, correct = trainer.train_step(
                    trainer.train_x[idx], trainer.train_y[idx], lr_at(step, total, cfg),
                    _seeded(cfg.seed, step, dist_info.rank, device=trainer.device))
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
                    if log is not None:
                        log.append(record)
                    if progress is not None:
                        progress.epoch_done(
                            f"epoch {record['epoch']:g} (step {trainer.step}/{total}): train loss "
                            f"{record['train_loss']:.3f}, train acc {record['train_acc']:.2f}%, val acc "
                            f"{val_acc:.2f}%, {record['images_per_s']:,.0f} img/s")
                    save({"val_acc": val_acc, "step": trainer.step, "epochs": record["epoch"]})
                    sums.zero_()
                    epoch_start_time, epoch_start_step = time.perf_counter(), trainer.step
    except KeyboardInterrupt:
        save({"val_acc": val_acc, "step": trainer.step, "interrupted": True})
        if dist_info.is_main:
            info(f"interrupted at step {trainer.step}: saved {ckpt_path}; continue with --resume")
        raise

    # The final model is the one reported; the test set is looked at once, after training.
    test_loss, test_acc = trainer.evaluate(trainer.test_x, trainer.test_y)
    checksums = [_param_checksum(trainer.model)]
    if dist_info.world > 1:
        gathered: list[Any] = [None] * dist_info.world
        dist.all_gather_object(gathered, checksums[0])
        checksums = gathered
    metrics = {
        "val_acc": val_acc, "test_acc": test_acc, "test_loss": test_loss, "step": trainer.step,
        "epochs": trainer.step / trainer.steps_per_epoch, "train_seconds": time.perf_counter() - started,
        "processes": dist_info.world, "device": str(trainer.device),
        "param_checksums": checksums, "data_sha256": trainer.data_checksum,
    }
    save(metrics)
    if dist_info.is_main and log is not None:
        log.append({"final": True, **{k: v for k, v in metrics.items() if k != "param_checksums"}})
        _plot_curves(log.records(), out_dir / "curves.png", cfg.depth)
        info(f"final model: validation {val_acc:.2f}%, test {test_acc:.2f}% -> {ckpt_path}")
    return ckpt_path


def _plot_curves(records: list[dict[str, Any]], path: Path, depth: int) -> None:
    """Error (%) of train and validation, loss and lr against iterations, like the paper's Figure 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if "epoch" in r and not r.get("final")]
    if not epochs:
        return
    steps = [r["step"] for r in epochs]
    fig, (ax_err, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_err.plot(steps, [100 - r["train_acc"] for r in epochs], label="train error (augmented)")
    ax_err.plot(steps, [100 - r["val_acc"] for r in epochs], label="validation error", linewidth=2)
    ax_err.set(xlabel="iterations", ylabel="error (%)", title=f"ResNet-{depth}", ylim=(0, 40))
    ax_err.legend()
    ax_err.grid(alpha=0.3)
    ax_loss.plot(steps, [r["train_loss"] for r in epochs], label="train")
    ax_loss.plot(steps, [r["val_loss"] for r in epochs], label="validation")
    ax_loss.set(xlabel="iterations", ylabel="cross-entropy", yscale="log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in epochs])
    ax_lr.set(xlabel="iterations", ylabel="learning rate", yscale="log")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
