"""The INT8 arithmetic of rtk's QDQ files simulated in torch, for two uses:

    quantization-aware fine-tuning (finetune, `rtk quantize --qat-epochs`): the checkpoint trained on
        checkpoint.pt + model.int8.tensorrt.onnx (PTQ: where the Q/DQ are, their scales)
            -> fine-tune on the training split -> model.int8.tensorrt.qat.pt
    tuning (rtk.quantize.tuning.tune): the scales and biases of a QDQ file of either flavour
    (attach_qdq) trained toward FP32's logits on the calibration images, the weights left as they are

Fake quantization sits exactly where the QDQ file quantizes, with torch's own ops (straight-through
gradients): every Conv's weights symmetric per output channel (torch.fake_quantize_per_channel_affine,
scale max|w| / 127 as onnxruntime's quantizer computes it), every Conv's input and each residual
shortcut the file quantizes, per tensor (torch.fake_quantize_per_tensor_affine) at the scale the PTQ
file has for that tensor, read from its DequantizeLinear nodes; in fine-tuning those scales stay
fixed, so the QDQ file written from the tuned weights uses the same calibration. A Conv the file
leaves float stays float, and a shortcut it reads float (today's flavour) is not quantized. The CPU
flavour (U8S8, attach_cpu) quantizes tensors rather than Conv inputs: the image, every Conv's output
(ReLU folded into its zero point where one follows), every residual Add's output and each downsampling
shortcut's Pad, each read quantized by all its readers, unsigned with the file's zero point.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtk import augment, data
from rtk import checkpoint as checkpoints
from rtk.errors import RtkError, require
from rtk.limits import VALIDATION_IMAGES
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
            zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
            return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)

    return PerChannelInt8()


def _activation_fake_quant(scale: float, learn: bool, device: Any, zero_point: int = 0, signed: bool = True) -> Any:
    """Per-tensor INT8 [-128, 127] (`signed`) or UINT8 [0, 255] at `scale` and `zero_point`, on
    `device`; with `learn` the scale is a parameter (`.scale`, the zero point stays), trained by
    torch's LSQ op (the one torch.ao.quantization's _LearnableFakeQuantize runs): straight-through
    gradients for x, LSQ's for the scale."""
    import torch

    low, high = (-128, 127) if signed else (0, 255)

    class PerTensor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([scale], device=device), requires_grad=learn)
            self.register_buffer("zero_point", torch.tensor([float(zero_point)], device=device))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.scale.requires_grad:
                return torch._fake_quantize_learnable_per_tensor_affine(x, self.scale, self.zero_point, low, high, 1.0)
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale), zero_point, low, high)

    return PerTensor()


@dataclass
class FakeQuant:
    """What attach put on a model: the hook handles, and each Conv's input quantizer (None: float;
    the TensorRT layout) or, for attach_qdq, {ONNX tensor: its quantizer}."""

    handles: list[Any]
    conv_inputs: list[Any]
    tensors: dict[str, Any] = field(default_factory=dict)


def attach(model: torch.nn.Module, conv_scales: list[float | None], shortcut_scales: list[float | None], *,
           learn_scales: bool = False) -> FakeQuant:
    """Put the fake quantization on `model` (folded); with `learn_scales` the Conv inputs' scales are
    parameters (the shortcuts' stay as given)."""
    import torch
    from torch.nn.utils import parametrize

    from rtk.model import BasicBlock

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    device = next(model.parameters()).device
    if (len(convs), len(blocks)) != (len(conv_scales), len(shortcut_scales)):
        raise RtkError(f"the QDQ model has {len(conv_scales)} Convs and {len(shortcut_scales)} Adds; the "
                       f"checkpoint {len(convs)} and {len(blocks)}: not the same network")
    handles, quantizers = [], {}
    for conv, scale in zip(convs, conv_scales):
        if scale is None:  # left float
            continue
        parametrize.register_parametrization(conv, "weight", _weight_fake_quant())
        quantizers[conv] = _activation_fake_quant(scale, learn_scales, device)
        handles.append(conv.register_forward_pre_hook(_pre_hook(quantizers[conv])))
    for block, scale in zip(blocks, shortcut_scales):
        if scale is None:  # the Add reads the block input in float
            continue
        # the shortcut reads the block input as the QDQ file's Slices do: through the Q/DQ of conv1's
        # input (x itself for an identity shortcut), and is quantized again after Slice + Pad
        if block.conv1 in quantizers:
            handles.append(block.shortcut.register_forward_pre_hook(_pre_hook(quantizers[block.conv1])))
        fake = _activation_fake_quant(scale, False, device)
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


