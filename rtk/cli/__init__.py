"""The `rtk` command: a click group with one thin command per pipeline stage.

Commands live in one module each (rtk/cli/<stage>.py) and import their stage lazily, so `rtk --help`
needs neither torch nor onnx. Every RtkError becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from rtk import __version__
from rtk.errors import RtkError


class RtkGroup(click.Group):
    """Turns user errors into one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RtkError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=RtkGroup, context_settings={"auto_envvar_prefix": "RTK",
                                             "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rtk")
def main() -> None:
    """Train CIFAR-10 ResNets, export them to ONNX, calibrate INT8, build TensorRT engines and
    benchmark every backend against the PyTorch baseline.

    \b
    rtk train  --depth 20          -> runs/resnet20/checkpoint.pt
    rtk import FILE --depth 20     -> runs/resnet20/checkpoint.pt (weights trained elsewhere)
    rtk export --depth 20          -> runs/resnet20/model.onnx (validated against torch)
    rtk quantize --depth 20        -> runs/resnet20/model.int8.<target>.onnx, model.fp16.onnx
    rtk build  --precision int8    -> runs/resnet20/model.int8.plan (TensorRT)
    rtk bench  --precision int8    -> runs/resnet20/bench.{json,md,png}

    Data: --data-dir or RTK_DATA_DIR (CIFAR-10 python layout); see `rtk data --help`.
    """


# Each module adds its command(s) to `main`; importing them is cheap (no heavy imports).
# Imported last because they import `main` from here.
from rtk.cli import arch, bench, build, compare, data, deploy, export, importer, info, quantize, train  # noqa: F401
