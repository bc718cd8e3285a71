"""`rtk export`: checkpoint -> runs/resnet<depth>/model.onnx, validated against torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rtk import limits
from rtk.cli import main
from rtk.cli.options import BATCH, OutputPath, data_dir_option, depth_option, images, runs_dir_option
from rtk.onnx_meta import MIN_OPSET, OPSET

if TYPE_CHECKING:
    from rtk.export import Validation

DEFAULT_DEPTH = 20


@main.command()
@depth_option(default=None)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint to export [default: runs/resnet<depth>/checkpoint.pt, else the shipped "
                   "weights]. Without --depth: the checkpoint's depth, or 20 when no checkpoint is given.")
@click.option("--out", type=OutputPath(), default=None,
              help="ONNX file to write, or a folder (existing, or named with a trailing /) to write "
                   "model.onnx in [default: runs/resnet<depth>/model.onnx].")
@click.option("--fixed-batch", type=BATCH, default=None, metavar="N",
              help="Export a fixed batch of N instead of a dynamic batch axis.")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=OPSET, show_default=True,
              help="ONNX opset; the default is the newest TensorRT 10 reads.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare onnxruntime against torch after the export (the graph checks always run).")
@click.option("--num-images", type=images(limits.TEST_IMAGES, "the test set"), default=512, show_default=True,
              help="Images for the comparison: CIFAR-10 test images when found, else random ones.")
@data_dir_option
@runs_dir_option
def export(depth: int | None, checkpoint: Path | None, out: str | None, fixed_batch: int | None,
           opset: int, verify: bool, num_images: int, data_dir: str | None, runs_dir: str) -> None:
    """Export a checkpoint to ONNX and check it against PyTorch.

    Writes one self-contained file: input "input" float32 [N,3,32,32], output "logits" [N,10],
    BN folded, the option-A shortcuts as Slice + Pad, rtk metadata (normalization, classes, checkpoint
    sha256, accuracy). The file is written only if it passes; see `rtk info` to inspect it.
    """
    from rtk.checkpoint import read
    from rtk.export import export_onnx
    from rtk.pipeline import ensure_checkpoint, run_paths

    if depth is None:
        depth = read(checkpoint)["model"]["depth"] if checkpoint is not None else DEFAULT_DEPTH
    paths = run_paths(depth, runs_dir)
    source = ensure_checkpoint(paths, checkpoint)
    written = export_onnx(source, _out_file(out) or paths.onnx, depth=depth, data_dir=data_dir,
                          batch_size=fixed_batch, opset=opset, verify=verify,
                          num_images=num_images, on_validation=_print_validation)
    click.echo(str(written))


def _out_file(out: str | None) -> Path | None:
    """--out as a file: a folder (one that exists, or a name ending in a separator, which Path would
    drop) gets model.onnx inside it, never a file of the folder's name."""
    if out is None:
        return None
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return Path(out) / "model.onnx"
    return Path(out)


def _print_validation(validation: Validation) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ONNX vs PyTorch on {validation.source}")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("limit", justify="right")
    # A logit fails only when it is beyond both: max(atol, rtol * the image's largest |logit|).
    table.add_row("max abs diff", f"{validation.max_abs_diff:.2e}", f"atol {validation.atol:g}")
    table.add_row("max diff / logit scale", f"{validation.max_rel_diff:.2e}", f"rtol {validation.rtol:g}")
    table.add_row("top-1 agreement", f"{validation.top1_agreement:.2%}", "100%")
    table.add_row("onnxruntime batches", ", ".join(map(str, validation.batch_sizes)), "")
    table.add_row("result", "pass" if validation.passed else "FAIL", "",
                  style="bold green" if validation.passed else "bold red")
    Console().print(table)
