"""Engines from the rtk ONNX files, for TensorRT and for TensorRT for RTX; the only package that builds
with tensorrt or tensorrt_rtx.

    model.onnx                -> model.fp32.plan        (+ model.fp32.plan.json sidecar; TensorRT also
    model.fp16.onnx           -> model.fp16.plan           model.fp32.layers.json, the inspector's report)
    model.int8.tensorrt.onnx  -> model.int8.plan
                              -> model.<precision>.rtx.plan with --runtime tensorrt-rtx

Strongly typed networks only: every layer's precision comes from the ONNX (FP16 weights and casts,
or QuantizeLinear/DequantizeLinear with calibrated scales), never from BuilderFlag.FP16/INT8 or a
calibrator, which TensorRT 11 removed and TensorRT for RTX never had. The same calls build on
TensorRT 10.x, where NetworkDefinitionCreationFlag.STRONGLY_TYPED turns strong typing on (11
deprecates the flag and renumbered it: it is looked up by name, and left out where a release no
longer has it).

The builder calls go through Polygraphy (NVIDIA's wrapper, released with each TensorRT and following
its API changes), one path for both runtimes (network.py): NetworkFromOnnxPath, PostprocessNetwork
(rtk's check of each Conv's precision on the parsed network, before the build, with no GPU),
CreateConfig or CreateConfigRTX, EngineBytesFromNetwork. Each runtime adds its own (tensorrt_builder.py:
the GPU, the timing cache, the inspector's report and gate; rtx_builder.py: a build process of its own,
the compute capabilities, the builder's messages). rtk's own here: the ONNX's precision and flavour, the
sidecar, and the atomic writes.

TF32: Polygraphy turns BuilderFlag.TF32 off unless asked; rtk asks for it by default (TensorRT's own
default): FP32 layers may round their inputs to 10-bit mantissas inside matrix products. `tf32=False`
(rtk build --no-tf32) clears it for an FP32 engine meant to match onnxruntime closely. torch's
defaults differ again (TF32 on for cuDNN convolutions, off for matmuls), so FP32 comparisons state
it; the sidecar records the choice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtk.engine_meta import FORMAT as ENGINE_FORMAT
from rtk.engine_meta import sidecar_path
from rtk.errors import RtkError, require, require_installed
from rtk.fileio import atomic_path, check_output, provenance, sha256_file, write_text_atomic
from rtk.log import Log, info
from rtk.names import with_article
from rtk.onnx_meta import check_finite_weights, load_onnx, read_metadata
from rtk.runtime.engines import TENSORRT, engine_runtime, running_environment

PRECISIONS = ("fp32", "fp16", "int8")
# 0.53.6 is the release for TensorRT 11.3, which knows 11's API changes (it reads the split inspector
# fields, sets flags 11 removed only on 10.x) and drives TensorRT for RTX (CreateConfigRTX);
# pyproject.toml pins the same range. A TensorRT without STRONGLY_TYPED makes its strongly_typed=True
# fail, hence rtk's own lookup by name.
POLYGRAPHY_MIN_VERSION = "0.53.6"


def builder_environment(runtime: str = TENSORRT.name) -> tuple[str, dict[str, str]] | None:
    """TensorRT: (its version, the GPU the engine is built for). TensorRT for RTX: None, after checking
    that it is installed; it needs no GPU, and it is imported by its build process alone
    (rtk.build.rtx_builder). MissingDependency (exit 2) for a missing package or device."""
    engine = engine_runtime(runtime)
    environment = None
    if engine is TENSORRT:
        environment = running_environment(engine)
    else:
        require_installed(engine.module, engine.extra)
    require("polygraphy", engine.extra, min_version=POLYGRAPHY_MIN_VERSION)
    return environment


def engine_sidecar(*, runtime_fields: Mapping[str, Any], precision: str, metadata: Mapping[str, Any],
                   inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], profile: Mapping[str, int],
                   onnx_sha256: str, engine_sha256: str, tf32: bool, optimization_level: int,
                   conv_precisions: Mapping[str, int], **extra: Any) -> dict[str, Any]:
    """The `<engine>.json` sidecar (format rtk.engine/1, rtk.engine_meta) that apps read instead of
    the ONNX; `runtime_fields`: "runtime" and what that runtime records (its version, the GPU or the
    compute capabilities)."""
    return {
        "format": ENGINE_FORMAT,
        **runtime_fields,
        "precision": precision,
        "depth": metadata["depth"],
        "inputs": inputs,
        "outputs": outputs,
        "profile": dict(profile),
        "onnx_sha256": onnx_sha256,
        "engine_sha256": engine_sha256,
        "normalization": metadata["normalization"],
        "classes": metadata["classes"],
        "tf32": tf32,
        "builder_optimization_level": optimization_level,
        "conv_precisions": dict(conv_precisions),
        **extra,
    }


def _checked_source(onnx_path: Path, precision: str) -> tuple[dict[str, Any], list[str]]:
    """(rtk metadata, the Convs an INT8 file leaves float) of an ONNX file an engine of `precision`
    may be built from; RtkError for one of another precision, the CPU INT8 flavour, or NaN weights."""
    metadata = read_metadata(onnx_path)
    if metadata.get("precision") != precision:
        raise RtkError(f"{onnx_path} is {with_article(str(metadata.get('precision')))} model, not {precision}: strongly "
                       f"typed engines take their precision from the ONNX (use `rtk quantize` to make it)")
    if metadata.get("int8_target") == "cpu":
        # TensorRT's ONNX parser refuses its INT32 bias DequantizeLinear ("input has type Int32 but must
        # have type FP8, FP4, Int4, Int8, or UInt8"; tests/test_rtx_build.py shows it), and TensorRT's
        # INT8 is symmetric where the CPU flavour's activations are unsigned with zero points
        raise RtkError(f"{onnx_path} is rtk's CPU flavour of INT8 (unsigned activations with zero points, INT32 "
                       "biases behind DequantizeLinear, QDQ on Add and Relu), which TensorRT's ONNX parser refuses; "
                       "build from the TensorRT flavour, model.int8.tensorrt.onnx (`rtk quantize --target tensorrt`)")
    check_finite_weights(load_onnx(onnx_path), onnx_path)
    float_convs = metadata.get("calibration", {}).get("float_convs", []) if precision == "int8" else []
    return metadata, [str(name) for name in float_convs]


def build_engine(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str], *, precision: str,
                 runtime: str = TENSORRT.name, compute_capabilities: Sequence[str] = (), log: Log = info,
                 min_batch: int = 1, opt_batch: int = 256, max_batch: int = 1024, workspace_mb: int = 1024,
                 optimization_level: int = 3, timing_cache: str | os.PathLike[str] | None = None,
                 tf32: bool = True) -> Path:
    """Build a strongly typed engine of `precision` from `onnx_path` (whose metadata must say the
    same precision) for batches min..max (tuned for opt), with `runtime` ("tensorrt" on this
    machine's GPU; "tensorrt-rtx" ahead of time for `compute_capabilities`, any machine); returns `out`.

    TensorRT's timing cache (default: timing.cache beside `out`) is read if present and written back,
    so later builds on the same GPU and TensorRT version skip the tactic timing they share.
    """
    if precision not in PRECISIONS:
        raise RtkError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    rtx = engine_runtime(runtime) is not TENSORRT
    if compute_capabilities and not rtx:
        raise RtkError("compute capabilities are chosen for TensorRT for RTX engines (--runtime tensorrt-rtx); "
                       "a TensorRT engine is built for the GPU it is built on")
    if timing_cache is not None and rtx:
        raise RtkError("TensorRT for RTX takes no timing cache (it has no effect there, and makes the build "
                       "query a GPU)")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise RtkError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    onnx_path, out = Path(onnx_path), check_output(out)
    written = [sidecar_path(out)]
    if not rtx:  # TensorRT's layer report and timing cache (rtk.build.tensorrt_builder)
        from rtk.build.inspector import layers_path
        from rtk.build.tensorrt_builder import timing_cache_path

        written += [layers_path(out), timing_cache_path(out, None if timing_cache is None else Path(timing_cache))]
    for path in written:
        check_output(path)  # before the build, not after it
    metadata, float_convs = _checked_source(onnx_path, precision)
    environment = builder_environment(runtime)
    batches = (min_batch, opt_batch, max_batch)
    if environment is None:
        from rtk.build import rtx_builder

        log(f"building {with_article(precision)} TensorRT for RTX engine from {onnx_path} "
            f"(batch {min_batch}/{opt_batch}/{max_batch}, compute capabilities "
            f"{', '.join(compute_capabilities) or 'Ampere and later'}, TF32 {'on' if tf32 else 'off'}, "
            f"optimization level {optimization_level}), in a build process of its own")
        built = rtx_builder.build(onnx_path, precision=precision, float_convs=float_convs,
                                  compute_capabilities=list(compute_capabilities), batches=batches,
                                  workspace_mb=workspace_mb, optimization_level=optimization_level, tf32=tf32, log=log)
    else:
        from rtk.build import tensorrt_builder

        built = tensorrt_builder.build(onnx_path, out, precision=precision, float_convs=float_convs,
                                       environment=environment, batches=batches, workspace_mb=workspace_mb,
                                       optimization_level=optimization_level, tf32=tf32,
                                       timing_cache=None if timing_cache is None else Path(timing_cache), log=log)
    log(f"Convs per precision in the network definition: "
        f"{', '.join(f'{p} {n}' for p, n in built.conv_precisions.items())}")
    sidecar = engine_sidecar(
        runtime_fields={"runtime": runtime, **built.fields}, precision=precision, metadata=metadata, **built.tensors,
        profile={"min": min_batch, "opt": opt_batch, "max": max_batch}, onnx_sha256=sha256_file(onnx_path),
        engine_sha256=hashlib.sha256(built.plan).hexdigest(), tf32=tf32, optimization_level=optimization_level,
        conv_precisions=built.conv_precisions, workspace_mb=workspace_mb, onnx=onnx_path.name,
        build_seconds=round(built.seconds, 1), provenance=provenance(*built.packages))
    with atomic_path(out) as tmp:
        tmp.write_bytes(built.plan)
        write_text_atomic(sidecar_path(out), json.dumps(sidecar, indent=2) + "\n")
    log(f"wrote {out} ({len(built.plan):,} bytes, built by {built.product} in {built.seconds:.1f} s) and "
        f"{sidecar_path(out).name}")
    return out
