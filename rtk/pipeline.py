"""The artifacts of one model and which stage makes each.

    runs/resnet<depth>/checkpoint.pt           rtk train       (or the weights shipped in rtk/weights/)
                                               rtk import      rtk.importer.import_weights (weights trained elsewhere)
    runs/resnet<depth>/model.onnx              rtk export      rtk.export.export_onnx
    runs/resnet<depth>/model.fp16.onnx         rtk quantize    rtk.quantize.convert_fp16
    runs/resnet<depth>/model.int8.<target>.onnx rtk quantize   rtk.quantize.quantize_int8 (target: tensorrt | cpu)
    runs/resnet<depth>/model.<precision>.plan  rtk build       rtk.build.build_engine (+ .plan.json sidecar)
    runs/resnet<depth>/model.<precision>.rtx.plan  rtk build --runtime tensorrt-rtx (TensorRT for RTX)
    runs/resnet<depth>/bench.{json,md,png}     rtk bench       rtk.bench

Stages never import each other; the `ensure_*` functions here produce a missing input from the
stage before it, saying what they do, so `rtk bench` can start from a checkpoint alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtk.errors import RtkError
from rtk.log import Log, info
from rtk.names import ENGINE_RUNTIMES, INT8_TARGETS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_runs_dir() -> Path:
    return Path(os.environ.get("RTK_RUNS_DIR", "runs"))


@dataclass(frozen=True)
class RunPaths:
    """Where the artifacts of ResNet-<depth> live."""

    depth: int
    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def fp16_onnx(self) -> Path:
        return self.root / "model.fp16.onnx"

    def int8_onnx(self, target: str) -> Path:
        if target not in INT8_TARGETS:
            raise RtkError(f"unknown INT8 target {target!r}; choose one of {', '.join(INT8_TARGETS)}")
        return self.root / f"model.int8.{target}.onnx"

    def onnx_for(self, precision: str) -> Path:
        """The ONNX a TensorRT engine of `precision` is built from (strongly typed: precision lives in the ONNX)."""
        return {"fp32": self.onnx, "fp16": self.fp16_onnx}.get(precision) or self.int8_onnx("tensorrt")

    def engine(self, precision: str, runtime: str = "tensorrt") -> Path:
        """model.<precision>.plan (TensorRT) or model.<precision>.rtx.plan (TensorRT for RTX): one of
        each can sit side by side."""
        if runtime not in ENGINE_RUNTIMES:
            raise RtkError(f"unknown engine runtime {runtime!r}; choose one of {', '.join(ENGINE_RUNTIMES)}")
        return self.root / f"model.{precision}{'.rtx' if runtime == 'tensorrt-rtx' else ''}.plan"


def run_paths(depth: int, runs_dir: str | os.PathLike[str] | None = None) -> RunPaths:
    return RunPaths(depth, Path(runs_dir or default_runs_dir()) / f"resnet{depth}")


def shipped_checkpoint(depth: int) -> Path | None:
    path = WEIGHTS_DIR / f"resnet{depth}.pt"
    return path if path.is_file() else None


def ensure_checkpoint(paths: RunPaths, checkpoint: Path | None = None, log: Log = info) -> Path:
    """An explicit checkpoint, else the run's own, else the weights shipped with rtk."""
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise RtkError(f"checkpoint not found: {checkpoint}")
        return Path(checkpoint)
    if paths.checkpoint.is_file():
        return paths.checkpoint
    shipped = shipped_checkpoint(paths.depth)
    if shipped is not None:
        log(f"using the ResNet-{paths.depth} weights shipped with rtk: {shipped}")
        return shipped
    raise RtkError(
        f"no checkpoint for ResNet-{paths.depth} at {paths.checkpoint}: train one with "
        f"`rtk train --depth {paths.depth}` or pass --checkpoint PATH"
    )


def _made_from(artifact: Path, checkpoint: Path, log: Log) -> bool:
    """Whether the ONNX file `artifact` exists and was made from `checkpoint` (its recorded
    rtk.checkpoint_sha256). A file left from other weights is reported and must be made again, or
    every row beside the torch baseline would measure the old model."""
    if not artifact.is_file():
        return False
    from rtk.fileio import sha256_file
    from rtk.onnx_meta import read_metadata

    if read_metadata(artifact).get("checkpoint_sha256") == sha256_file(checkpoint):
        return True
    log(f"{artifact} was made from other weights than {checkpoint}: making it again")
    return False


def ensure_onnx(paths: RunPaths, checkpoint: Path | None = None, data_dir: str | None = None,
                log: Log = info) -> Path:
    ckpt = ensure_checkpoint(paths, checkpoint, log)
    if _made_from(paths.onnx, ckpt, log):
        return paths.onnx
    log(f"exporting {paths.onnx} from {ckpt}")
    from rtk import export

    return export.export_onnx(ckpt, paths.onnx, depth=paths.depth, data_dir=data_dir, log=log)


def ensure_fp16_onnx(paths: RunPaths, checkpoint: Path | None = None, data_dir: str | None = None,
                     log: Log = info) -> Path:
    ckpt = ensure_checkpoint(paths, checkpoint, log)
    if _made_from(paths.fp16_onnx, ckpt, log):
        return paths.fp16_onnx
    onnx_path = ensure_onnx(paths, ckpt, data_dir, log)
    log(f"converting {onnx_path} to FP16: {paths.fp16_onnx}")
    from rtk import quantize

    return quantize.convert_fp16(onnx_path, paths.fp16_onnx, data_dir=data_dir, log=log)


