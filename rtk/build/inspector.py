"""The engine inspector's per-layer report of a TensorRT engine, and the precision gate on it.

After a TensorRT build (on a GPU) the inspector's JSON report (ProfilingVerbosity.DETAILED, read
through an execution context so formats are resolved) says which precision each layer really runs
in: it is saved as `model.<precision>.layers.json`, and an INT8 build with no INT8 layer, or an FP16
build with no FP16 layer, fails and leaves no engine. TensorRT for RTX engines are built without a
GPU and compiled for the GPU only when they load, so no such report exists for them; the check of the
network definition before the build (rtk.build.network) covers both runtimes.

Plain functions, tested on CPU with real inspector reports (tests/fixtures/).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtk.errors import RtkError

# The datatype words of the inspector's tensor strings ("Row major linear FP32", "Channel major FP16
# format where channel % 8 == 0", "Thirty-two wide channel vectorized row major Int8 format", older
# "Float" / "Half"; TensorRT 11's separate "Datatype") and of its weight "Type" fields ("Int8",
# "Half", "Float"); the FP8 and FP4 names follow Polygraphy's _TRT_DTYPE_MAP.
_DATATYPE_WORDS = {
    "fp32": ("fp32", "float", "float32"), "fp16": ("fp16", "half", "float16"), "bf16": ("bf16", "bfloat16"),
    "int8": ("int8",), "fp8": ("fp8", "float8e4m3", "float8e5m2"), "int4": ("int4",), "fp4": ("fp4", "float4"),
    "int32": ("int32",), "int64": ("int64",), "uint8": ("uint8",), "bool": ("bool",),
}


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


def layers_path(plan_path: str | os.PathLike[str]) -> Path:
    """model.int8.plan -> model.int8.layers.json"""
    return Path(plan_path).with_suffix(".layers.json")
