"""Quantization-aware fine-tuning: the checkpoint trained on with the TensorRT flavour's INT8
arithmetic simulated, so its weights learn to live with it.

    checkpoint.pt + model.int8.tensorrt.onnx (PTQ: where the Q/DQ are, their scales)
        -> fine-tune on the training split -> model.int8.tensorrt.qat.pt

Fake quantization sits exactly where the QDQ file quantizes, with torch's own ops (straight-through
gradients): every Conv's weights symmetric per output channel (torch.fake_quantize_per_channel_affine,
scale max|w| / 127 as onnxruntime's quantizer computes it), every Conv's input and each residual
shortcut per tensor (torch.fake_quantize_per_tensor_affine) at the scale the PTQ file has for that
tensor, read from its DequantizeLinear nodes; those scales stay fixed, so the QDQ file written from the
tuned weights uses the same calibration. A Conv the PTQ file leaves float (mixed precision) stays float.

BatchNorm is folded into the conv weights first (running mean 0, variance 1 - eps, scale 1, the shift
in its bias, frozen statistics): the weights fake-quantized in training are then exactly the weights
the ONNX export folds and onnxruntime quantizes. The model stays an rtk ResNet, so the tuned
checkpoint loads, exports and runs like any other.

The epoch kept is the one whose fake-quantized model is most accurate on the validation split
(epoch 0: the PTQ starting point), never chosen on the test set.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtk import augment, data
from rtk import checkpoint as checkpoints
from rtk.errors import RtkError, require
from rtk.log import Log, info
from rtk.onnx_meta import load_onnx

if TYPE_CHECKING:
    import torch

BATCH = 128
LR = 0.002  # peak; cosine to 0 over the run (the recipe trained at 0.1-0.4: fine-tuning moves little)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
EVAL_BATCH = 500


def qdq_scales(qdq_path: str | os.PathLike[str]) -> tuple[list[float | None], list[float]]:
    """(input scale of each Conv in graph order, None where it is float; shortcut scale of each
    residual Add in graph order) of a TensorRT-flavour QDQ model."""
    from onnx import numpy_helper

    model = load_onnx(qdq_path)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = {name: node for node in model.graph.node for name in node.output}

    def scale_of(tensor: str) -> float | None:
        node = producer.get(tensor)
        return float(constants[node.input[1]].item()) if node is not None and node.op_type == "DequantizeLinear" \
            else None

    convs = [scale_of(node.input[0]) for node in model.graph.node if node.op_type == "Conv"]
    shortcuts = []
    for add in (node for node in model.graph.node if node.op_type == "Add"):
        found = [s for s in (scale_of(name) for name in add.input) if s is not None]
        if len(found) != 1:
            raise RtkError(f"{qdq_path} is not a TensorRT-flavour QDQ model (Add {add.name} has {len(found)} "
                           f"quantized inputs, not the shortcut alone)")
        shortcuts.append(found[0])
    return convs, shortcuts


def fold_batchnorm(model: torch.nn.Module) -> None:
    """Fold every BatchNorm into the conv before it, in place; each BN is left as a frozen bias add."""
    import torch

    from rtk.model import BasicBlock

    pairs = [(model.conv1, model.bn1)]
    for block in (m for m in model.modules() if isinstance(m, BasicBlock)):
        pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    with torch.no_grad():
        for conv, bn in pairs:
            factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
            conv.weight.mul_(factor[:, None, None, None])
            bn.bias.sub_(bn.running_mean * factor)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # sqrt(var + eps) == 1: BN(x) = x + bias
            bn.weight.fill_(1.0)
            bn.weight.requires_grad_(False)


def _weight_fake_quant() -> Any:
    """A parametrization: symmetric INT8 per output channel, scale max|w| / 127 (onnxruntime's)."""
    import torch

    class PerChannelInt8(torch.nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:  # [C_out, C_in, kH, kW]
            scale = weight.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127
            zero = torch.zeros(len(scale), dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)

    return PerChannelInt8()


def _activation_fake_quant(scale: float) -> Any:
    import torch

    def quantize(x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)

    return quantize


def attach(model: torch.nn.Module, conv_scales: list[float | None], shortcut_scales: list[float]) -> list[Any]:
    """Put the fake quantization on `model` (folded); returns the hook handles."""
    import torch
    from torch.nn.utils import parametrize

    from rtk.model import BasicBlock

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if (len(convs), len(blocks)) != (len(conv_scales), len(shortcut_scales)):
        raise RtkError(f"the QDQ model has {len(conv_scales)} Convs and {len(shortcut_scales)} Adds; the "
                       f"checkpoint {len(convs)} and {len(blocks)}: not the same network")
    handles = []
    input_scale = dict(zip(convs, conv_scales))
    for conv, scale in input_scale.items():
        if scale is None:  # left float by mixed precision
            continue
        parametrize.register_parametrization(conv, "weight", _weight_fake_quant())
        handles.append(conv.register_forward_pre_hook(_pre_hook(scale)))
    for block, scale in zip(blocks, shortcut_scales):
        # the shortcut reads the block input as the QDQ file's Slices do: through the Q/DQ of conv1's
        # input (x itself for an identity shortcut), and is quantized again after Slice + Pad
        if input_scale[block.conv1] is not None:
            handles.append(block.shortcut.register_forward_pre_hook(_pre_hook(input_scale[block.conv1])))
        fake = _activation_fake_quant(scale)
        handles.append(block.shortcut.register_forward_hook(lambda module, args, out, fake=fake: fake(out)))
    return handles


def _pre_hook(scale: float) -> Any:
    fake = _activation_fake_quant(scale)
    return lambda module, args: (fake(args[0]),)


def detach(model: torch.nn.Module, handles: list[Any]) -> None:
    """Back to a plain float ResNet holding the tuned (unquantized) weights."""
    import torch
    from torch.nn.utils import parametrize

    for handle in handles:
        handle.remove()
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        if parametrize.is_parametrized(conv):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = torch.cat([model(augment.normalize(images[i:i + EVAL_BATCH])).argmax(1)
                          for i in range(0, len(images), EVAL_BATCH)])
    return 100.0 * float(np.mean(pred.numpy() == labels))


def training_split(ckpt: dict[str, Any], data_dir: str | os.PathLike[str] | None = None) -> tuple[
        dict[str, int], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, np.ndarray]]:
    """(split, (train images, labels), (validation images, labels)) of the CIFAR-10 training set, by
    the split the checkpoint `ckpt` was trained with (rtk train's default where it records none):
    images uint8 [N, 3, 32, 32] tensors, training labels int64, validation labels numpy."""
    torch = require("torch")
    split = ckpt.get("split") or {"seed": 0, "val_size": 5000}
    cifar = data.load_cifar10(data_dir)
    train_idx, val_idx = data.split_indices(len(cifar.train_labels), split["val_size"], split["seed"])
    nchw = torch.from_numpy(np.ascontiguousarray(cifar.train_images.transpose(0, 3, 1, 2)))  # uint8 [50000, 3, 32, 32]
    return (split, (nchw[train_idx], torch.from_numpy(cifar.train_labels[train_idx]).long()),
            (nchw[val_idx], cifar.train_labels[val_idx]))


def finetune(checkpoint: str | os.PathLike[str], qdq_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
             epochs: int, data_dir: str | os.PathLike[str] | None = None, lr: float = LR, seed: int = 0,
             limit_batches: int | None = None, log: Log = info) -> Path:
    """The tuned checkpoint at `out`: `epochs` of QAT from `checkpoint` with the Q/DQ of `qdq_path`
    (a TensorRT-flavour file of that checkpoint); `limit_batches` shortens every epoch (tests)."""
    torch = require("torch")
    if epochs < 1:
        raise RtkError(f"QAT needs at least one epoch, got {epochs}")
    model, ckpt = checkpoints.load(checkpoint)
    split, (train_x, train_y), (val_x, val_y) = training_split(ckpt, data_dir)

    fold_batchnorm(model)
    handles = attach(model, *qdq_scales(qdq_path))
    model.eval()  # BN frozen (folded); nothing else depends on the mode
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0}],
                                lr=lr, momentum=MOMENTUM, nesterov=True)
    steps_per_epoch = min(len(train_x) // BATCH, limit_batches or len(train_x))
    total = epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    history = [{"epoch": 0, "val_acc": _accuracy(model, val_x, val_y), "seconds": 0.0}]
    log(f"QAT: {len(train_x)} training images, {steps_per_epoch} steps of {BATCH} per epoch; fake-quantized "
        f"start (PTQ) {history[0]['val_acc']:.2f}% on the validation split")
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best = history[0]
    step = 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(len(train_x), generator=generator)
        for batch in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            index = order[batch * BATCH:(batch + 1) * BATCH]
            x = augment.normalize(augment.augment(train_x[index], generator))
            loss = torch.nn.functional.cross_entropy(model(x), train_y[index])
            if not torch.isfinite(loss):
                raise RtkError(f"QAT diverged at epoch {epoch}, step {batch} (loss {loss.item()}); nothing written")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        record = {"epoch": epoch, "val_acc": _accuracy(model, val_x, val_y),
                  "seconds": round(time.perf_counter() - start, 1), "last_loss": float(loss.item())}
        history.append(record)
        log(f"QAT epoch {epoch}/{epochs}: validation {record['val_acc']:.2f}% (fake-quantized), "
            f"{record['seconds']:.0f} s")
        if record["val_acc"] > best["val_acc"]:
            best, best_state = record, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    detach(model, handles)
    log(f"QAT: keeping epoch {best['epoch']} ({best['val_acc']:.2f}% on the validation split)")
    from rtk.fileio import sha256_file

    recipe = {"qat": {"from_checkpoint_sha256": sha256_file(checkpoint), "qdq": Path(qdq_path).name,
                      "epochs": epochs, "kept_epoch": best["epoch"], "lr": lr, "batch_size": BATCH,
                      "steps_per_epoch": steps_per_epoch, "seed": seed, "history": history}}
    return checkpoints.save(out, model, split=split, recipe=recipe,
                            metrics={"val_acc": best["val_acc"], "test_acc": None})
