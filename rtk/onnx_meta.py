"""The rtk contract of every ONNX artifact: its opset and the metadata it carries in `metadata_props`.

ONNX metadata values are strings, so each field has a codec:

    rtk.format             "rtk.onnx/1"
    rtk.depth              "20"                    -> 20
    rtk.precision          "fp32" | "fp16" | "int8"
    rtk.int8_target        "tensorrt" | "cpu"      (int8 only)
    rtk.normalization      JSON of rtk.preprocess.normalization_metadata()
    rtk.classes            JSON list of class names, index order
    rtk.checkpoint_sha256  sha256 of the source checkpoint
    rtk.val_acc            "0.9212" or "" (unknown) -> 0.9212 or None
    rtk.test_acc           same
    rtk.version            rtk version that wrote the file
    rtk.calibration        JSON (int8 only): manifest path, method, num_images, seed

Decoded dicts use the names without the "rtk." prefix. Nothing here imports torch or onnx: a
runtime that already holds an onnxruntime session decodes
`session.get_modelmeta().custom_metadata_map` directly; `read_metadata(path)` and `load_onnx`
import onnx when called.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from rtk.errors import RtkError, require

PREFIX = "rtk."
FORMAT = "rtk.onnx/1"

# Opset 20: the newest opset TensorRT 10.0's ONNX parser reads (its operators.md: opsets 9-20;
# TensorRT 11 reads up to 25), supported by onnxruntime >= 1.17 and onnx >= 1.15, and the default of
# torch's dynamo exporter since 2.9. INT8 QDQ with per-channel weight scales needs >= 13. torch's op
# library starts at 18: asked for 13-17, the exporter exports 18 and tries the onnx version converter,
# which has no Pad adapter down to 17, so the file silently stays at 18; hence MIN_OPSET.
OPSET = 20
MIN_OPSET = 18


def _optional_float(value: str) -> float | None:
    return float(value) if value else None


def _optional_float_text(value: float | None) -> str:
    return "" if value is None else repr(float(value))


# field -> (encode to str, decode from str)
_CODECS: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {
    "format": (str, str),
    "depth": (lambda v: str(int(v)), int),
    "precision": (str, str),
    "int8_target": (str, str),
    "normalization": (json.dumps, json.loads),
    "classes": (json.dumps, json.loads),
    "checkpoint_sha256": (str, str),
    "val_acc": (_optional_float_text, _optional_float),
    "test_acc": (_optional_float_text, _optional_float),
    "version": (str, str),
    "calibration": (json.dumps, json.loads),
}
FIELDS = tuple(_CODECS)
REQUIRED = ("format", "depth", "precision", "normalization", "classes")


def encode_metadata(fields: Mapping[str, Any]) -> dict[str, str]:
    """{"depth": 20, ...} -> {"rtk.depth": "20", ...}, ready for onnx metadata_props."""
    unknown = sorted(set(fields) - set(_CODECS))
    if unknown:
        raise ValueError(f"unknown rtk metadata fields {unknown}; known: {', '.join(FIELDS)}")
    return {PREFIX + name: _CODECS[name][0](value) for name, value in fields.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """The rtk.* entries of an ONNX metadata map, decoded; other keys are ignored.

    An rtk.* key this version does not know is kept as its raw string (a newer rtk wrote it).
    """
    fields: dict[str, Any] = {}
    for key, text in props.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        try:
            fields[name] = _CODECS[name][1](text) if name in _CODECS else text
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise RtkError(f"ONNX metadata {key}={text!r} is malformed: {exc}") from exc
    return fields


def missing_fields(fields: Mapping[str, Any]) -> list[str]:
    """The required rtk fields absent from a decoded metadata dict."""
    return [name for name in REQUIRED if name not in fields]


def load_onnx(path: str | os.PathLike[str], *, load_weights: bool = True) -> Any:
    """The onnx.ModelProto in `path`; RtkError for a missing or unreadable file."""
    onnx = require("onnx")
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # onnx needs protobuf

    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block the read forever
        raise RtkError(f"{path} is not a regular file, so not an ONNX model")
    try:
        model = onnx.load(os.fspath(path), load_external_data=load_weights)
    except FileNotFoundError as exc:
        raise RtkError(f"ONNX file not found: {path}") from exc
    except (OSError, DecodeError) as exc:
        raise RtkError(f"{path} is not a readable ONNX file: {exc}") from exc
    except onnx.checker.ValidationError as exc:  # weights in a side file outside the model's folder: not read
        raise RtkError(f"cannot read the weights of {path}: {' '.join(str(exc).split())}") from exc
    # Protobuf parses an empty file (and some short junk) as an empty message: no IR version,
    # no opset, no graph. That is no model, whatever the parser says.
    if not model.ir_version or not model.opset_import or not model.graph.node:
        raise RtkError(f"{path} is not an ONNX model: it has no IR version, opset or graph nodes "
                       f"({os.path.getsize(path):,} bytes; empty or truncated?)")
    return model


def read_metadata(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded rtk metadata of an ONNX file (weights stored outside the file are not read)."""
    model = load_onnx(onnx_path, load_weights=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props})


def non_finite_initializers(model: Any) -> list[str]:
    """Names of the float initializers (weights) of an onnx.ModelProto holding NaN or infinity."""
    import numpy as np
    from onnx import numpy_helper

    bad = []
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad.append(tensor.name)
    return bad


def check_finite_weights(model: Any, path: str | os.PathLike[str]) -> None:
    """RtkError when the model's weights hold NaN or infinity: every output would be meaningless."""
    bad = non_finite_initializers(model)
    if bad:
        raise RtkError(f"{path} holds NaN or infinity in {len(bad)} weight tensors ({bad[0]}, ...): it was made "
                       "from a diverged training; train again with a lower --lr")
