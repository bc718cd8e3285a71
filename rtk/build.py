"""TensorRT engines from the rtk ONNX files; the only module that imports tensorrt.

    model.onnx                -> model.fp32.plan   (+ model.fp32.plan.json sidecar, model.fp32.layers.json)
    model.fp16.onnx           -> model.fp16.plan
    model.int8.tensorrt.onnx  -> model.int8.plan

Strongly typed networks only: every layer's precision comes from the ONNX (FP16 weights and casts,
or QuantizeLinear/DequantizeLinear with calibrated scales), never from BuilderFlag.FP16/INT8 or a
calibrator, which TensorRT 11 removed. The same calls build on TensorRT 10.x, where
NetworkDefinitionCreationFlag.STRONGLY_TYPED turns strong typing on (11 ignores the flag: always on).
Enum members are named, never numbered: 11 renumbered them (REFERENCE.md section 3).

TF32: BuilderFlag.TF32 is set by default, as TensorRT itself does: FP32 layers may round their inputs
to 10-bit mantissas inside matrix products. `tf32=False` (rtk build --no-tf32) clears it for an FP32
engine meant to match onnxruntime closely. torch's defaults differ (TF32 on for cuDNN convolutions,
off for matmuls), so FP32 comparisons state it; the sidecar records the choice.

After the build the engine inspector's per-layer report (ProfilingVerbosity.DETAILED, read through
an execution context at the profile's opt batch so formats are resolved) is saved as
`model.<precision>.layers.json`, and its layers are counted per precision: an INT8 build with no
INT8 layer, or an FP16 build with no FP16 layer, fails and leaves no engine.

Everything that needs no GPU (the sidecar, counting layer precisions, the version/GPU/sha256
checks) is a plain function, tested on CPU with hand-written inspector reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtk.errors import MissingDependency, RtkError, require
from rtk.fileio import atomic_path, provenance, sha256_file, write_text_atomic
from rtk.log import Log, info
from rtk.names import with_article
from rtk.onnx_meta import read_metadata
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME

if TYPE_CHECKING:
    import tensorrt as trt  # checked against typings/tensorrt (tests/test_build.py runs mypy)

ENGINE_FORMAT = "rtk.engine/1"
PRECISIONS = ("fp32", "fp16", "int8")
# The datatype words of the inspector's "Format/Datatype" strings ("Row major linear FP32",
# "Channel major FP16 format where channel % 8 == 0", "Thirty-two wide channel vectorized row major
# Int8 format.", older "Float" / "Half") and of its weight "Type" fields.
_DATATYPE_WORDS = {
    "fp32": ("fp32", "float"), "fp16": ("fp16", "half"), "bf16": ("bf16", "bfloat16"),
    "int8": ("int8",), "fp8": ("fp8",), "int32": ("int32",), "int64": ("int64",), "bool": ("bool",),
}


# ---------------------------------------------------------------------------------------------
# Pure parts: the inspector report, the sidecar, the compatibility checks


def datatype_of(text: str) -> str | None:
    """'fp32', 'fp16', 'int8', ... named in an inspector format string; None if it names none
    (e.g. 'N/A due to dynamic shapes')."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    for precision, names in _DATATYPE_WORDS.items():
        if words & set(names):
            return precision
    return None


def layer_precision(layer: Mapping[str, Any]) -> str:
    """The precision a layer computes in: its weights' type if it has weights (Conv, Gemm), else
    the datatype of its first input, else of its first output; "unknown" if none is stated."""
    weights = layer.get("Weights")
    candidates = [weights.get("Type", "")] if isinstance(weights, Mapping) else []
    candidates += [str(t.get("Format/Datatype", "")) for t in (*layer.get("Inputs", ()), *layer.get("Outputs", ()))
                   if isinstance(t, Mapping)]
    return next((p for p in map(datatype_of, candidates) if p is not None), "unknown")


def count_layer_precisions(engine_information: Mapping[str, Any]) -> dict[str, int]:
    """{precision: number of layers} of an engine inspector JSON report (TensorRT 10 and 11 both
    list layers under "Layers"; layer names alone, without DETAILED verbosity, count as unknown)."""
    layers = engine_information.get("Layers")
    if not isinstance(layers, list):
        raise RtkError("the engine inspector report has no 'Layers' list")
    counts = Counter(layer_precision(layer) if isinstance(layer, Mapping) else "unknown" for layer in layers)
    return dict(sorted(counts.items()))


def check_layer_precisions(precision: str, counts: Mapping[str, int], engine: str) -> None:
    """An INT8 engine must contain INT8 layers and an FP16 engine FP16 layers; else RtkError."""
    if precision in ("int8", "fp16") and not counts.get(precision):
        found = ", ".join(f"{n} {p}" for p, n in counts.items()) or "no layers"
        raise RtkError(f"{engine}: asked for {precision} but TensorRT built no {precision} layer ({found}); "
                       f"is the ONNX the {precision} one (QDQ nodes for int8, FP16 weights for fp16)?")


