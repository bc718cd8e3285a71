"""Options and option types shared by several commands, defined once."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from rtk import limits
from rtk.errors import RtkError
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


class OutputPath(click.Path):
    """click.Path for a file or folder a command writes: an empty value is a usage error when the
    option is parsed (`--out ''` named the current folder, found only after minutes of work)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path names nothing to write", param, ctx)
        return super().convert(value, param, ctx)


class Count(click.ParamType):
    """An integer within one of rtk.limits' bounds, checked when the option is parsed (before any work)."""

    name = "integer"

    def __init__(self, check: Callable[[int, str], Any]):
        self.check = check

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return self.check(int(value), param.opts[0] if param is not None else "the value")
        except ValueError:
            self.fail(f"{value!r} is not an integer", param, ctx)
        except RtkError as exc:
            self.fail(str(exc), param, ctx)


class Finite(click.FloatRange):
    """click.FloatRange that also refuses NaN and infinity (`--epochs inf`, `--max-drop nan`), which
    compare false with every bound and so passed it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def images(high: int, why: str) -> Count:
    """A count of images from 1 to `high`."""
    return Count(lambda value, what: limits.check_count(what, value, high, why))


THREADS = Count(limits.check_threads)
BATCH = Count(limits.check_batch)


def threads_option(help: str) -> Callable[[Any], Any]:
    return click.option("--threads", type=THREADS, default=None, help=f"{help} [at most the machine's CPUs].")


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=True, dir_okay=True), envvar="RTK_DATA_DIR",
    default=None,
    help="CIFAR-10: the cifar-10-batches-py folder, its parent, or the official .tar.gz "
         "[env RTK_DATA_DIR; default: the rtk cache, ~/.cache/rtk].")

runs_dir_option = click.option(
    "--runs-dir", type=OutputPath(file_okay=False), envvar="RTK_RUNS_DIR",
    default=lambda: str(default_runs_dir()), show_default="runs",
    help="Folder that holds runs/resnet<depth>/ [env RTK_RUNS_DIR].")
