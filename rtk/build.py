"""TensorRT engines from the rtk ONNX files; the only module that builds with tensorrt.

    model.onnx                -> model.fp32.plan   (+ model.fp32.plan.json sidecar, model.fp32.layers.json)
    model.fp16.onnx           -> model.fp16.plan
    model.int8.tensorrt.onnx  -> model.int8.plan

Strongly typed networks only: every layer's precision comes from the ONNX (FP16 weights and casts,
or QuantizeLinear/DequantizeLinear with calibrated scales), never from BuilderFlag.FP16/INT8 or a
calibrator, which TensorRT 11 removed. The same calls build on TensorRT 10.x, where
NetworkDefinitionCreationFlag.STRONGLY_TYPED turns strong typing on (11 deprecates the flag and
renumbered it: it is looked up by name, and left out where a release no longer has it).

The builder calls go through Polygraphy (NVIDIA's wrapper, released with each TensorRT and
following its API changes): NetworkFromOnnxPath, CreateConfig, EngineBytesFromNetwork. What
stays rtk's own: the sidecar, the compatibility checks, the layer-precision gate and the
inspector report, and two checks Polygraphy leaves out (the profile was accepted, the timing
cache was attached). Where Polygraphy's defaults differ from rtk's, rtk passes its own:

- TF32: Polygraphy turns BuilderFlag.TF32 off unless asked; rtk asks for it by default (TensorRT's
  own default): FP32 layers may round their inputs to 10-bit mantissas inside matrix products.
  `tf32=False` (rtk build --no-tf32) clears it for an FP32 engine meant to match onnxruntime
  closely. torch's defaults differ again (TF32 on for cuDNN convolutions, off for matmuls), so
  FP32 comparisons state it; the sidecar records the choice.
- Timing cache: Polygraphy's save_timing_cache merges the file's old entries into the new cache
  (ignoring a GPU mismatch) and writes the file in place. rtk keeps one cache per GPU and TensorRT
  version: a cache from another GPU or version is replaced by a new one, and the file is written
  atomically (Polygraphy saves into an unnamed temporary file; rtk writes that to the cache file
  through a temporary name and a rename).

After the build the engine inspector's per-layer report (ProfilingVerbosity.DETAILED, read through
an execution context at the profile's opt batch so formats are resolved) is saved as
`model.<precision>.layers.json`, and its layers are counted per precision: an INT8 build with no
INT8 layer, or an FP16 build with no FP16 layer, fails and leaves no engine.

Everything that needs no GPU (the sidecar, counting layer precisions, the version/GPU/sha256
checks) is a plain function, tested on CPU with real inspector reports (tests/fixtures/).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtk.engine_meta import FORMAT as ENGINE_FORMAT
from rtk.engine_meta import sidecar_path
from rtk.errors import RtkError, require
from rtk.fileio import atomic_path, check_output, provenance, sha256_file, write_text_atomic
from rtk.log import Log, info
from rtk.names import with_article
from rtk.onnx_meta import check_finite_weights, load_onnx, read_metadata
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME

if TYPE_CHECKING:
    import tensorrt as trt  # checked against typings/tensorrt (tests/test_build.py runs mypy)

PRECISIONS = ("fp32", "fp16", "int8")
# 0.53.6 is the release for TensorRT 11.3, which knows 11's API changes (it reads the split inspector
# fields, sets flags 11 removed only on 10.x); pyproject.toml pins the same range. A TensorRT without
# STRONGLY_TYPED makes its strongly_typed=True fail, hence rtk's own lookup by name.
POLYGRAPHY_MIN_VERSION = "0.53.6"
# The datatype words of the inspector's tensor strings ("Row major linear FP32", "Channel major FP16
# format where channel % 8 == 0", "Thirty-two wide channel vectorized row major Int8 format", older
# "Float" / "Half"; TensorRT 11's separate "Datatype") and of its weight "Type" fields ("Int8",
# "Half", "Float"); the FP8 and FP4 names follow Polygraphy's _TRT_DTYPE_MAP.
_DATATYPE_WORDS = {
    "fp32": ("fp32", "float", "float32"), "fp16": ("fp16", "half", "float16"), "bf16": ("bf16", "bfloat16"),
    "int8": ("int8",), "fp8": ("fp8", "float8e4m3", "float8e5m2"), "int4": ("int4",), "fp4": ("fp4", "float4"),
    "int32": ("int32",), "int64": ("int64",), "uint8": ("uint8",), "bool": ("bool",),
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


def tensor_datatype_texts(tensor: Mapping[str, Any]) -> list[str]:
    """What a layer's input or output says about its datatype: TensorRT up to 10.x writes one
    "Format/Datatype" string, 11.x a "Datatype" and a "Format" (11.0 migration notes; Polygraphy
    0.53.6 tools/inspect/subtool/model/extractors/_trt.py reads both the same way)."""
    return [str(tensor[key]) for key in ("Datatype", "Format/Datatype", "Format") if tensor.get(key)]


def layer_precision(layer: Mapping[str, Any]) -> str:
    """The precision a layer computes in: its weights' type if it has weights ("Weights" on a
    convolution or Gemm, "ConvWeights" on fused layers such as ConvActPool), else the datatype of
    its first input, else of its first output; "unknown" if none is stated."""
    candidates = [str(value.get("Type", "")) for key, value in layer.items()
                  if key.endswith("Weights") and isinstance(value, Mapping)]
    for tensor in (*layer.get("Inputs", ()), *layer.get("Outputs", ())):
        if isinstance(tensor, Mapping):
            candidates += tensor_datatype_texts(tensor)
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
    """{"name", "compute_capability"} of CUDA device 0, asked through the binding the runner uses
    (cuda-python, else pycuda); MissingDependency without either or without a device."""
    from rtk.runtime.tensorrt_runner import cuda_binding

    return cuda_binding().device()


def running_environment() -> tuple[str, dict[str, str]]:
    """(TensorRT version, GPU) of this machine; MissingDependency (exit 2) where either is missing."""
    tensorrt = require("tensorrt", "gpu")  # one line with the install hint where it is missing
    return str(tensorrt.__version__), cuda_device()


def builder_environment() -> tuple[str, dict[str, str]]:
    """running_environment(), with Polygraphy (which `rtk build` builds through) required too."""
    environment = running_environment()
    require("polygraphy", "gpu", min_version=POLYGRAPHY_MIN_VERSION)
    return environment


def strongly_typed_flag_exists(trt_module: Any) -> bool:
    """Whether this TensorRT has NetworkDefinitionCreationFlag.STRONGLY_TYPED, looked up by name:
    10.x needs it for strong typing; 11 deprecated it (and renumbered it 1 -> 0) because strong
    typing is always on, so a release without it builds strongly typed with no flag at all."""
    return hasattr(trt_module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


@contextlib.contextmanager
def _polygraphy_logs_to_stderr() -> Iterator[None]:
    """Polygraphy prints its (and TensorRT's) messages on stdout; rtk keeps stdout for results.
    Warnings and errors only: rtk logs its own progress."""
    from polygraphy.logger import G_LOGGER

    with contextlib.redirect_stdout(sys.stderr), G_LOGGER.verbosity(G_LOGGER.WARNING):
        yield


def _check_config(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, *,
                  cache_path: Path, log: Log) -> None:
    """rtk's checks on the IBuilderConfig that Polygraphy's CreateConfig made, for the two returns
    it leaves unchecked (polygraphy/backend/trt/config.py): add_optimization_profile's -1 and
    set_timing_cache's False, which leaves the build without a cache (a saved cache from another
    GPU or TensorRT version is refused that way)."""
    if config.num_optimization_profiles != 1:
        raise RtkError(f"TensorRT refused the optimization profile for {INPUT_NAME!r} (add_optimization_profile "
                       "failed; see the TensorRT log above)")
    if config.get_timing_cache() is None:
        log(f"{cache_path} is from another GPU or TensorRT version (or unreadable): starting a new timing cache")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RtkError("TensorRT could not create a timing cache")


def _engine_bytes(onnx_path: Path, *, cache_path: Path, strongly_typed: bool, tf32: bool, workspace_mb: int,
                  optimization_level: int, batches: tuple[int, int, int], log: Log) -> tuple[bytes, bytes]:
    """(serialized engine, serialized timing cache) built through Polygraphy's loaders
    (polygraphy/backend/trt/loader.py, config.py, profile.py); their errors become RtkError."""
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        NetworkFromOnnxPath,
        PostprocessConfig,
        Profile,
        engine_bytes_from_network,
    )
    from polygraphy.exception import PolygraphyException

    profile = Profile().add(INPUT_NAME, *((batch, *IMAGE_SHAPE) for batch in batches))  # [N, 3, 32, 32]
    network = NetworkFromOnnxPath(os.fspath(onnx_path), strongly_typed=strongly_typed)
    try:
        # The timing cache goes in and out through unnamed temporary files (Polygraphy takes open
        # binary files as well as paths): no .lock file beside the cache, and rtk alone decides
        # when the file on disk is replaced.
        with _polygraphy_logs_to_stderr(), tempfile.TemporaryFile() as saved, tempfile.TemporaryFile() as new:
            if cache_path.is_file():
                saved.write(cache_path.read_bytes())
                saved.seek(0)
            config = CreateConfig(
                tf32=tf32, profiles=[profile], memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20},
                builder_optimization_level=optimization_level, profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
                load_timing_cache=saved if cache_path.is_file() else None)
            checked = PostprocessConfig(config, functools.partial(_check_config, cache_path=cache_path, log=log))
            plan = engine_bytes_from_network(network, checked, save_timing_cache=new)
            new.seek(0)
            return bytes(plan), new.read()
    except (PolygraphyException, RuntimeError, ValueError) as exc:  # TensorRT's own calls raise the last two
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RtkError(f"TensorRT could not build an engine from {onnx_path}: {reason} "
                       "(see the TensorRT log above)") from exc


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
    onnx_path, out = Path(onnx_path), check_output(out)
    cache_path = check_output(Path(timing_cache) if timing_cache is not None else out.parent / "timing.cache")
    for written in (sidecar_path(out), layers_path(out)):
        check_output(written)  # before minutes of building
    metadata = read_metadata(onnx_path)
    if metadata.get("precision") != precision:
        raise RtkError(f"{onnx_path} is {with_article(str(metadata.get('precision')))} model, not {precision}: strongly typed "
                       f"engines take their precision from the ONNX (use `rtk quantize` to make it)")
    check_finite_weights(load_onnx(onnx_path), onnx_path)
    tensorrt_version, gpu = builder_environment()
    import tensorrt as trt

    log(f"building a {precision} TensorRT {tensorrt_version} engine for {gpu['name']} from {onnx_path} "
        f"(batch {min_batch}/{opt_batch}/{max_batch}, TF32 {'on' if tf32 else 'off'}, "
        f"optimization level {optimization_level})")
    started = time.perf_counter()
    plan, cache = _engine_bytes(onnx_path, cache_path=cache_path, strongly_typed=strongly_typed_flag_exists(trt),
                                tf32=tf32, workspace_mb=workspace_mb, optimization_level=optimization_level,
                                batches=(min_batch, opt_batch, max_batch), log=log)
    seconds = time.perf_counter() - started
    if cache:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(cache)
    else:
        log(f"TensorRT gave no timing cache to save: {cache_path} left as it was")

    engine, report = _inspect(trt, plan, opt_batch, onnx_path)
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
                              "dtype": numpy_dtype_name(engine.get_tensor_dtype(name), name)})
    sidecar = engine_sidecar(
        tensorrt_version=tensorrt_version, gpu=gpu, precision=precision, metadata=metadata, **tensors,
        profile={"min": min_batch, "opt": opt_batch, "max": max_batch}, onnx_sha256=sha256_file(onnx_path),
        engine_sha256=hashlib.sha256(plan).hexdigest(), tf32=tf32, optimization_level=optimization_level,
        layer_precisions=counts, workspace_mb=workspace_mb, onnx=onnx_path.name,
        layers=layers_path(out).name, build_seconds=round(seconds, 1),
        provenance=provenance("tensorrt", "polygraphy", "onnx", "cuda-python"))
    with atomic_path(out) as tmp:
        tmp.write_bytes(plan)
        write_text_atomic(sidecar_path(out), json.dumps(sidecar, indent=2) + "\n")
    log(f"wrote {out} ({len(plan):,} bytes, built in {seconds:.0f} s) and {sidecar_path(out).name}")
    return out


def _inspect(trt_module: Any, plan: bytes, opt_batch: int, onnx_path: Path) -> tuple[trt.ICudaEngine, Any]:
    """(engine, inspector JSON report) of a plan just built. The inspector reads the layers through
    an execution context at the opt batch, so formats are resolved (Polygraphy
    tools/inspect/subtool/model/extractors/_trt.py sets inspector.execution_context the same way)."""
    from polygraphy.backend.trt import engine_from_bytes
    from polygraphy.exception import PolygraphyException

    try:
        with _polygraphy_logs_to_stderr():
            engine: trt.ICudaEngine = engine_from_bytes(plan)
    except PolygraphyException as exc:
        raise RtkError(f"TensorRT could not deserialize the engine it just built from {onnx_path}") from exc
    context = engine.create_execution_context()
    if context is None:
        raise RtkError(f"TensorRT could not create an execution context for the engine built from {onnx_path} "
                       "(create_execution_context returned None: out of GPU memory?)")
    if not context.set_input_shape(INPUT_NAME, (opt_batch, *IMAGE_SHAPE)):
        raise RtkError(f"the engine built from {onnx_path} refused input shape {(opt_batch, *IMAGE_SHAPE)}")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return engine, json.loads(inspector.get_engine_information(trt_module.LayerInformationFormat.JSON))


def numpy_dtype_name(dtype: trt.DataType, tensor: str) -> str:
    """'float32' for DataType.FLOAT: the names rtk.runtime and the C++ app read from the sidecar.
    trt.nptype raises TypeError for types numpy lacks (BF16, FP8, FP4, INT4): one RtkError."""
    import numpy as np
    import tensorrt as trt

    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:
        raise RtkError(f"engine tensor {tensor!r} is {dtype.name}, which numpy has no type for; rtk engines take "
                       "and return float32 (keep the ONNX's inputs and outputs float32)") from None
