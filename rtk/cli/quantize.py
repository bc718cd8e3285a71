"""`rtk quantize`: model.onnx -> model.int8.<target>.onnx (calibrated on CIFAR-10) and model.fp16.onnx."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from rtk import limits
from rtk.cli import main
from rtk.cli.options import Finite, OutputPath, data_dir_option, depth_option, runs_dir_option
from rtk.errors import RtkError
from rtk.names import CALIBRATION_METHODS, INT8_TARGETS, TUNE_STEPS
from rtk.pipeline import RunPaths

ALL = "all"
DEFAULT_DEPTH = 20


@main.command()
@depth_option(default=None)
@click.option("--target", type=click.Choice([*INT8_TARGETS, ALL]), default=ALL, show_default=True,
              help="INT8 flavour: tensorrt (symmetric, Q/DQ on the Conv inputs, the first two Convs float) or cpu "
                   "(U8S8 for onnxruntime and OpenVINO; the stem float, which costs onnxruntime a third of its speed: "
                   "docs/quantization.md); both with scales and biases tuned.")
@click.option("--method", type=click.Choice([*CALIBRATION_METHODS, ALL]), default=CALIBRATION_METHODS[0],
              show_default=True,
              help="Calibration method. 'all' writes model.int8.<target>.<method>.onnx for each, to compare "
                   "(rtk build reads model.int8.tensorrt.onnx).")
@click.option("--precision", type=click.Choice(["int8", "fp16", ALL]), default="int8", show_default=True,
              help="int8: the QDQ models; fp16: model.fp16.onnx (FP32 inputs and outputs); all: both.")
@click.option("--fp16", "fp16_only", is_flag=True, help="Same as --precision fp16.")
@click.option("--num-images", type=click.IntRange(10, limits.TRAIN_IMAGES - limits.VALIDATION_IMAGES), default=1024, show_default=True,
              help="Calibration images, class-balanced, from the training split only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which calibration images.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="FP32 ONNX to start from (its depth is read from its metadata); outputs go beside it "
                   "[default: runs/resnet<depth>/model.onnx, "
                   "exported from the checkpoint if missing].")
@click.option("--out", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="File to write, when exactly one model is asked for.")
@click.option("--calib-dir", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Calibration manifests: read here, else among those shipped with rtk (the shipped weights'); "
                   "a new or changed one is written here [env RTK_CALIB_DIR; default: calib].")
@click.option("--max-drop", "max_drop", type=Finite(min=0), default=None,
              help="Mixed precision: leave the fewest, cheapest Convs float so that INT8 loses at most this many "
                   "points against FP32 on the validation split (chosen there; the test set only reports).")
@click.option("--qat-epochs", type=click.IntRange(min=1), default=None,
              help="Quantization-aware fine-tuning: this many epochs on the training split with the TensorRT "
                   "flavour's Q/DQ simulated, from the calibrated scales; writes model.int8.tensorrt.qat.onnx and "
                   "the tuned checkpoint model.int8.tensorrt.qat.pt (the epoch kept is chosen on validation).")
@click.option("--tune-steps", type=click.IntRange(min=0), default=None,
              help=f"Adam steps that tune each INT8 flavour's activation scales and biases (not the weights) "
                   f"toward FP32's logits on the calibration images (on CUDA when present); kept in the calibration "
                   f"manifest and reused (the shipped models' come with rtk) [default: {TUNE_STEPS}, 5 to 45 min a "
                   f"flavour for ResNet-20 to -56 on 2 CPU cores; 0: the calibrated ranges].")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Validate each model against FP32 on the 10,000 test images (onnxruntime, CPU).")
@data_dir_option
@runs_dir_option
def quantize(depth: int | None, target: str, method: str, precision: str, fp16_only: bool, num_images: int, seed: int,
             onnx_path: Path | None, out: Path | None, calib_dir: Path | None, max_drop: float | None,
             qat_epochs: int | None, tune_steps: int | None, verify: bool, data_dir: str | None,
             runs_dir: str) -> None:
    """Calibrate INT8 on CIFAR-10 training images and write QDQ models; or convert to FP16.

    Each model is validated on the real test set and its figures stored beside it as <model>.json;
    the calibration (images, data checksum, ranges, scales) goes to calib/ and is reused next time.
    """
    from rtk import quantize as stage
    from rtk.fileio import check_output
    from rtk.pipeline import ensure_onnx, run_paths

    if fp16_only and precision != "fp16" and \
            click.get_current_context().get_parameter_source("precision") is not ParameterSource.DEFAULT:
        raise click.UsageError(f"--fp16 and --precision {precision} contradict each other: give one")
    precision = "fp16" if fp16_only else precision
    targets = list(INT8_TARGETS) if target == ALL else [target]
    methods = list(CALIBRATION_METHODS) if method == ALL else [method]
    jobs: list[tuple[str, str, str]] = []  # (precision, target, method)
    if precision in ("int8", ALL):
        jobs += [("int8", t, m) for t in targets for m in methods]
    if precision in ("fp16", ALL):
        jobs.append(("fp16", "", ""))
    if max_drop is not None and precision == "fp16":
        raise click.UsageError("--max-drop chooses which Convs stay out of INT8: it needs --precision int8 or all")
    if qat_epochs is not None and (precision != "int8" or target != "tensorrt" or method == ALL or max_drop is not None):
        raise click.UsageError("--qat-epochs fine-tunes for the TensorRT flavour: use it with --target tensorrt, "
                               "one --method, --precision int8 and without --max-drop")
    if tune_steps is not None and (qat_epochs is not None or precision == "fp16"):
        raise click.UsageError("--tune-steps tunes the INT8 models' calibrated scales: not with --qat-epochs "
                               "(it trains from the calibrated scales) or --precision fp16")
    if out is not None and len(jobs) > 1:
        raise click.UsageError("--out names one file: choose one --target and --method, or --fp16")

    depth = _depth(depth, onnx_path)
    paths = RunPaths(depth, onnx_path.parent) if onnx_path is not None else run_paths(depth, runs_dir)
    destinations = [_destination(paths, kind, flavour, calibration, out, qat_epochs, len(methods))
                    for kind, flavour, calibration in jobs]
    for destination in destinations:  # before the export, calibration and validation they would follow
        for path in (destination, stage.validation_path(destination),
                     *([destination.with_suffix(".pt")] if qat_epochs else [])):
            check_output(path)
    source = onnx_path or ensure_onnx(paths, data_dir=data_dir)
    rows: list[tuple[Path, str, dict | None, str | None]] = []  # file, method, figures, why not written
    for (kind, flavour, calibration), destination in zip(jobs, destinations):
        try:
            if kind == "fp16":
                stage.convert_fp16(source, destination, data_dir=data_dir, verify=verify)
            elif qat_epochs:
                from rtk.pipeline import qat_int8

                qat_int8(paths, source, destination, epochs=qat_epochs, method=calibration, data_dir=data_dir,
                         num_images=num_images, seed=seed, calib_dir=calib_dir, verify=verify)
            else:
                stage.quantize_int8(source, destination, target=flavour, method=calibration, data_dir=data_dir,
                                    num_images=num_images, seed=seed, calib_dir=calib_dir, verify=verify,
                                    max_validation_drop=max_drop, tune_steps=tune_steps)
        except stage.AccuracyDropError as exc:  # the others still run: --method all is for comparing
            rows.append((destination, calibration, exc.figures, str(exc)))
            continue
        record = stage.validation_path(destination)
        rows.append((destination, calibration, json.loads(record.read_text()) if record.is_file() else None, None))
    _print_summary(rows)
    for path, _, _, refused in rows:
        if refused is None:
            click.echo(str(path))
    refusals = [refused for *_, refused in rows if refused is not None]
    if refusals:
        raise RtkError(f"not written, too much accuracy lost against FP32: {'; '.join(refusals)}")


def _destination(paths: RunPaths, kind: str, flavour: str, method: str, out: Path | None, qat_epochs: int | None,
                 methods: int) -> Path:
    """The file one job writes: --out, else the run's name for it (with the method when several run)."""
    if out is not None:
        return out
    if kind == "fp16":
        return paths.fp16_onnx
    default = paths.int8_onnx(flavour)
    return default.with_suffix(".qat.onnx") if qat_epochs else default if methods == 1 else \
        default.with_suffix(f".{method}.onnx")


