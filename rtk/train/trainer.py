"""The model, optimizer and data of one training run: Trainer.train_step is the unit of work, with
this process's place in a torchrun job (Dist) and the seeded generators that make a run resumable."""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rtk import augment, data
from rtk.errors import MissingDependency, RtkError
from rtk.model import ResNet
from rtk.train.config import PAPER_ITERATIONS, TrainConfig


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
            raise MissingDependency("--device cuda asked for, but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use --device cpu")
        return torch.device("cuda", dist_info.local_rank)
    if requested == "cpu":
        return torch.device("cpu")
    raise RtkError(f"unknown device {requested!r}; choose auto, cpu or cuda")


def seeded(seed: int, *salt: int, device: torch.device | str = "cpu") -> torch.Generator:
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
            perm = torch.randperm(len(self.train_y), generator=seeded(self.cfg.seed, epoch))
            self._perm, self._perm_epoch = perm.to(self.device), epoch
        batch = self._perm[offset * self.cfg.batch_size:(offset + 1) * self.cfg.batch_size]
        return batch[self.dist.rank::self.dist.world]

    # -- one step -------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _prepare(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = augment.normalize(images_u8)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_step(self, images_u8: torch.Tensor, labels: torch.Tensor, lr: float,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on uint8 [B, 3, 32, 32] images; returns (loss sum, correct count) on device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        x = self._prepare(augment.augment(images_u8, generator))
        with self._autocast():
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = labels.numel()
        return loss.detach() * n, (logits.argmax(1) == labels).sum()

    def warm_up(self, steps: int = 3) -> float:
        """Compile the step before the run: `steps` steps on a random batch, then the weights, buffers and
        optimizer state put back as they were; returns the seconds taken (the compile time).

        torch.compile compiles on the first call, and reduce-overhead records its CUDA graphs on a later
        one (cudagraph trees warm up, then record), so 3 steps take the whole cost out of the timed run.
        Weights and buffers are copied back in place: the graphs keep the addresses they captured.
        """
        began = time.perf_counter()
        saved = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        gen = seeded(self.cfg.seed, -1, device=self.device)  # its own stream: the run's draws stay as they are
        batch = self.cfg.batch_size // self.dist.world
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=self.device, generator=gen)
        labels = torch.randint(0, 10, (batch,), device=self.device, generator=gen)
        for _ in range(steps):
            self.train_step(images, labels, 0.0, gen)
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(saved[name])
        self.optimizer.load_state_dict(optimizer_state)
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - began

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
        """Weights, BN buffers, optimizer state and step from a checkpoint rtk.checkpoint.read checked."""
        try:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
            self.optimizer.load_state_dict(ckpt["train_state"]["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # what torch raises for a damaged state
            reason = " ".join(str(exc).split())
            raise RtkError(f"the checkpoint's training state does not fit ResNet-{self.cfg.depth}: {reason}") from exc
        self.step = int(ckpt["train_state"]["step"])

