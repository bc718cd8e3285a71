"""The TensorRT flavour's INT8 arithmetic simulated in torch, for two uses:

    quantization-aware fine-tuning (finetune, `rtk quantize --qat-epochs`): the checkpoint trained on
        checkpoint.pt + model.int8.tensorrt.onnx (PTQ: where the Q/DQ are, their scales)
            -> fine-tune on the training split -> model.int8.tensorrt.qat.pt
    tuning (tune, rtk.quantize.tuning): the scales and biases of a QDQ file trained toward FP32's
    logits on the calibration images, the weights left as they are

Fake quantization sits exactly where the QDQ file quantizes, with torch's own ops (straight-through
gradients): every Conv's weights symmetric per output channel (torch.fake_quantize_per_channel_affine,
scale max|w| / 127 as onnxruntime's quantizer computes it), every Conv's input and each residual
shortcut the file quantizes, per tensor (torch.fake_quantize_per_tensor_affine) at the scale the PTQ
file has for that tensor, read from its DequantizeLinear nodes; in fine-tuning those scales stay
fixed, so the QDQ file written from the tuned weights uses the same calibration. A Conv the file
leaves float stays float, and a shortcut it reads float (today's flavour) is not quantized.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtk import augment, data
from rtk import checkpoint as checkpoints
from rtk.errors import RtkError, require
from rtk.log import Log, info
from rtk.onnx_meta import load_onnx
from rtk.stats import accuracy_pct

if TYPE_CHECKING:
    import torch

BATCH = 128
LR = 0.002  # peak; cosine to 0 over the run (the recipe trained at 0.1-0.4: fine-tuning moves little)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
EVAL_BATCH = 500
# Range and bias tuning (tune): Adam, cosine to 0 from these peaks. Chosen on the validation split
# of the shipped ResNet-20 (docs/quantization.md, "Tuned scales and biases").
TUNE_BATCH = 128
TUNE_LR_SCALES = 1e-3  # the scales are ~0.01-0.05: at most a few percent a step
TUNE_LR_BIASES = 3e-4


def qdq_scales(qdq_path: str | os.PathLike[str]) -> tuple[list[float | None], list[float | None]]:
    """(input scale of each Conv in graph order, None where it is float; shortcut scale of each
    residual Add in graph order, None where the Add reads float) of a TensorRT-flavour QDQ model."""
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
        if len(found) > 1:
            raise RtkError(f"{qdq_path} is not a TensorRT-flavour QDQ model (Add {add.name} has {len(found)} "
                           f"quantized inputs, not at most the shortcut)")
        shortcuts.append(found[0] if found else None)
    return convs, shortcuts


def conv_bn_pairs(model: torch.nn.Module) -> list[tuple[Any, Any]]:
    """(Conv, the BatchNorm after it) of an rtk ResNet, in graph order (the ONNX export's Conv order)."""
    from rtk.model import BasicBlock

    pairs = [(model.conv1, model.bn1)]
    for block in (m for m in model.modules() if isinstance(m, BasicBlock)):
        pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    return pairs


def fold_batchnorm(model: torch.nn.Module) -> None:
    """Fold every BatchNorm into the conv before it, in place; each BN is left as a frozen bias add."""
    import torch

    with torch.no_grad():
        for conv, bn in conv_bn_pairs(model):
            factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
            conv.weight.mul_(factor[:, None, None, None])
            bn.bias.sub_(bn.running_mean * factor)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # sqrt(var + eps) == 1: BN(x) = x + bias
            bn.weight.fill_(1.0)
            bn.weight.requires_grad_(False)


def folded_from_onnx(onnx_path: str | os.PathLike[str]) -> torch.nn.Module:
    """The folded rtk ResNet (as fold_batchnorm leaves it) that an FP32 ONNX of rtk computes: each
    Conv's weights and bias from the ONNX (the exporter folds BatchNorm into them), the FC from its
    Gemm. So an ONNX file alone, without its checkpoint, can be tuned in torch."""
    import torch
    from onnx import numpy_helper

    from rtk.model import ResNet
    from rtk.onnx_meta import read_metadata

    model = load_onnx(onnx_path)
    constants = {init.name: torch.from_numpy(np.array(numpy_helper.to_array(init)))  # a writable copy
                 for init in model.graph.initializer}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    depth = read_metadata(onnx_path).get("depth")
    resnet = ResNet(depth) if isinstance(depth, int) else None
    pairs = conv_bn_pairs(resnet) if resnet is not None else []
    if resnet is None or len(pairs) != len(convs) or len(gemms) != 1 or \
            not all(node.input[1] in constants for node in (*convs, *gemms)):
        raise RtkError(f"{onnx_path} is not an FP32 ONNX of an rtk ResNet (rtk export writes one)")
    fold_batchnorm(resnet)

    def bias(node: Any, channels: int) -> torch.Tensor:  # the exporter leaves out a bias of zeros
        return constants[node.input[2]] if len(node.input) > 2 and node.input[2] else torch.zeros(channels)

    with torch.no_grad():
        for (conv, bn), node in zip(pairs, convs):
            conv.weight.copy_(constants[node.input[1]])  # [C_out, C_in, 3, 3]
            bn.bias.copy_(bias(node, conv.out_channels))  # [C_out]
        resnet.fc.weight.copy_(constants[gemms[0].input[1]])  # [10, 64]: transB=1
        resnet.fc.bias.copy_(bias(gemms[0], resnet.num_classes))
    return resnet.eval()


def _weight_fake_quant() -> Any:
    """A parametrization: symmetric INT8 per output channel, scale max|w| / 127 (onnxruntime's)."""
    import torch

    class PerChannelInt8(torch.nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:  # [C_out, C_in, kH, kW]
            scale = weight.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127
            zero = torch.zeros(len(scale), dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)

    return PerChannelInt8()


def _activation_fake_quant(scale: float, learn: bool) -> Any:
    """Per-tensor symmetric INT8 at `scale`; with `learn` the scale is a parameter (`.scale`), trained
    by torch's LSQ op (the one torch.ao.quantization's _LearnableFakeQuantize runs): straight-through
    gradients for x, LSQ's for the scale."""
    import torch

    class PerTensorInt8(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([scale]), requires_grad=learn)
            self.register_buffer("zero_point", torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.scale.requires_grad:
                return torch._fake_quantize_learnable_per_tensor_affine(x, self.scale, self.zero_point, -128, 127, 1.0)
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale), 0, -128, 127)

    return PerTensorInt8()


@dataclass
class FakeQuant:
    """What attach put on a model: the hook handles, and each Conv's input quantizer (None: float)."""

    handles: list[Any]
    conv_inputs: list[Any]


def attach(model: torch.nn.Module, conv_scales: list[float | None], shortcut_scales: list[float | None], *,
           learn_scales: bool = False) -> FakeQuant:
    """Put the fake quantization on `model` (folded); with `learn_scales` the Conv inputs' scales are
    parameters (the shortcuts' stay as given)."""
    import torch
    from torch.nn.utils import parametrize

    from rtk.model import BasicBlock

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if (len(convs), len(blocks)) != (len(conv_scales), len(shortcut_scales)):
        raise RtkError(f"the QDQ model has {len(conv_scales)} Convs and {len(shortcut_scales)} Adds; the "
                       f"checkpoint {len(convs)} and {len(blocks)}: not the same network")
    handles, quantizers = [], {}
    for conv, scale in zip(convs, conv_scales):
        if scale is None:  # left float
            continue
        parametrize.register_parametrization(conv, "weight", _weight_fake_quant())
        quantizers[conv] = _activation_fake_quant(scale, learn_scales)
        handles.append(conv.register_forward_pre_hook(_pre_hook(quantizers[conv])))
    for block, scale in zip(blocks, shortcut_scales):
        if scale is None:  # the Add reads the block input in float
            continue
        # the shortcut reads the block input as the QDQ file's Slices do: through the Q/DQ of conv1's
        # input (x itself for an identity shortcut), and is quantized again after Slice + Pad
        if block.conv1 in quantizers:
            handles.append(block.shortcut.register_forward_pre_hook(_pre_hook(quantizers[block.conv1])))
        fake = _activation_fake_quant(scale, learn=False)
        handles.append(block.shortcut.register_forward_hook(lambda module, args, out, fake=fake: fake(out)))
    return FakeQuant(handles, [quantizers.get(conv) for conv in convs])


def _pre_hook(fake: Any) -> Any:
    return lambda module, args: (fake(args[0]),)


def detach(model: torch.nn.Module, fake: FakeQuant) -> None:
    """Back to a plain float ResNet holding the tuned (unquantized) weights."""
    import torch
    from torch.nn.utils import parametrize

    for handle in fake.handles:
        handle.remove()
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        if parametrize.is_parametrized(conv):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)


