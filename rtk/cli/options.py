"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

from rtk.names import depth_problem
from rtk.pipeline import default_runs_dir


def _check_depth(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    problem = depth_problem(value) if value is not None else None
    if problem:
        raise click.BadParameter(problem)
    return value


def depth_option(default: int | None = 20, required: bool = False, help: str = "ResNet depth, 6n+2."):
    return click.option("--depth", type=int, default=default, show_default=default is not None,
                        required=required, callback=_check_depth, help=help)


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=True, dir_okay=True), envvar="RTK_DATA_DIR",
    default=None,
    help="CIFAR-10: the cifar-10-batches-py folder, its parent, or the official .tar.gz "
         "[env RTK_DATA_DIR; default: the rtk cache, ~/.cache/rtk].")

runs_dir_option = click.option(
    "--runs-dir", type=click.Path(file_okay=False), envvar="RTK_RUNS_DIR",
    default=lambda: str(default_runs_dir()), show_default="runs",
    help="Folder that holds runs/resnet<depth>/ [env RTK_RUNS_DIR].")
