"""Does fine-tuning with fake quantization bring the TensorRT flavour closer to FP32? A probe for
docs/quantization.md (the error budget), not a stage of rtk.

The student is the checkpoint with rtk.qat's fake quantization attached (BN folded, the Q/DQ and
scales of a TensorRT-flavour QDQ file); the loss is distillation, KL(FP32 softmax || student softmax)
on the same augmented training images, because the target is agreement with the FP32 model, not the
labels (`rtk quantize --qat-epochs` trains on labels). Every `--every` steps it prints, on the first
`--val-images` images of the validation split, the student's top-1 agreement with FP32, its mean
squared logit error (the error budget's measure) and its accuracy.

    RTK_DATA_DIR=/path/to/cifar-10-batches-py python scripts/qat_distill_probe.py \
        --checkpoint rtk/weights/resnet20.pt --qdq runs/resnet20/model.int8.tensorrt.onnx \
        --optimizer sgd --lr 1e-3 --steps 2106 --every 351
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from rtk import augment
from rtk import checkpoint as checkpoints
from rtk.qat import BATCH, attach, fold_batchnorm, qdq_scales, training_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--qdq", required=True, help="a TensorRT-flavour QDQ file of the checkpoint")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak; cosine to 0 over the steps")
    parser.add_argument("--steps", type=int, default=351)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--val-images", type=int, default=2000)
    args = parser.parse_args()

    torch.manual_seed(0)
    student, checkpoint = checkpoints.load(args.checkpoint)
    teacher, _ = checkpoints.load(args.checkpoint)
    teacher.eval()
    _, (train_x, _), (val_x, val_y) = training_split(checkpoint)
    val_x, val_y = val_x[:args.val_images], val_y[:args.val_images]
    fold_batchnorm(student)
    attach(student, *qdq_scales(args.qdq))
    student.eval()  # BN folded and frozen

    def outputs(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(augment.normalize(val_x[i:i + 500])) for i in range(0, len(val_x), 500)])

    reference = outputs(teacher)
    start = time.perf_counter()

    def report(step: int, loss: float | None) -> None:
        out = outputs(student)
        agreement = 100 * float((out.argmax(1) == reference.argmax(1)).float().mean())
        accuracy = 100 * float(np.mean(out.argmax(1).numpy() == val_y))
        print(f"step {step} ({time.perf_counter() - start:.0f} s{'' if loss is None else f', loss {loss:.5f}'}): "
              f"agreement {agreement:.2f}%, logit MSE {float(((out - reference) ** 2).mean()):.4f}, "
              f"accuracy {accuracy:.2f}% (FP32 {100 * float(np.mean(reference.argmax(1).numpy() == val_y)):.2f}%)",
              flush=True)

    report(0, None)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(params, lr=args.lr) if args.optimizer == "adam" else
                 torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True))
    generator = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        x = augment.normalize(augment.augment(train_x[torch.randint(len(train_x), (BATCH,), generator=generator)],
                                              generator))
        with torch.no_grad():
            target = torch.log_softmax(teacher(x), 1)
        loss = torch.nn.functional.kl_div(torch.log_softmax(student(x), 1), target, log_target=True,
                                          reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % args.every == 0:
            report(step + 1, loss.item())


if __name__ == "__main__":
    main()
