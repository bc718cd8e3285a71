"""The FP32 source model's rtk metadata: checked before quantizing, carried into every model written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtk.errors import RtkError
from rtk.names import with_article
from rtk.onnx_meta import check_finite_weights, decode_metadata, encode_metadata, load_onnx, missing_fields


def fp32_metadata(onnx_path: Path) -> dict[str, Any]:
    """The rtk metadata of an FP32 model quantize can start from: RtkError for another precision, a
    fixed batch (calibration and validation run their own batch sizes) or weights with NaN/inf."""
    model = load_onnx(onnx_path)
    meta = decode_metadata({prop.key: prop.value for prop in model.metadata_props})
    missing = missing_fields(meta)
    if missing:
        raise RtkError(f"{onnx_path} has no rtk metadata ({', '.join(missing)} missing): "
                       f"export it with `rtk export`")
    if meta["precision"] != "fp32":
        raise RtkError(f"{onnx_path} is {with_article(meta['precision'])} model; quantize starts from the FP32 "
                       f"model.onnx")
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else ()
    if dims and dims[0].HasField("dim_value"):
        raise RtkError(f"{onnx_path} has a fixed batch of {dims[0].dim_value}; quantize starts from the "
                       "dynamic-batch export (`rtk export` without --fixed-batch)")
    check_finite_weights(model, onnx_path)
    return meta


def set_rtk_metadata(onnx: Any, model: Any, source: Path, **fields: Any) -> None:
    """The metadata of the FP32 model at `source`, every key as it is, with `fields` set over it."""
    props = {prop.key: prop.value for prop in load_onnx(source, load_weights=False).metadata_props}
    onnx.helper.set_model_props(model, {**props, **encode_metadata(fields)})

