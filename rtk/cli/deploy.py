"""`rtk deploy triton` (alias `rtk export-triton`): a Triton Inference Server model repository."""

from __future__ import annotations

import copy
from pathlib import Path

import click

from rtk.cli import main
from rtk.cli.options import BATCH, OutputPath, data_dir_option, depth_option, runs_dir_option
from rtk.deploy import DEFAULT_MAX_QUEUE_DELAY_US, DEFAULT_ONNX_MAX_BATCH


@main.group()
def deploy() -> None:
    """Serve rtk models with an existing inference server."""


@deploy.command()
@depth_option()
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Which model to serve [default: fp32; with --source, the file's own].")
@click.option("--source", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An .onnx file, or a TensorRT engine (.plan) with its .plan.json sidecar [default: "
                   "runs/resnet<depth>/model.<precision>.plan for --kind gpu if built, else the ONNX "
                   "of that precision, made from the checkpoint if missing].")
@click.option("--repo", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Model repository folder [default: <runs-dir>/triton].")
@click.option("--model-name", default=None,
              help="Folder and Triton name of the model [default: e.g. resnet20_fp32_onnx, resnet20_int8_trt].")
@click.option("--max-batch", type=BATCH, default=None,
              help=f"max_batch_size [default: the engine profile's max; {DEFAULT_ONNX_MAX_BATCH} for ONNX].")
@click.option("--preferred-batch", type=BATCH, multiple=True,
              help="A preferred dynamic batch size (repeatable) [default: the engine's opt and max "
                   "batch; none for ONNX].")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=DEFAULT_MAX_QUEUE_DELAY_US,
              show_default=True, help="How long Triton may hold a request to batch it with others.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances (per GPU for --kind gpu).")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Where the instances run (a TensorRT engine needs gpu).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint to export from when the ONNX is missing.")
@data_dir_option
@runs_dir_option
def triton(depth: int, precision: str | None, source: Path | None, repo: Path | None, model_name: str | None,
           max_batch: int | None, preferred_batch: tuple[int, ...], max_queue_delay_us: int, instances: int,
           kind: str, checkpoint: Path | None, data_dir: str | None, runs_dir: str) -> None:
    """Write a Triton model repository for an engine or an ONNX file.

    \b
    <repo>/<model>/config.pbtxt   platform, max batch, dynamic batching, instance group,
                                  input/output dims, preprocessing as parameters
    <repo>/<model>/labels.txt     class names (label_filename of the output)
    <repo>/<model>/README.md      how clients preprocess, and how to serve it
    <repo>/<model>/1/model.onnx   or 1/model.plan

    Prints the model folder. Serve it with `tritonserver --model-repository <repo>`.
    """
    from rtk.deploy import export_triton
    from rtk.pipeline import ensure_deploy_source, run_paths

    if source is None:
        source = ensure_deploy_source(run_paths(depth, runs_dir), precision or "fp32", kind,
                                      checkpoint=checkpoint, data_dir=data_dir)
    folder = export_triton(source, repo or Path(runs_dir) / "triton", model_name=model_name,
                           precision=precision, max_batch=max_batch, preferred_batch=preferred_batch,
                           max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind)
    click.echo(str(folder))


# The same command under a second name; its line in `rtk --help` says so instead of repeating
# `deploy`'s job as if it were another one.
alias = copy.copy(triton)
alias.short_help = "Same as `rtk deploy triton`: a Triton model repository."
main.add_command(alias, name="export-triton")