def tune(onnx_path: str | os.PathLike[str], qdq_path: str | os.PathLike[str], images: np.ndarray,
         normalization: dict[str, Any], *, steps: int, seed: int = 0, log: Log = info) -> dict[str, Any]:
    """Scales and biases for the TensorRT-flavour QDQ file `qdq_path` of the FP32 `onnx_path` that
    bring its logits closer to FP32's, the weights left as they are.

    `steps` Adam steps, each on TUNE_BATCH of `images` (uint8 [N, 32, 32, 3], the calibration
    images) augmented as in training, minimize the mean squared logit error between FP32 and the
    fake-quantized model, training each quantized Conv input's scale (LSQ, from the calibrated one)
    and the bias of every Conv and of the FC (the mean error each layer adds, absorbed where it
    arises). Rounding noise is what INT8 costs here, so the scales trade clipping against it by its
    effect on the logits instead of by a histogram. Returns {"conv_input_scales": [scale | None per
    Conv in graph order], "conv_bias_shifts": [[C_out floats] per Conv], "fc_bias_shift": [10
    floats], "logit_mse": {"calibrated", "tuned"}} (the MSE on `images`, unaugmented).
    """
    import copy

    torch = require("torch")
    teacher = folded_from_onnx(onnx_path)
    student = copy.deepcopy(teacher)
    fake = attach(student, *qdq_scales(qdq_path), learn_scales=True)
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # uint8 [N, 3, 32, 32]

    def mse() -> float:
        with torch.no_grad():
            return float(sum(((student(x) - teacher(x)) ** 2).sum() for x in
                             (augment.normalize(nchw[i:i + EVAL_BATCH], normalization)
                              for i in range(0, len(nchw), EVAL_BATCH)))
                         / (len(nchw) * teacher.num_classes))

    scales = [q.scale for q in fake.conv_inputs if q is not None]
    biases = [bn.bias for _, bn in conv_bn_pairs(student)] + [student.fc.bias]
    start = [b.detach().clone() for b in biases]
    for p in student.parameters():
        p.requires_grad_(False)
    for b in biases:
        b.requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": scales, "lr": TUNE_LR_SCALES}, {"params": biases, "lr": TUNE_LR_BIASES}])
    peaks = [group["lr"] for group in optimizer.param_groups]
    calibrated = mse()
    log(f"tuning {len(scales)} activation scales and the biases on {len(nchw)} calibration images, {steps} "
        f"steps of {TUNE_BATCH}: logit MSE against FP32 {calibrated:.5f} calibrated")
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for step in range(steps):
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = augment.normalize(augment.augment(nchw[torch.randint(len(nchw), (TUNE_BATCH,), generator=generator)],
                                              generator), normalization)
        with torch.no_grad():
            target = teacher(x)
        loss = torch.nn.functional.mse_loss(student(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for s in scales:
                s.clamp_(min=1e-8)  # a scale at or below 0 quantizes nothing
        if (step + 1) % max(1, steps // 5) == 0 and step + 1 < steps:
            log(f"  step {step + 1}/{steps}: batch logit MSE {loss.item():.5f} "
                f"({time.perf_counter() - started:.0f} s)")
    tuned = mse()
    log(f"tuned: logit MSE against FP32 {tuned:.5f} on the calibration images ({time.perf_counter() - started:.0f} s)")
    shifts = [(b.detach() - b0).tolist() for b, b0 in zip(biases, start)]
    return {"conv_input_scales": [None if q is None else float(q.scale.detach()) for q in fake.conv_inputs],
            "conv_bias_shifts": shifts[:-1], "fc_bias_shift": shifts[-1],
            "logit_mse": {"calibrated": calibrated, "tuned": tuned}}


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        logits = torch.cat([model(augment.normalize(images[i:i + EVAL_BATCH]))
                            for i in range(0, len(images), EVAL_BATCH)])
    return accuracy_pct(logits.numpy(), labels, "the fine-tuned model")


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
    fake = attach(model, *qdq_scales(qdq_path))
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
    detach(model, fake)
    log(f"QAT: keeping epoch {best['epoch']} ({best['val_acc']:.2f}% on the validation split)")
    from rtk.fileio import sha256_file

    recipe = {"qat": {"from_checkpoint_sha256": sha256_file(checkpoint), "qdq": Path(qdq_path).name,
                      "epochs": epochs, "kept_epoch": best["epoch"], "lr": lr, "batch_size": BATCH,
                      "steps_per_epoch": steps_per_epoch, "seed": seed, "history": history}}
    return checkpoints.save(out, model, split=split, recipe=recipe,
                            metrics={"val_acc": best["val_acc"], "test_acc": None})
