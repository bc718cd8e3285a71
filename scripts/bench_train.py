#!/usr/bin/env python
"""Training throughput of rtk's step against a plain PyTorch loop, in one run, same machine.

Same model (ResNet-<depth>), same batch, random data. The plain loop is what a user writes first:
float inputs already on the device, eager fp32, SGD. rtk's step does its real work on top: it takes
uint8 images, augments (crop + flip) and normalizes them as batched tensor ops, and on CUDA runs
bf16 autocast with channels_last and a fused optimizer. Variants are timed in interleaved blocks
(plain, rtk, plain, rtk, ...) after a warm-up, and the median block gives images/s, so drift of the
machine hits every variant alike. CUDA blocks are timed with CUDA events after synchronisation.

    python scripts/bench_train.py --device cpu                  # ratio rtk / plain, must be >= 0.95
    python scripts/bench_train.py --device cuda --compile reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rtk.fileio import provenance, write_text_atomic
from rtk.model import ResNet
from rtk.train import TrainConfig, Trainer


def plain_step_fn(depth: int, batch: int, device: torch.device):
    model = ResNet(depth).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def rtk_step_fn(depth: int, batch: int, device: torch.device, compile_mode: str):
    trainer = Trainer(TrainConfig(depth=depth, batch_size=batch, device=device.type, compile=compile_mode))
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)

    def step() -> None:
        trainer.train_step(images, labels, 0.1, gen)

    return step


def time_block(step, steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - begin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
                        help="also time rtk's step under torch.compile with this mode")
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks per variant")
    parser.add_argument("--steps", type=int, default=None, help="steps per block [cpu 5, cuda 100]")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant [cpu 3, cuda 30]")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    steps = args.steps or (100 if device.type == "cuda" else 5)
    warmup = args.warmup or (30 if device.type == "cuda" else 3)
    if device.type == "cuda":
        # Plain eager fp32 as torch does by default; say so, since TF32 would change the baseline.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True  # torch's default for convolutions

    variants = {"plain eager fp32": plain_step_fn(args.depth, args.batch_size, device),
                "rtk": rtk_step_fn(args.depth, args.batch_size, device, "off")}
    if args.compile != "off":
        variants[f"rtk compile={args.compile}"] = rtk_step_fn(args.depth, args.batch_size, device, args.compile)
    for name, step in variants.items():
        began = time.perf_counter()
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"warm-up {name}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
    blocks: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.blocks):
        for name, step in variants.items():
            blocks[name].append(time_block(step, steps, device))

    results = {}
    for name, times in blocks.items():
        per_step = statistics.median(times) / steps
        results[name] = {"ms_per_step": 1e3 * per_step, "images_per_s": args.batch_size / per_step,
                         "block_seconds": times}
    base = results["plain eager fp32"]["images_per_s"]
    for name, r in results.items():
        r["ratio_vs_plain"] = r["images_per_s"] / base
        r["paper_64k_iterations_min"] = r["ms_per_step"] * 64_000 / 6e4
    report = {
        "depth": args.depth, "batch_size": args.batch_size, "device": args.device,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "steps_per_block": steps, "blocks": args.blocks,
        "results": results, "provenance": provenance("torch"), "command": " ".join(sys.argv),
    }
    for name, r in results.items():
        print(f"{name:28s} {r['ms_per_step']:8.2f} ms/step {r['images_per_s']:10,.0f} img/s "
              f"ratio {r['ratio_vs_plain']:.3f}  (64k iterations: {r['paper_64k_iterations_min']:.1f} min)")
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
