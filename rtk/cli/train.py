"""`rtk train`: the paper's recipe by default; `--recipe fast` for a GPU; DDP through torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from rtk import limits
from rtk.cli import main
from rtk.cli.options import BATCH, Finite, OutputPath, data_dir_option, depth_option, runs_dir_option


@main.command(context_settings={"show_default": True})
@depth_option()
@click.option("--recipe", type=click.Choice(["paper", "fast"]), default="paper",
              help="paper: He et al. (SGD 0.1, batch 128, /10 at 32k and 48k, 64k iterations). "
                   "fast: batch 512, bf16, one-cycle peak lr 0.4, Nesterov, wd 5e-4, 150 epochs (for GPUs). "
                   "Options below override the recipe.")
@click.option("--epochs", type=Finite(min=0, min_open=True), default=None,
              help="Length in epochs of the training split [recipe].")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Length in optimizer steps (wins over --epochs) [paper: 64000].")
@click.option("--batch-size", type=BATCH, default=None,
              help="Global batch, at most the training split [recipe].")
@click.option("--lr", type=Finite(min=0, min_open=True), default=None,
              help="Base (peak, for onecycle) learning rate [recipe].")
@click.option("--momentum", type=Finite(0, 1), default=None, help="[0.9]")
@click.option("--weight-decay", type=Finite(min=0), default=None, help="[recipe]")
@click.option("--nesterov/--no-nesterov", default=None, help="[recipe]")
@click.option("--schedule", type=click.Choice(["paper", "cosine", "onecycle"]), default=None,
              help="paper: lr/10 at 50% and 75% of the run (32k/48k of 64k) [recipe].")
@click.option("--seed", type=int, default=0, help="Weights, batch order and augmentation.")
@click.option("--split-seed", type=int, default=0, help="The 45k/5k train/validation split.")
@click.option("--val-size", type=click.IntRange(0, limits.TRAIN_IMAGES - 1), default=limits.VALIDATION_IMAGES,
              help="Validation images held out of the 50k; 0 trains on all 50k.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
              help="auto: bf16 autocast on CUDA, fp32 on CPU [recipe].")
@click.option("--compile", "compile_mode", default="off",
              type=click.Choice(["off", "default", "reduce-overhead", "max-autotune"]),
              help="torch.compile the model for training steps (CUDA: reduce-overhead adds CUDA graphs; "
                   "faster steps; the compile runs before the timed run, logged and kept apart as "
                   "compile_seconds in the metrics).")
@click.option("--out-dir", type=OutputPath(file_okay=False), default=None,
              help="Run folder [RUNS_DIR/resnet<depth>].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out-dir from its checkpoint, with its own options (only --device, "
                   "--compile and --data-dir may change; another length, batch, lr, ... is refused).")
@click.option("--overwrite", is_flag=True, help="Start anew in an --out-dir that holds a run (else refused).")
@click.option("--nproc", type=click.IntRange(min=1), default=1,
              help="Processes for DistributedDataParallel (re-runs this command under torchrun); "
                   "one per GPU, or gloo processes on the CPU.")
@click.option("--no-progress", is_flag=True, help="No progress bar; one line per epoch on stderr instead (the default off a terminal).")
@data_dir_option
@runs_dir_option
def train(depth: int, recipe: str, nproc: int, resume: bool, overwrite: bool, no_progress: bool, runs_dir: str,
          out_dir: str | None, compile_mode: str, **options: Any) -> None:
    """Train ResNet-DEPTH on CIFAR-10; writes checkpoint.pt, metrics.jsonl and curves.png.

    The final model is reported: validation accuracy every epoch, test accuracy once at the end
    (the test set never selects a model). Ctrl-C or SIGTERM finishes the step in progress and saves
    a checkpoint; --resume continues it. A folder that holds a run needs --resume or --overwrite.
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: choose one")
    from rtk import data

    # Fetched (into the cache) before any torchrun relaunch, so ranks never download at once.
    options["data_dir"] = str(data.ensure_data(options.get("data_dir")))
    if nproc > 1 and "RANK" not in os.environ:
        _relaunch_under_torchrun(nproc)
        return
    from rtk import checkpoint
    from rtk import train as train_stage

    out_dir = out_dir or str(Path(runs_dir) / f"resnet{depth}")
    if resume:
        # The run's own options; those given on the command line must agree with them.
        ctx = click.get_current_context()
        given = {name: value for name, value in {**options, "depth": depth, "recipe": recipe,
                                                 "compile": compile_mode}.items()
                 if ctx.get_parameter_source("compile_mode" if name == "compile" else name)
                 is not ParameterSource.DEFAULT}
        ckpt_path = Path(out_dir) / "checkpoint.pt"
        recipe_of_run = checkpoint.read(ckpt_path)["recipe"] if ckpt_path.is_file() else {}
        cfg = train_stage.resumed_config(recipe_of_run, {**given, "out_dir": out_dir,
                                                         "data_dir": options["data_dir"]})
    else:
        settings = train_stage.recipe_defaults(recipe)
        settings.update({k: v for k, v in options.items() if v is not None})
        cfg = train_stage.TrainConfig(depth=depth, recipe=recipe, compile=compile_mode, out_dir=out_dir, **settings)
    path = train_stage.train(cfg, resume=resume, show_progress=not no_progress, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(str(path))


def _relaunch_under_torchrun(nproc: int) -> None:
    """`rtk train --nproc N ...` == `torchrun --nproc_per_node=N -m rtk train ...`."""
    args: list[str] = []
    skip_value = False
    for arg in sys.argv[1:]:
        if skip_value:
            skip_value = False
        elif arg == "--nproc":
            skip_value = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "rtk", *args]
    sys.exit(subprocess.call(cmd))