def engine_sidecar(*, tensorrt_version: str, gpu: Mapping[str, str], precision: str, metadata: Mapping[str, Any],
                   inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], profile: Mapping[str, int],
                   onnx_sha256: str, engine_sha256: str, tf32: bool, optimization_level: int,
                   layer_precisions: Mapping[str, int], **extra: Any) -> dict[str, Any]:
    """The `<engine>.json` sidecar (format rtk.engine/1) that apps read instead of the ONNX."""
    return {
        "format": ENGINE_FORMAT,
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
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
        "layer_precisions": dict(layer_precisions),
        **extra,
    }


def _version_triple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def compatibility_problems(sidecar: Mapping[str, Any], tensorrt_version: str, gpu: Mapping[str, str]) -> list[str]:
    """Why an engine described by `sidecar` cannot run under this TensorRT and GPU (empty: it can).

    A plan only loads in the TensorRT major.minor.patch that built it, and its kernels were chosen
    for one compute capability (the same rules as cpp/src/compat.cpp)."""
    problems = []
    built = str(sidecar.get("tensorrt_version", "?"))
    if _version_triple(built) != _version_triple(tensorrt_version):
        problems.append(f"it was built with TensorRT {built} but this is TensorRT {tensorrt_version}")
    built_gpu = sidecar.get("gpu", {})
    if str(built_gpu.get("compute_capability")) != str(gpu["compute_capability"]):
        problems.append(f"it was built for {built_gpu.get('name', '?')} (compute capability "
                        f"{built_gpu.get('compute_capability', '?')}) but this GPU is {gpu['name']} "
                        f"(compute capability {gpu['compute_capability']})")
    return problems


def sidecar_path(plan_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(plan_path)}.json")


def layers_path(plan_path: str | os.PathLike[str]) -> Path:
    """model.int8.plan -> model.int8.layers.json"""
    return Path(plan_path).with_suffix(".layers.json")


def read_engine_checked(plan_path: str | os.PathLike[str]) -> tuple[bytes, dict[str, Any]]:
    """(plan bytes, sidecar) if the plan's sha256 is the one its sidecar records; else RtkError."""
    plan_path = Path(plan_path)
    record = sidecar_path(plan_path)
    if not plan_path.is_file():
        raise RtkError(f"engine not found: {plan_path}")
    try:
        sidecar = json.loads(record.read_text())
    except FileNotFoundError:
        raise RtkError(f"{plan_path} has no sidecar {record.name}: rebuild it with `rtk build`") from None
    except (OSError, ValueError) as exc:
        raise RtkError(f"cannot read {record}: {exc}") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != ENGINE_FORMAT:
        raise RtkError(f"{record} is not an rtk engine sidecar (format {ENGINE_FORMAT})")
    plan = plan_path.read_bytes()
    actual = hashlib.sha256(plan).hexdigest()
    if actual != sidecar.get("engine_sha256"):
        raise RtkError(f"{plan_path} does not match its sidecar (sha256 {actual[:12]}..., sidecar says "
                       f"{str(sidecar.get('engine_sha256'))[:12]}...): the engine was replaced or truncated "
                       f"after `rtk build`; rebuild it")
    return plan, sidecar


def load_engine_checked(plan_path: str | os.PathLike[str]) -> tuple[bytes, dict[str, Any]]:
    """(plan bytes, sidecar) of an engine that matches its sidecar and can run here: RtkError for a
    changed plan, or one built by another TensorRT version or for another GPU."""
    plan, sidecar = read_engine_checked(plan_path)
    tensorrt_version, gpu = running_environment()
    problems = compatibility_problems(sidecar, tensorrt_version, gpu)
    if problems:
        raise RtkError(f"{plan_path} cannot run here: {'; '.join(problems)}. Rebuild it on this machine "
                       f"with `rtk build --precision {sidecar.get('precision', 'fp32')}`")
    return plan, sidecar


# ---------------------------------------------------------------------------------------------
# TensorRT and the GPU


def cuda_device() -> dict[str, str]:
    """{"name", "compute_capability"} of CUDA device 0 (cuda-python); MissingDependency without one."""
    runtime = require("cuda.bindings.runtime", "gpu")
    success = runtime.cudaError_t.cudaSuccess
    error, count = runtime.cudaGetDeviceCount()
    if error == success and count > 0:
        error, prop = runtime.cudaGetDeviceProperties(0)
    if error != success or count < 1:
        reason = runtime.cudaGetErrorName(error)[1].decode() if error != success else "0 devices"
        raise MissingDependency(f"no CUDA device ({reason}): TensorRT needs an NVIDIA GPU and its driver")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{prop.major}.{prop.minor}"}


