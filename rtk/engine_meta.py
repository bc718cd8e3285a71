"""The sidecar `<engine>.json` that `rtk build` writes next to every engine, read in one place.

A serialized engine says nothing about itself without TensorRT, so the sidecar carries what apps,
`rtk info`, `rtk deploy` and the C++ library (cpp/src/sidecar.cpp) need. Every sidecar has

    format "rtk.engine/1", runtime, precision, depth, inputs/outputs [{name, shape, dtype}],
    profile {min, opt, max} (batch sizes), onnx (file name), onnx_sha256, engine_sha256,
    normalization, classes, tf32, builder_optimization_level, conv_precisions (from the network
    definition, before the build)

and, by runtime (rtk.runtime.engines):

    "tensorrt"      tensorrt_version, gpu {name, compute_capability}, layer_precisions (the engine
                    inspector's count, after the build); a sidecar without "runtime" is TensorRT's
    "tensorrt-rtx"  tensorrt_rtx_version, compute_capabilities ["8.6", ...] (the GPUs it runs on),
                    builder_messages (what the builder logged at warning level or above)

Only the standard library is imported: reading a sidecar needs neither TensorRT nor a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rtk.errors import RtkError
from rtk.fileio import sha256_file

FORMAT = "rtk.engine/1"


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    """model.int8.plan -> model.int8.plan.json"""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: str | os.PathLike[str], *, verify_engine: bool = True) -> dict[str, Any]:
    """The sidecar of `engine` as a dict, checked for its format; with verify_engine, the engine's
    sha256 must also match the sidecar's engine_sha256 (the engine was not swapped or truncated)."""
    engine = Path(engine)
    path = sidecar_path(engine)
    if not path.is_file():
        raise RtkError(f"{path} is missing: rtk reads an engine through the sidecar `rtk build` "
                       f"writes beside it; rebuild the engine with `rtk build`")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RtkError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        found = sidecar.get("format") if isinstance(sidecar, dict) else f"a JSON {type(sidecar).__name__}"
        raise RtkError(f"{path} is not an rtk engine sidecar (format {found!r}, expected {FORMAT!r})")
    if verify_engine and sha256_file(engine) != sidecar.get("engine_sha256"):
        raise _changed(engine)
    return sidecar


def _changed(engine: Path) -> RtkError:
    return RtkError(f"{engine} does not match its sidecar's engine_sha256: the engine was replaced "
                    f"or truncated after `rtk build`; rebuild it")


def read_engine(engine: str | os.PathLike[str]) -> tuple[bytes, dict[str, Any]]:
    """(the engine's bytes, its sidecar), the bytes read once and checked against the sidecar's
    engine_sha256; RtkError for a missing engine or sidecar, or a changed engine."""
    engine = Path(engine)
    if not engine.is_file():
        raise RtkError(f"engine not found: {engine}")
    sidecar = read_sidecar(engine, verify_engine=False)
    plan = engine.read_bytes()
    if hashlib.sha256(plan).hexdigest() != sidecar.get("engine_sha256"):
        raise _changed(engine)
    return plan, sidecar
