"""`rtk bench`: accuracy and latency of every backend against the PyTorch FP32 baseline, in one run."""

from __future__ import annotations

from pathlib import Path

import click

from rtk import limits
from rtk.cli import main
from rtk.cli.options import (
    Finite,
    OutputPath,
    data_dir_option,
    depth_option,
    images,
    runs_dir_option,
    threads_option,
)
from rtk.errors import RtkError
from rtk.names import BACKENDS, BENCH_PRECISIONS


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,32,256, got {value!r}") from None
    if not sizes:
        raise click.BadParameter(f"expected comma-separated integers like 1,32,256, got {value!r}")
    try:
        return tuple(sorted({limits.check_batch(size, "every batch size") for size in sizes}))
    except RtkError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(context_settings={"show_default": True})
@click.option("--precision", type=click.Choice([*BENCH_PRECISIONS, "all"]), default="int8",
              help="Which precision rows to measure; `all`: fp32, fp16, bf16 and int8 where the backend "
                   "runs them. The torch FP32 eager baseline is always measured.")
@depth_option()
@click.option("--backend", type=click.Choice(BACKENDS),
              default="auto",
              help="auto: TensorRT where a CUDA device and TensorRT exist, else onnxruntime's CUDA provider "
                   "where onnxruntime-gpu is installed, else the fastest CPU backend installed (OpenVINO, "
                   "else onnxruntime); the choice and its reason are printed. tensorrt-rtx (TensorRT for RTX, "
                   "RTX GPUs) only when asked for.")
@click.option("--batch-sizes", callback=_batch_sizes, default=None,
              help="Comma-separated batch sizes [CPU: 1,32,256; CUDA: 1,256,4096].")
@click.option("--warmup", type=Finite(min=0), default=1.0,
              help="Seconds of warm-up per row and batch size, not timed (at least one call).")
@click.option("--duration", type=Finite(min=0, min_open=True), default=None,
              help="Seconds of timed calls per row and batch size (at least 5 calls) [3].")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Timed calls per row and batch size, instead of --duration.")
@threads_option("CPU threads for every backend [all cores this process may use]")
@click.option("--out", type=OutputPath(file_okay=False), default=None,
              help="Folder for bench.json, bench.md, bench.png [RUNS_DIR/resnet<depth>].")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint to start from [RUNS_DIR/resnet<depth>/checkpoint.pt, else the shipped weights].")
@click.option("--accuracy/--no-accuracy", default=True,
              help="Top-1 of every row on the CIFAR-10 test set (10,000 images).")
@click.option("--torch-compile/--no-torch-compile", default=True,
              help="CUDA only: include the torch.compile FP16 row (autotuning takes minutes).")
# Testing aid, hidden from --help (docs/benchmarks.md): accuracy on the first N test images only.
@click.option("--limit-images", type=images(limits.TEST_IMAGES, "the test set"), default=None, hidden=True)
@data_dir_option
@runs_dir_option
def bench(precision: str, depth: int, backend: str, batch_sizes: tuple[int, ...] | None, warmup: float,
          duration: float | None, iterations: int | None, threads: int | None, out: str | None,
          checkpoint: str | None, accuracy: bool, torch_compile: bool, limit_images: int | None,
          data_dir: str | None, runs_dir: str) -> None:
    """Benchmark ResNet-DEPTH on every backend against the PyTorch FP32 baseline, in one run.

    Missing artifacts (ONNX, INT8 QDQ, TensorRT engines) are made from the checkpoint first. Prints
    the tables and writes bench.json, bench.md and bench.png (see docs/benchmarks.md).
    """
    if duration is not None and iterations is not None:
        raise click.UsageError("give --duration or --iterations, not both")
    from rtk import bench as bench_stage
    from rtk import data, report
    from rtk.fileio import check_output
    from rtk.log import info

    out_dir = Path(out) if out else Path(runs_dir) / f"resnet{depth}"
    for name in report.REPORT_FILES:  # before minutes of exports, calibration and timing
        check_output(out_dir / name)
    # The test set (accuracy) and training images (INT8 calibration): fetched into the cache on a
    # fresh machine, so the README's first command works with nothing but a network.
    data_dir = str(data.ensure_data(data_dir))
    config = bench_stage.BenchConfig(
        depth=depth,
        precisions=BENCH_PRECISIONS if precision == "all" else (precision,),
        backend=backend,
        batch_sizes=batch_sizes,
        timing=bench_stage.TimingPlan(warmup_s=warmup, iterations=iterations,
                                      duration_s=None if iterations else (duration or 3.0)),
        threads=threads,
        checkpoint=Path(checkpoint) if checkpoint else None,
        data_dir=data_dir,
        runs_dir=runs_dir,
        accuracy=accuracy,
        limit_images=limit_images,
        torch_compile=torch_compile,
    )
    result = report.with_targets(bench_stage.run_bench(config, log=info).to_dict())
    paths = report.write_reports(result, out_dir)
    report.print_tables(result)
    for path in paths.values():
        click.echo(str(path))