def running_environment() -> tuple[str, dict[str, str]]:
    """(TensorRT version, GPU) of this machine; MissingDependency (exit 2) where either is missing."""
    require("tensorrt", "gpu")  # one line with the install hint where it is missing
    import tensorrt as trt

    return trt.__version__, cuda_device()


def build_engine(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str], *, precision: str,
                 log: Log = info, min_batch: int = 1, opt_batch: int = 256, max_batch: int = 1024,
                 workspace_mb: int = 1024, optimization_level: int = 3,
                 timing_cache: str | os.PathLike[str] | None = None, tf32: bool = True) -> Path:
    """Build a strongly typed engine of `precision` from `onnx_path` (whose metadata must say the
    same precision) for batches min..max (tuned for opt); returns `out`.

    The timing cache (default: timing.cache beside `out`) is read if present and written back, so
    later builds on the same GPU and TensorRT version skip the tactic timing they share.
    """
    if precision not in PRECISIONS:
        raise RtkError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise RtkError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    onnx_path, out = Path(onnx_path), Path(out)
    metadata = read_metadata(onnx_path)
    if metadata.get("precision") != precision:
        raise RtkError(f"{onnx_path} is {with_article(str(metadata.get('precision')))} model, not {precision}: strongly typed "
                       f"engines take their precision from the ONNX (use `rtk quantize` to make it)")
    tensorrt_version, gpu = running_environment()
    import tensorrt as trt

    cache_path = Path(timing_cache) if timing_cache is not None else out.parent / "timing.cache"
    log(f"building a {precision} TensorRT {tensorrt_version} engine for {gpu['name']} from {onnx_path} "
        f"(batch {min_batch}/{opt_batch}/{max_batch}, TF32 {'on' if tf32 else 'off'}, "
        f"optimization level {optimization_level})")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [f"  node {parser.get_error(i).node()}: {parser.get_error(i).code()}: "
                  f"{parser.get_error(i).desc()}" for i in range(parser.num_errors)]
        raise RtkError(f"TensorRT's ONNX parser rejected {onnx_path}:\n" + "\n".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.builder_optimization_level = optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *((batch, *IMAGE_SHAPE) for batch in (min_batch, opt_batch, max_batch)))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log(f"{cache_path} is unreadable or from another GPU / TensorRT version: starting a new timing cache")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RtkError("TensorRT could not create a timing cache")

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RtkError(f"TensorRT could not build an engine from {onnx_path} (see its messages above)")
    plan = bytes(serialized)
    seconds = time.perf_counter() - started
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise RtkError(f"TensorRT could not deserialize the engine it just built from {onnx_path}")
    context = engine.create_execution_context()
    context.set_input_shape(INPUT_NAME, (opt_batch, *IMAGE_SHAPE))
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    report = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    write_text_atomic(layers_path(out), json.dumps(report, indent=1) + "\n")
    counts = count_layer_precisions(report)
    log(f"layers per precision: {', '.join(f'{p} {n}' for p, n in counts.items())} "
        f"(report: {layers_path(out)})")
    check_layer_precisions(precision, counts, out.name)

    tensors: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
        tensors[kind].append({"name": name, "shape": list(engine.get_tensor_shape(name)),
                              "dtype": _numpy_dtype_name(engine.get_tensor_dtype(name))})
    sidecar = engine_sidecar(
        tensorrt_version=tensorrt_version, gpu=gpu, precision=precision, metadata=metadata, **tensors,
        profile={"min": min_batch, "opt": opt_batch, "max": max_batch}, onnx_sha256=sha256_file(onnx_path),
        engine_sha256=hashlib.sha256(plan).hexdigest(), tf32=tf32, optimization_level=optimization_level,
        layer_precisions=counts, workspace_mb=workspace_mb, onnx=onnx_path.name,
        layers=layers_path(out).name, build_seconds=round(seconds, 1),
        provenance=provenance("tensorrt", "onnx", "cuda-python"))
    with atomic_path(out) as tmp:
        tmp.write_bytes(plan)
        write_text_atomic(sidecar_path(out), json.dumps(sidecar, indent=2) + "\n")
    log(f"wrote {out} ({len(plan):,} bytes, built in {seconds:.0f} s) and {sidecar_path(out).name}")
    return out


def _numpy_dtype_name(dtype: trt.DataType) -> str:
    """'float32' for DataType.FLOAT: the names rtk.runtime and the C++ app read from the sidecar."""
    import numpy as np
    import tensorrt as trt

    return np.dtype(trt.nptype(dtype)).name