def _depth(depth: int | None, onnx_path: Path | None) -> int:
    """--onnx FILE: the depth its rtk metadata records (a contradicting --depth is refused);
    else --depth, default 20."""
    if onnx_path is None:
        return depth or DEFAULT_DEPTH
    from rtk.onnx_meta import read_metadata

    recorded = read_metadata(onnx_path).get("depth")
    if recorded is None:
        return depth or DEFAULT_DEPTH  # no rtk metadata: quantize itself says so
    if depth is not None and depth != recorded:
        raise RtkError(f"--depth {depth} contradicts {onnx_path}, a ResNet-{recorded} model by its metadata; "
                       "drop --depth")
    return int(recorded)


def _print_summary(rows: list[tuple[Path, str, dict | None, str | None]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from rtk.report import TABLE_WIDTH
    from rtk.stats import brief

    folders = sorted({str(path.parent) for path, *_ in rows})
    table = Table(title=f"{', '.join(folders)} (test set, onnxruntime CPU)")
    table.add_column("model", overflow="fold")
    table.add_column("method", no_wrap=True)
    for column in ("accuracy", "vs FP32", "fixed/broken, p", "agreement", "KL to FP32"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("written", no_wrap=True)
    for path, method, figures, refused in rows:
        written = refused is None
        cells = (["-"] * 5 if figures is None else
                 [f"{figures['accuracy_pct']:.2f}%", f"{figures['delta_pct']:+.2f}", brief(figures.get("evidence")),
                  f"{figures['top1_agreement_pct']:.2f}%",
                  f"{figures['kl_to_reference']:.5f}"])
        table.add_row(path.name, method or "-", *cells, "yes" if written else "no", style=None if written else "red")
    # Piped output is 80 columns wide, which squeezed the model column to one letter a line.
    Console(width=max(Console().width, TABLE_WIDTH)).print(table)

