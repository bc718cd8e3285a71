"""TensorRT's build, in this process on its GPU: what differs from TensorRT for RTX's.

The shared path (rtk.build.network) parses, checks and builds through Polygraphy; TensorRT adds:

- the GPU: TensorRT times tactics on the GPU it builds on, so the engine runs only on GPUs of that
  compute capability (the sidecar's "gpu");
- the timing cache: Polygraphy's save_timing_cache merges the file's old entries into the new cache
  (ignoring a GPU mismatch) and writes the file in place. rtk keeps one cache per GPU and TensorRT
  version: a cache from another GPU or version is replaced by a new one, and the file is written
  atomically (Polygraphy saves into an unnamed temporary file; rtk writes that to the cache file
  through a temporary name and a rename);
- after the build, the engine inspector's per-layer report and its precision gate (rtk.build.inspector).

Polygraphy picks TensorRT or TensorRT for RTX once per process, from POLYGRAPHY_USE_TENSORRT_RTX when it
is first imported (polygraphy/config.py, polygraphy/mod/trt_importer.py): this build refuses to run in
a process where that variable turned Polygraphy to TensorRT for RTX, which rtk's own RTX builds do only
in a process of their own (rtk.build.rtx_builder).
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtk.build.inspector import check_layer_precisions, count_layer_precisions, layers_path
from rtk.build.network import (
    Built,
    NetworkCheck,
    build_through_polygraphy,
    check_profile,
    config_options,
    polygraphy_logs_to_stderr,
)
from rtk.errors import RtkError
from rtk.fileio import atomic_path, write_text_atomic
from rtk.log import Log
from rtk.names import with_article
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME

if TYPE_CHECKING:
    import tensorrt as trt  # checked against typings/tensorrt (tests/test_build.py runs mypy)


def _check_config(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, *,
                  cache_path: Path, log: Log) -> None:
    """rtk's checks on the IBuilderConfig that Polygraphy's CreateConfig made, for the two returns
    it leaves unchecked (polygraphy/backend/trt/config.py): add_optimization_profile's -1 and
    set_timing_cache's False, which leaves the build without a cache (a saved cache from another
    GPU or TensorRT version is refused that way)."""
    check_profile(builder, network, config)
    if config.get_timing_cache() is None:
        log(f"{cache_path} is from another GPU or TensorRT version (or unreadable): starting a new timing cache")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RtkError("TensorRT could not create a timing cache")


def timing_cache_path(out: Path, timing_cache: Path | None) -> Path:
    """The timing cache a build of `out` reads and writes: `timing_cache`, else timing.cache beside `out`."""
    return timing_cache if timing_cache is not None else out.parent / "timing.cache"


def build(onnx_path: Path, out: Path, *, precision: str, float_convs: list[str], environment: tuple[str, dict[str, str]],
          batches: tuple[int, int, int], workspace_mb: int, optimization_level: int, tf32: bool,
          timing_cache: Path | None, log: Log) -> Built:
    """A TensorRT engine of `onnx_path` built on this machine's GPU; `out`'s layer report written."""
    import tensorrt as trt
    from polygraphy import config as polygraphy_config
    from polygraphy.backend.trt import CreateConfig, PostprocessConfig

    if polygraphy_config.USE_TENSORRT_RTX:
        raise RtkError("POLYGRAPHY_USE_TENSORRT_RTX is set in this process's environment, which makes Polygraphy "
                       "build with TensorRT for RTX instead of TensorRT: unset it for `rtk build` (`--runtime "
                       "tensorrt-rtx` builds in a process of its own that sets it)")
    tensorrt_version, gpu = environment
    check = NetworkCheck(trt, precision, float_convs, onnx_path.name)
    cache_path = timing_cache_path(out, timing_cache)
    log(f"building {with_article(precision)} TensorRT {tensorrt_version} engine for {gpu['name']} from {onnx_path} "
        f"(batch {'/'.join(map(str, batches))}, TF32 {'on' if tf32 else 'off'}, "
        f"optimization level {optimization_level})")
    options = config_options(trt, batches=batches, workspace_mb=workspace_mb, optimization_level=optimization_level)
    started = time.perf_counter()
    # The timing cache goes in and out through unnamed temporary files (Polygraphy takes open binary
    # files as well as paths): no .lock file beside the cache, and rtk alone decides when the file on
    # disk is replaced.
    with tempfile.TemporaryFile() as saved, tempfile.TemporaryFile() as new:
        if cache_path.is_file():
            saved.write(cache_path.read_bytes())
            saved.seek(0)

        def make_config() -> PostprocessConfig:
            return PostprocessConfig(CreateConfig(tf32=tf32, **options,
                                                  load_timing_cache=saved if cache_path.is_file() else None),
                                     functools.partial(_check_config, cache_path=cache_path, log=log))

        plan = build_through_polygraphy(trt, onnx_path, make_config, check, product="TensorRT", save_timing_cache=new)
        new.seek(0)
        cache = new.read()
    seconds = time.perf_counter() - started
    if cache:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(cache)
    else:
        log(f"TensorRT gave no timing cache to save: {cache_path} left as it was")

    report = _inspect(trt, plan, batches[1], onnx_path)
    write_text_atomic(layers_path(out), json.dumps(report, indent=1) + "\n")
    counts = count_layer_precisions(report)
    log(f"layers per precision: {', '.join(f'{p} {n}' for p, n in counts.items())} (report: {layers_path(out)})")
    check_layer_precisions(precision, counts, out.name)
    fields = {"tensorrt_version": tensorrt_version,
              "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
              "layer_precisions": counts, "layers": layers_path(out).name}
    return Built(plan=plan, product=f"TensorRT {tensorrt_version}", seconds=seconds, conv_precisions=check.counts,
                 tensors=check.tensors, fields=fields, packages=("tensorrt", "polygraphy", "onnx", "cuda-python"))


def _inspect(trt_module: Any, plan: bytes, opt_batch: int, onnx_path: Path) -> Any:
    """The inspector JSON report of a plan just built. The inspector reads the layers through an
    execution context at the opt batch, so formats are resolved (Polygraphy
    tools/inspect/subtool/model/extractors/_trt.py sets inspector.execution_context the same way)."""
    from polygraphy.backend.trt import engine_from_bytes
    from polygraphy.exception import PolygraphyException

    try:
        with polygraphy_logs_to_stderr():
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
    return json.loads(inspector.get_engine_information(trt_module.LayerInformationFormat.JSON))
