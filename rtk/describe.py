"""What an artifact is, as `rtk info PATH` shows it: an ONNX file, a TensorRT engine's sidecar, a checkpoint.

`summarize_onnx` is also what rtk.export checks the exported graph against. onnx and torch are imported
only by the describers that need them.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtk.errors import RtkError
from rtk.fileio import sha256_file
from rtk.onnx_meta import PREFIX, decode_metadata, load_onnx

Shape = tuple[int | str, ...]  # a dim is its size, or the name of a dynamic axis ("batch"), or "?"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: "float32", "int8", ...
    shape: Shape


@dataclass
class OnnxSummary:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int  # of the default ("ai.onnx") domain
    ir_version: int
    producer: str
    op_histogram: dict[str, int]  # op type -> node count, most frequent first
    parameters: int  # elements in all initializers
    metadata: dict[str, Any]  # decoded rtk.* metadata
    other_metadata: dict[str, str]  # metadata_props written by other tools
    external_initializers: list[str] = field(default_factory=list)  # weights stored outside the file


def _tensor_spec(value_info: Any) -> TensorSpec:
    import onnx

    tensor_type = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                  for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name, shape)


def summarize_onnx(model: Any) -> OnnxSummary:
    """Inputs, outputs, opset, op histogram, parameter count and metadata of an onnx.ModelProto."""
    import onnx

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    props = {p.key: p.value for p in model.metadata_props}
    return OnnxSummary(
        inputs=[_tensor_spec(v) for v in graph.input],
        outputs=[_tensor_spec(v) for v in graph.output],
        opset=opset,
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        op_histogram=dict(Counter(node.op_type for node in graph.node).most_common()),
        parameters=sum(math.prod(t.dims) for t in graph.initializer),
        metadata=decode_metadata(props),
        other_metadata={k: v for k, v in props.items() if not k.startswith(PREFIX)},
        external_initializers=[t.name for t in graph.initializer
                               if t.data_location == onnx.TensorProto.EXTERNAL],
    )


@dataclass
class Section:
    """One table of `rtk info`: a title, column names and rows of printable cells."""

    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _key_values(title: str, values: dict[str, Any]) -> Section:
    return Section(title, ("key", "value"), [(k, _text(v)) for k, v in values.items()])


def describe_onnx(path: Path) -> list[Section]:
    summary = summarize_onnx(load_onnx(path, load_weights=False))
    tensors = [(kind, t.name, t.dtype, "[" + ", ".join(map(str, t.shape)) + "]")
               for kind, specs in (("input", summary.inputs), ("output", summary.outputs)) for t in specs]
    model = {"file": str(path), "size": f"{path.stat().st_size:,} bytes", "opset": str(summary.opset),
             "ir_version": str(summary.ir_version), "producer": summary.producer,
             "parameters": f"{summary.parameters:,}"}
    if summary.external_initializers:
        model["external weights"] = f"{len(summary.external_initializers)} initializers in side files"
    sections = [
        _key_values("model", model),
        Section("inputs and outputs", ("kind", "name", "dtype", "shape"), tensors),
        Section("operators", ("op", "count"), [(op, str(n)) for op, n in summary.op_histogram.items()]),
        _key_values("rtk metadata", summary.metadata),
    ]
    if summary.other_metadata:
        sections.append(_key_values("other metadata", summary.other_metadata))
    return sections


def describe_engine(path: Path) -> list[Section]:
    """A TensorRT engine is opaque without TensorRT: `rtk build` writes what it is into <engine>.json."""
    from rtk.engine_meta import read_sidecar

    info = read_sidecar(path, verify_engine=False)
    sha = sha256_file(path)
    check = ("yes" if sha == info.get("engine_sha256") else
             f"NO: the engine's sha256 is {sha}; it was replaced or truncated after `rtk build`, "
             "so nothing below describes it (rebuild it)")
    return [_key_values("engine", {"file": str(path), "size": f"{path.stat().st_size:,} bytes",
                                   "matches its sidecar": check, **info})]


def describe_checkpoint(path: Path) -> list[Section]:
    from rtk.checkpoint import non_finite_tensors, read

    ckpt = read(path)
    params = sum(t.numel() for name, t in ckpt["state_dict"].items()
                 if not name.endswith(("running_mean", "running_var", "num_batches_tracked")))
    bad = non_finite_tensors(ckpt["state_dict"])
    summary = {"file": str(path), "sha256": sha256_file(path), "format": ckpt["format"],
               **ckpt["model"], "parameters": f"{params:,}", **_against_the_paper(ckpt),
               "weights finite": f"NO: NaN or infinity in {len(bad)} tensors (a diverged run)" if bad else "yes",
               "resumable": "yes (has train_state)" if "train_state" in ckpt else "no"}
    return [_key_values("checkpoint", summary)] + [
        _key_values(name, ckpt[name]) for name in ("metrics", "split", "recipe", "provenance")
        if isinstance(ckpt.get(name), dict)
    ]


def _against_the_paper(ckpt: dict[str, Any]) -> dict[str, str]:
    """How long the checkpoint trained and its test accuracy beside the paper's for its depth
    (rtk.model.PAPER_TEST_ACCURACY), where it records them (rtk train does, in percent)."""
    from rtk.model import PAPER_TEST_ACCURACY

    metrics, recipe = ckpt.get("metrics") or {}, ckpt.get("recipe") or {}
    shown = {}
    epochs = metrics.get("epochs", recipe.get("epochs"))
    if isinstance(epochs, (int, float)):
        shown["trained"] = f"{epochs:g} epochs" + (f" (recipe {recipe['recipe']})" if recipe.get("recipe") else "")
    paper, test = PAPER_TEST_ACCURACY.get(ckpt["model"].get("depth")), metrics.get("test_acc")
    if paper is not None and isinstance(test, (int, float)):
        shown["test accuracy"] = (f"{test:.2f}%: {test - paper:+.2f} points against the paper's {paper:.2f}% "
                                  f"(He et al. 2016, Table 6)")
    return shown


_DESCRIBERS = {".onnx": describe_onnx, ".plan": describe_engine, ".engine": describe_engine,
               ".pt": describe_checkpoint}


def describe(path: str | os.PathLike[str]) -> list[Section]:
    """The tables `rtk info` prints for an .onnx, .plan or .pt file."""
    path = Path(path)
    describer = _DESCRIBERS.get(path.suffix)
    if describer is None:
        raise RtkError(f"cannot describe {path}: expected one of {', '.join(_DESCRIBERS)}")
    if not path.is_file():
        raise RtkError(f"file not found: {path}")
    return describer(path)
