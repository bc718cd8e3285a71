"""The `rtk` command: a click group with one thin command per pipeline stage.

Commands live in one module each (rtk/cli/<stage>.py) and import their stage lazily, so `rtk --help`
needs neither torch nor onnx. Every RtkError becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click

from rtk import __version__
from rtk.errors import EXIT_ERROR, RtkError
from rtk.signals import Terminated, sigterm_raises

# The exit codes (README, "What rtk promises"): 0 done; EXIT_ERROR (1) an RtkError, or an OSError of
# the environment, or (silently) a closed stdout pipe; EXIT_CANNOT_RUN (2) a usage error (click's own
# code) or a missing optional package or device; 128 + N stopped by signal N, as a shell reports it.
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (click's CliRunner): nothing flushes it at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _check_working_folder() -> None:
    """Before any command (and torch, whose import from a deleted folder ends in "Intel oneMKL FATAL
    ERROR: Cannot load libtorch_cpu.so" and exit 2): the current folder must still exist."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise RtkError("the current folder no longer exists (it was deleted or moved away): cd into an existing "
                       "folder and run rtk again") from None


class RtkGroup(click.Group):
    """Turns user errors into one clear line and a non-zero exit, never a traceback.

    OSError is the environment's (a full or read-only disk, a permission, a closed pipe), never
    rtk's bug, so it gets one line too.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            _check_working_folder()
            with sigterm_raises():
                result = super().invoke(ctx)
                self._flush_stdout()
            return result
        except BrokenPipeError:  # the reader of stdout went away (`| head`): nobody to tell
            _silence_stdout()
            sys.exit(EXIT_ERROR)  # as click and rich end on a closed pipe
        except RtkError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Terminated:
            click.echo("terminated (SIGTERM)", err=True)
            sys.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(EXIT_ERROR)

    @staticmethod
    def _flush_stdout() -> None:
        """Results are block-buffered off a terminal: a full device (ENOSPC) shows at this flush."""
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            _silence_stdout()
            raise RtkError(f"cannot write the results to stdout: {exc.strerror or exc}") from exc


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
      --runtime tensorrt-rtx       -> runs/resnet20/model.int8.rtx.plan (TensorRT for RTX, any machine)
    rtk bench  --precision int8    -> runs/resnet20/bench.{json,md,png}

    Data: --data-dir or RTK_DATA_DIR (CIFAR-10 python layout); see `rtk data --help`.
    """


# Each module adds its command(s) to `main`; importing them is cheap (no heavy imports).
# Imported last because they import `main` from here.
from rtk.cli import arch, bench, build, compare, data, deploy, export, importer, info, quantize, train  # noqa: F401
