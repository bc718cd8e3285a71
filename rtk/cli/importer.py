"""`rtk import`: weights of a CIFAR ResNet trained elsewhere -> runs/resnet<depth>/checkpoint.pt."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from rtk.cli import main
from rtk.cli.options import OutputPath, data_dir_option, depth_option, runs_dir_option
from rtk.names import IMPORT_FORMATS
from rtk.preprocess import MEAN, STD

if TYPE_CHECKING:
    from rtk.importer import Imported


def _rgb(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers R,G,B like 0.5,0.5,0.5, got {value!r}")
    return numbers


@main.command("import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@depth_option(default=None, required=True, help="Depth of the ResNet in SOURCE, 6n+2 (20, 32, 44, 56, 110, ...).")
@click.option("--out", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint to write [default: RUNS_DIR/resnet<depth>/checkpoint.pt].")
@click.option("--force", is_flag=True, help="Replace --out if it exists (never done without this).")
@click.option("--mean", callback=_rgb, default=None, metavar="R,G,B",
              help=f"Per-channel mean the weights were trained with, on the [0, 1] scale "
                   f"[default: rtk's CIFAR-10 statistics, {','.join(map(str, MEAN))}].")
@click.option("--std", callback=_rgb, default=None, metavar="R,G,B",
              help=f"Per-channel std, on the [0, 1] scale [default: {','.join(map(str, STD))}].")
@click.option("--format", "fmt", type=click.Choice(IMPORT_FORMATS), default="auto", show_default=True,
              help="Key layout of SOURCE: akamaster (pytorch_resnet_cifar10: layer1.0.conv1, ..., linear), "
                   "rtk, or state-dict (any names, mapped by the order and shape of every tensor); "
                   "auto tries the known layouts, then state-dict.")
@data_dir_option
@runs_dir_option
def import_(source: Path, depth: int, out: Path | None, force: bool, mean: tuple[float, ...] | None,
            std: tuple[float, ...] | None, fmt: str, data_dir: str | None, runs_dir: str) -> None:
    """Import the weights of an option-A CIFAR-10 ResNet trained elsewhere.

    SOURCE is a .th / .pt / .pth file written by torch.save: a state dict, or one under "state_dict"
    or "model" (with "module." / "_orig_mod." prefixes), saved on any device. It is read with
    weights_only=True, so a file that holds pickled code or objects is refused, never run.
    The checkpoint records the normalization, the source's sha256 and layout; when CIFAR-10 is found
    the accuracy on the test set is printed and stored. Every later stage then works on it
    (rtk export / quantize / bench --checkpoint).
    """
    from rtk.importer import import_weights
    from rtk.pipeline import run_paths

    result = import_weights(source, out or run_paths(depth, runs_dir).checkpoint, depth=depth, fmt=fmt,
                            mean=mean or MEAN, std=std or STD, data_dir=data_dir, overwrite=force)
    _print_summary(result)
    click.echo(str(result.path))


def _print_summary(result: Imported) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rtk import {result.source.name}", title_justify="left")
    table.add_column("")
    table.add_column("", overflow="fold")  # the whole sha256, folded rather than cut
    norm = result.normalization
    accuracy = (f"{result.test_acc:.2f}% on {result.test_images:,} CIFAR-10 test images"
                if result.test_acc is not None else "not checked (no CIFAR-10 found)")
    for key, value in [
        ("source sha256", result.sha256),
        ("read as", f"{result.layout} layout, state dict under {result.container}"
                    + (f", {' + '.join(result.prefixes)} removed" if result.prefixes else "")),
        ("model", f"ResNet-{result.depth}, {result.parameters:,} parameters"),
        ("normalization", f"mean {norm['mean']}, std {norm['std']} ({norm['channel_order']})"),
        ("test accuracy", accuracy),
    ]:
        table.add_row(key, value)
    Console().print(table)