def attach_qdq(model: torch.nn.Module, qdq_path: str | os.PathLike[str], *, learn_scales: bool = False) -> FakeQuant:
    """The fake quantization of the QDQ file `qdq_path`, of either flavour (its rtk.int8_target), on
    `model` (folded); FakeQuant.tensors names each activation quantizer by the file's tensor."""
    from rtk.onnx_meta import read_metadata

    target = read_metadata(qdq_path).get("int8_target")
    if target == "cpu":
        return attach_cpu(model, qdq_path, learn_scales=learn_scales)
    if target != "tensorrt":
        raise RtkError(f"{qdq_path} is not an INT8 model rtk quantize wrote (rtk.int8_target {target!r})")
    fake = attach(model, *qdq_scales(qdq_path), learn_scales=learn_scales)
    graph = load_onnx(qdq_path).graph
    producer = {name: node for node in graph.node for name in node.output}
    sources = [_quantized_tensor(node.input[0], producer) for node in graph.node if node.op_type == "Conv"]
    fake.tensors = {name: quantizer for name, quantizer in zip(sources, fake.conv_inputs)
                    if name is not None and quantizer is not None}
    return fake


def _quantized_tensor(name: str, producer: dict[str, Any]) -> str | None:
    """The tensor whose QuantizeLinear -> DequantizeLinear pair writes `name`; None for any other."""
    dq = producer.get(name)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return str(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None


def attach_cpu(model: torch.nn.Module, qdq_path: str | os.PathLike[str], *, learn_scales: bool = False) -> FakeQuant:
    """The CPU flavour's fake quantization (U8S8) of `qdq_path` on `model` (folded): each tensor the
    file quantizes, where the ResNet computes it, for all its readers:

        image -> the stem Conv's input             Conv output (+ ReLU) -> its BatchNorm's output
        residual Add (+ ReLU) -> the block's output   downsampling Pad -> the block's shortcut output

    with the file's scale and zero point (unsigned); the weights of every Conv the file quantizes."""
    from onnx import numpy_helper
    from torch.nn.utils import parametrize

    from rtk.model import BasicBlock, ShortcutA

    graph = load_onnx(qdq_path).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    nodes = {op: [node for node in graph.node if node.op_type == op] for op in ("Conv", "Add", "Pad")}
    pairs = conv_bn_pairs(model)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    downsampling = [block for block in blocks if isinstance(block.shortcut, ShortcutA)]
    if [len(pairs), len(blocks), len(downsampling)] != [len(nodes[op]) for op in ("Conv", "Add", "Pad")]:
        raise RtkError(f"{qdq_path} is not a CPU-flavour file of this ResNet-{len(pairs) + 1} (Conv, Add, Pad counts)")
    sites: dict[str, tuple[Any, str]] = {
        graph.input[0].name: (model.conv1, "input"),
        **{node.output[0]: (bn, "output") for node, (_, bn) in zip(nodes["Conv"], pairs)},
        **{node.output[0]: (block, "output") for node, block in zip(nodes["Add"], blocks)},
        **{node.output[0]: (block.shortcut, "output") for node, block in zip(nodes["Pad"], downsampling)}}
    for node in graph.node:  # a float Conv's ReLU stays a node: its output quantized (zero point 0) is relu(out)
        if node.op_type == "Relu" and node.input[0] in sites:
            sites[node.output[0]] = sites[node.input[0]]
    device = next(model.parameters()).device
    handles, tensors = [], {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        if node.input[0] not in sites:
            raise RtkError(f"{qdq_path} quantizes {node.input[0]}, not a tensor rtk's CPU flavour quantizes")
        module, side = sites[node.input[0]]
        zero_point = constants[node.input[2]]
        fake = tensors[node.input[0]] = _activation_fake_quant(
            float(constants[node.input[1]].item()), learn_scales, device, int(zero_point.item()),
            signed=zero_point.dtype == np.int8)
        handles.append(module.register_forward_pre_hook(_pre_hook(fake)) if side == "input" else
                       module.register_forward_hook(lambda module, args, out, fake=fake: fake(out)))
    for (conv, _), node in zip(pairs, nodes["Conv"]):
        weight = producer.get(node.input[1])
        if weight is not None and weight.op_type == "DequantizeLinear":
            parametrize.register_parametrization(conv, "weight", _weight_fake_quant())
    return FakeQuant(handles, [], tensors)


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
    split = ckpt.get("split") or {"seed": 0, "val_size": VALIDATION_IMAGES}
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