def ensure_int8_onnx(paths: RunPaths, target: str, method: str = "percentile",
                     checkpoint: Path | None = None, data_dir: str | None = None,
                     log: Log = info) -> Path:
    out = paths.int8_onnx(target)
    ckpt = ensure_checkpoint(paths, checkpoint, log)
    if _made_from(out, ckpt, log):
        return out
    onnx_path = ensure_onnx(paths, ckpt, data_dir, log)
    log(f"calibrating INT8 ({target} flavour, {method}) from {onnx_path}: {out}")
    from rtk import quantize

    return quantize.quantize_int8(onnx_path, out, target=target, method=method,
                                  data_dir=data_dir, log=log)


def ensure_onnx_for(paths: RunPaths, precision: str, checkpoint: Path | None = None,
                    data_dir: str | None = None, log: Log = info) -> Path:
    if precision == "fp32":
        return ensure_onnx(paths, checkpoint, data_dir, log)
    if precision == "fp16":
        return ensure_fp16_onnx(paths, checkpoint, data_dir, log)
    if precision == "int8":
        return ensure_int8_onnx(paths, "tensorrt", checkpoint=checkpoint, data_dir=data_dir, log=log)
    raise RtkError(f"no ONNX flavour for precision {precision!r}")


def ensure_engine(paths: RunPaths, precision: str, checkpoint: Path | None = None,
                  data_dir: str | None = None, log: Log = info, runtime: str = "tensorrt",
                  **build_options: Any) -> Path:
    """The `runtime`'s engine of `precision`; a missing one is built with `build_options` (e.g. max_batch)."""
    out = paths.engine(precision, runtime)
    onnx_path = ensure_onnx_for(paths, precision, checkpoint, data_dir, log)
    if out.is_file():
        from rtk.engine_meta import read_sidecar
        from rtk.fileio import sha256_file

        if read_sidecar(out, verify_engine=False).get("onnx_sha256") == sha256_file(onnx_path):
            return out
        log(f"{out} was built from another {onnx_path}: building it again")
    log(f"building {'a TensorRT for RTX' if runtime == 'tensorrt-rtx' else 'a TensorRT'} {precision} engine "
        f"from {onnx_path}: {out}")
    from rtk import build

    return build.build_engine(onnx_path, out, precision=precision, runtime=runtime, log=log, **build_options)


def ensure_deploy_source(paths: RunPaths, precision: str, kind: str, checkpoint: Path | None = None,
                         data_dir: str | None = None, log: Log = info) -> Path:
    """What `rtk deploy` serves when no file is named: for a GPU the TensorRT engine of `precision`
    if it has been built, else the ONNX of that precision (made if missing; for INT8 the flavour
    that is fast on `kind`: tensorrt-style QDQ for a GPU, U8S8 for a CPU)."""
    if kind == "gpu" and paths.engine(precision).is_file():
        return paths.engine(precision)
    if precision == "int8":
        return ensure_int8_onnx(paths, "cpu" if kind == "cpu" else "tensorrt", checkpoint=checkpoint,
                                data_dir=data_dir, log=log)
    return ensure_onnx_for(paths, precision, checkpoint, data_dir, log)


def qat_int8(paths: RunPaths, onnx_path: Path, out: Path, *, epochs: int, method: str = "percentile",
             checkpoint: Path | None = None, data_dir: str | None = None, num_images: int = 1024, seed: int = 0,
             calib_dir: str | os.PathLike[str] | None = None, verify: bool = True, log: Log = info) -> Path:
    """The TensorRT-flavour QDQ model of a QAT-tuned checkpoint at `out`, and the checkpoint beside it
    (`out` with .pt): PTQ of `onnx_path` (untuned) for the Q/DQ and scales, rtk.qat.finetune, export of the tuned
    weights, quantize with the PTQ ranges (fixed in fine-tuning); validated against `onnx_path`."""
    import tempfile

    from rtk import export, qat, quantize
    from rtk.fileio import check_output, sha256_file
    from rtk.onnx_meta import read_metadata

    for written in (out, out.with_suffix(".pt")):
        check_output(written)  # before the minutes of fine-tuning
    ckpt = ensure_checkpoint(paths, checkpoint, log)
    if read_metadata(onnx_path).get("checkpoint_sha256") != sha256_file(ckpt):
        raise RtkError(f"{onnx_path} was not exported from {ckpt}: QAT fine-tunes the checkpoint the ONNX "
                       f"was exported from (put it beside the ONNX as checkpoint.pt)")
    with tempfile.TemporaryDirectory(prefix="rtk-qat-") as work:
        ptq = quantize.quantize_int8(onnx_path, Path(work) / "ptq.onnx", target="tensorrt", method=method,
                                     data_dir=data_dir, num_images=num_images, seed=seed, calib_dir=calib_dir,
                                     verify=False, tune_steps=0, log=log)
        manifest = quantize.manifest_named(read_metadata(ptq)["calibration"]["manifest"], calib_dir)
        tuned = qat.finetune(ckpt, ptq, out.with_suffix(".pt"), epochs=epochs, data_dir=data_dir, log=log)
        tuned_onnx = export.export_onnx(tuned, Path(work) / "model.qat.onnx", data_dir=data_dir,
                                        log=log)
        return quantize.quantize_int8(tuned_onnx, out, target="tensorrt", method=method, data_dir=data_dir,
                                      verify=verify, ranges_from=manifest, reference=onnx_path, log=log)
