"""`rtk build`: the ONNX of a precision -> runs/resnet<depth>/model.<precision>.plan (TensorRT) or
model.<precision>.rtx.plan (TensorRT for RTX)."""

from __future__ import annotations

from pathlib import Path

import click

from rtk.build import PRECISIONS  # imports tensorrt only inside its functions
from rtk.cli import main
from rtk.cli.options import BATCH, OutputPath, data_dir_option, depth_option, runs_dir_option
from rtk.names import ENGINE_RUNTIMES


def _capabilities(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from rtk.build.rtx_builder import parse_compute_capability
    from rtk.errors import RtkError

    try:
        return tuple("{}.{}".format(*parse_compute_capability(text)) for text in value)
    except RtkError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option("--precision", type=click.Choice(PRECISIONS), required=True,
              help="fp32: model.onnx; fp16: model.fp16.onnx; int8: model.int8.tensorrt.onnx (QDQ). "
                   "The engine is strongly typed: its precision comes from that ONNX.")
@click.option("--runtime", type=click.Choice(ENGINE_RUNTIMES), default="tensorrt", show_default=True,
              help="tensorrt: on this machine's NVIDIA GPU, for GPUs like it; tensorrt-rtx: TensorRT for RTX, "
                   "ahead of time on any machine (no GPU needed), for RTX GPUs of --compute-capability.")
@click.option("--compute-capability", "compute_capabilities", multiple=True, metavar="MAJOR.MINOR",
              callback=_capabilities,
              help="tensorrt-rtx: a GPU the engine runs on (repeatable: 8.6 RTX 30, 8.9 RTX 40, 12.0 RTX 50, "
                   "7.5 RTX 20) [every one of Ampere and later that TensorRT for RTX names].")
@depth_option()
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="ONNX to build from [default: the run's file for --precision, made by export / quantize "
                   "if missing].")
@click.option("--out", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Engine to write [default: model.<precision>.plan, or model.<precision>.rtx.plan, beside "
                   "the ONNX].")
@click.option("--min-batch", type=BATCH, default=1, show_default=True)
@click.option("--opt-batch", type=BATCH, default=256, show_default=True,
              help="Batch the kernels are tuned for.")
@click.option("--max-batch", type=BATCH, default=1024, show_default=True)
@click.option("--workspace-mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Workspace memory pool limit.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="Builder optimization level (TensorRT's default is 3; 5 searches longest).")
@click.option("--timing-cache", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="tensorrt: timing cache read and updated by every build [default: timing.cache beside the "
                   "engine].")
@click.option("--tf32/--no-tf32", default=True, show_default=True,
              help="Let FP32 layers use TF32 math (TensorRT's default; off for closer FP32 comparisons).")
@data_dir_option
@runs_dir_option
def build(precision: str, runtime: str, compute_capabilities: tuple[str, ...], depth: int, onnx_path: Path | None,
          out: Path | None, min_batch: int, opt_batch: int, max_batch: int, workspace_mb: int, opt_level: int,
          timing_cache: Path | None, tf32: bool, data_dir: str | None, runs_dir: str) -> None:
    """Build an engine, its sidecar (.plan.json) and, for TensorRT, its per-layer report (.layers.json).

    TensorRT needs TensorRT, Polygraphy and an NVIDIA GPU; TensorRT for RTX needs tensorrt-rtx and
    Polygraphy, and no GPU. Without them it says so and exits 2 before making any input.
    """
    if compute_capabilities and runtime != "tensorrt-rtx":
        raise click.UsageError("--compute-capability is for --runtime tensorrt-rtx: a TensorRT engine is built "
                               "for the GPU it is built on")
    if timing_cache is not None and runtime == "tensorrt-rtx":
        raise click.UsageError("--timing-cache is for --runtime tensorrt: TensorRT for RTX takes no timing cache")
    from rtk.build import build_engine, builder_environment
    from rtk.fileio import check_output
    from rtk.pipeline import ensure_onnx_for, run_paths

    builder_environment(runtime)  # fail before exporting or calibrating inputs for an engine that cannot be built
    paths = run_paths(depth, runs_dir)
    engine = check_output(out or (onnx_path or paths.onnx_for(precision)).parent / paths.engine(precision, runtime).name)
    source = onnx_path or ensure_onnx_for(paths, precision, data_dir=data_dir)  # (build_engine checks the rest)
    written = build_engine(
        source, engine, precision=precision, runtime=runtime,
        compute_capabilities=compute_capabilities, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_mb=workspace_mb, optimization_level=opt_level, timing_cache=timing_cache, tf32=tf32)
    click.echo(str(written))
