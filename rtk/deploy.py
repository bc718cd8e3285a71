"""Serving at scale: a Triton Inference Server model repository for an rtk ONNX file or TensorRT engine.

    <repo>/<model>/config.pbtxt    platform (onnxruntime_onnx | tensorrt_plan), max_batch_size,
                                   input "input" TYPE_FP32 [3,32,32], output "logits" TYPE_FP32 [10]
                                   with label_filename, dynamic_batching, instance_group, and the
                                   preprocessing as `parameters` (rtk.normalization: mean/std/scale)
    <repo>/<model>/labels.txt      class names, one a line, in logit order
    <repo>/<model>/README.md       how a client must preprocess, with the artifact's own numbers
    <repo>/<model>/1/model.onnx    or 1/model.plan: the served file (version 1)

Each file is written to a temporary name and renamed into place (rtk.fileio.atomic_path), the model
file first and config.pbtxt last, so a Triton server polling the repository never loads half a file.
A re-run replaces only these files: other versions (2/, 3/, ...) and files a user added stay. Triton runs the network only:
clients send normalized float32 NCHW, exactly what rtk.preprocess.normalize_uint8_nhwc returns.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtk import __version__
from rtk.errors import RtkError
from rtk.fileio import atomic_path, check_output, sha256_file, write_text_atomic
from rtk.log import info
from rtk.names import with_article
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME

Log = Callable[[str], None]

PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
LABELS_FILE = "labels.txt"
MODEL_VERSION = "1"
# An ONNX file has no batch limit of its own: 256 is where onnxruntime's throughput on our 2-core
# CPU has flattened (REFERENCE.md section 3 measures at 256) and a small share of a GPU's memory.
DEFAULT_ONNX_MAX_BATCH = 256
# Triton's dynamic batcher waits up to this long for more requests to fill a batch: 100 us is about
# a third of one batch-1 inference on the CPU (0.27-0.48 ms, REFERENCE.md), a small latency cost.
DEFAULT_MAX_QUEUE_DELAY_US = 100
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float": "TYPE_FP32", "float16": "TYPE_FP16", "half": "TYPE_FP16"}


@dataclass(frozen=True)
class ServedTensor:
    name: str
    dims: tuple[int, ...]  # without the batch axis, as Triton wants them
    data_type: str  # Triton's name, e.g. "TYPE_FP32"


@dataclass(frozen=True)
class ServedModel:
    """What a config is written from: the artifact's I/O, batch limits and rtk metadata."""

    source: Path
    backend: str  # "onnx" or "tensorrt"
    input: ServedTensor
    output: ServedTensor
    max_batch: int | None  # the engine profile's max; None: the ONNX batch axis is unbounded
    opt_batch: int | None  # the batch size the engine was tuned for
    metadata: dict[str, Any]  # depth, precision, normalization, classes, (int8_target, tensorrt_version, gpu)
    external_weights: bool = False  # an ONNX whose initializers live in side files


def _triton_dtype(dtype: str, where: str) -> str:
    # Accepts numpy names ("float32") and TensorRT's ("DataType.FLOAT").
    key = dtype.split(".")[-1].lower()
    if key not in _TRITON_DTYPES:
        raise RtkError(f"{where} has dtype {dtype!r}; rtk serves float32 or float16 tensors only")
    return _TRITON_DTYPES[key]


def _served_tensor(name: str, shape: Sequence[int | str], dtype: str, expected_name: str,
                   expected_dims: tuple[int, ...], where: str) -> ServedTensor:
    dims = tuple(shape[1:])
    if name != expected_name or dims != expected_dims:
        wanted = "[N, " + ", ".join(map(str, expected_dims)) + "]"
        found = "[" + ", ".join(map(str, shape)) + "]"
        raise RtkError(f"{where} has {name!r} {found}; rtk models have {expected_name!r} {wanted}")
    return ServedTensor(name, tuple(int(d) for d in dims), _triton_dtype(dtype, where))


def _read_onnx(path: Path) -> ServedModel:
    from rtk.describe import summarize_onnx
    from rtk.onnx_meta import check_finite_weights, load_onnx, missing_fields

    summary = summarize_onnx(load_onnx(path, load_weights=False))  # tells weights kept in side files
    missing = missing_fields(summary.metadata)
    if missing:
        raise RtkError(f"{path} is not an rtk ONNX file (no rtk metadata {', '.join(missing)}): "
                       f"export it with `rtk export`")
    if len(summary.inputs) != 1 or len(summary.outputs) != 1:
        raise RtkError(f"{path} has {len(summary.inputs)} inputs and {len(summary.outputs)} outputs; "
                       f"rtk models have one of each")
    check_finite_weights(load_onnx(path), path)  # Triton would serve class 0 for everything
    (inp,), (out,) = summary.inputs, summary.outputs
    batch = inp.shape[0] if inp.shape else None
    if not isinstance(batch, str):
        raise RtkError(f"{path} has a fixed batch of {batch}; Triton's dynamic batching needs a dynamic "
                       f"batch axis (export without --fixed-batch)")
    num_classes = len(summary.metadata["classes"])
    return ServedModel(
        source=path, backend="onnx",
        input=_served_tensor(inp.name, inp.shape, inp.dtype, INPUT_NAME, IMAGE_SHAPE, str(path)),
        output=_served_tensor(out.name, out.shape, out.dtype, OUTPUT_NAME, (num_classes,), str(path)),
        max_batch=None, opt_batch=None, metadata=summary.metadata,
        external_weights=bool(summary.external_initializers))


def _read_engine(path: Path) -> ServedModel:
    from rtk.engine_meta import read_sidecar
    from rtk.runtime.engines import TENSORRT, runtime_of

    sidecar = read_sidecar(path)
    if runtime_of(sidecar) is not TENSORRT:
        raise RtkError(f"{path} is a {runtime_of(sidecar).product} engine: Triton's tensorrt backend runs TensorRT "
                       "engines; serve the ONNX file it was built from, or a TensorRT engine")
    try:
        (inp,), (out,) = sidecar["inputs"], sidecar["outputs"]
        metadata = {key: sidecar[key] for key in ("depth", "precision", "normalization", "classes",
                                                  "tensorrt_version", "gpu")}
        profile = {key: int(sidecar["profile"][key]) for key in ("opt", "max")}
        input_tensor = _served_tensor(inp["name"], inp["shape"], inp["dtype"], INPUT_NAME, IMAGE_SHAPE,
                                      f"{path}.json")
        output_tensor = _served_tensor(out["name"], out["shape"], out["dtype"], OUTPUT_NAME,
                                       (len(sidecar["classes"]),), f"{path}.json")
    except KeyError as exc:
        raise RtkError(f"{path}.json has no {exc.args[0]!r} field: rebuild the engine with `rtk build`") from exc
    except (TypeError, ValueError) as exc:
        raise RtkError(f"{path}.json has a malformed field ({exc}): rebuild the engine with `rtk build`") from exc
    return ServedModel(source=path, backend="tensorrt", input=input_tensor, output=output_tensor,
                       max_batch=profile["max"], opt_batch=profile["opt"], metadata=metadata)


def read_served_model(source: Path) -> ServedModel:
    """An .onnx file, or a TensorRT engine (.plan/.engine) with its sidecar."""
    source = Path(source)
    if not source.is_file():
        raise RtkError(f"nothing to deploy at {source}: no such file")
    if source.suffix == ".onnx":
        return _read_onnx(source)
    if source.suffix in (".plan", ".engine"):
        return _read_engine(source)
    raise RtkError(f"{source}: rtk deploys .onnx files or TensorRT engines (.plan with a .plan.json sidecar)")


@dataclass(frozen=True)
class Batching:
    max_batch: int
    preferred: tuple[int, ...]
    max_queue_delay_us: int


def _batching(model: ServedModel, max_batch: int | None, preferred: Sequence[int],
              max_queue_delay_us: int) -> Batching:
    limit = model.max_batch
    if max_batch is None:
        max_batch = limit or DEFAULT_ONNX_MAX_BATCH
    if max_batch < 1 or (limit is not None and max_batch > limit):
        raise RtkError(f"--max-batch {max_batch} is outside 1..{limit or 'any'}"
                       + (f" (the engine's optimization profile ends at {limit})" if limit else ""))
    if not preferred:
        # The engine's kernels were tuned for its opt batch; an ONNX gets the largest batch the
        # delay allows (Triton's behaviour with no preferred size).
        preferred = sorted({b for b in (model.opt_batch, max_batch) if b}) if model.opt_batch else []
    bad = [b for b in preferred if not 1 <= b <= max_batch]
    if bad:
        raise RtkError(f"preferred batch sizes {bad} are outside 1..{max_batch} (max_batch_size)")
    if max_queue_delay_us < 0:
        raise RtkError(f"the queue delay must be >= 0 microseconds, got {max_queue_delay_us}")
    return Batching(max_batch, tuple(sorted(set(preferred))), max_queue_delay_us)


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _preprocessing_formula(normalization: dict[str, Any]) -> str:
    return (f"uint8 {normalization.get('channel_order', 'RGB')} HWC image -> float32 "
            f"{normalization.get('layout', 'NCHW')}: x = (pixel * {normalization['scale']!r} - mean[c]) / std[c], "
            f"mean = {list(normalization['mean'])}, std = {list(normalization['std'])}")


def _parameters(model: ServedModel, source_sha256: str) -> dict[str, str]:
    meta = model.metadata
    params = {
        "rtk.preprocessing": _preprocessing_formula(meta["normalization"]),
        "rtk.normalization": json.dumps(meta["normalization"]),
        "rtk.depth": str(meta["depth"]),
        "rtk.precision": str(meta["precision"]),
        "rtk.source_sha256": source_sha256,
        "rtk.version": __version__,
    }
    if meta.get("int8_target"):
        params["rtk.int8_target"] = str(meta["int8_target"])
    if model.backend == "tensorrt":
        params["rtk.tensorrt_version"] = str(meta["tensorrt_version"])
        params["rtk.gpu"] = json.dumps(meta["gpu"])
    return params


def triton_config(model: ServedModel, name: str, batching: Batching, *, instances: int, kind: str,
                  source_sha256: str) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for `model`."""

    def tensor(t: ServedTensor, extra: str = "") -> str:
        dims = ", ".join(map(str, t.dims))
        return (f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n"
                f"{extra}  }}\n")

    preferred = ""
    if batching.preferred:
        preferred = f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred))} ]\n"
    lines = [
        (f"# Written by rtk {__version__} (`rtk deploy triton`) from {model.source.name}; "
         f"clients preprocess as README.md says.\n"),
        f"name: {_quote(name)}\n",
        f"platform: {_quote(PLATFORMS[model.backend])}\n",
        f"max_batch_size: {batching.max_batch}\n",
        "input [\n" + tensor(model.input) + "]\n",
        "output [\n" + tensor(model.output, f"    label_filename: {_quote(LABELS_FILE)}\n") + "]\n",
        "dynamic_batching {\n" + preferred
        + f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}\n}}\n",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {INSTANCE_KINDS[kind]}\n  }}\n]\n",
    ]
    lines += [f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}\n"
              for key, value in _parameters(model, source_sha256).items()]
    return "".join(lines)


def _readme(model: ServedModel, name: str, batching: Batching, instances: int, kind: str) -> str:
    meta = model.metadata
    norm = meta["normalization"]
    classes = meta["classes"]
    server = PLATFORMS[model.backend]
    pinned = ""
    if model.backend == "tensorrt":
        gpu = meta["gpu"]
        pinned = (f"\nThe engine was built with TensorRT {meta['tensorrt_version']} for {gpu.get('name')} "
                  f"(compute capability {gpu.get('compute_capability')}). Engines load only in that "
                  f"TensorRT version on that kind of GPU: serve it with the Triton release that ships "
                  f"TensorRT {meta['tensorrt_version']}, or rebuild the engine with `rtk build`.\n")
    preferred = ", ".join(map(str, batching.preferred)) or "none (largest batch the delay allows)"
    return f"""# {name}

ResNet-{meta['depth']} for CIFAR-10 ({meta['precision']}), served by Triton's `{server}` backend.
Written by rtk {__version__} (`rtk deploy triton`) from `{model.source.name}`.
{pinned}
## Input: preprocess on the client

Triton runs the network only. Send `{model.input.name}`, float32 `[batch, {', '.join(map(str, model.input.dims))}]`
({norm.get('layout', 'NCHW')}, {norm.get('channel_order', 'RGB')}), each uint8 pixel normalized as in training:

    x[c] = (pixel[c] * {norm['scale']!r} - mean[c]) / std[c]
    mean = {list(norm['mean'])}
    std  = {list(norm['std'])}

then move the channels first (HWC -> CHW). In Python, `rtk.preprocess.normalize_uint8_nhwc(images, meta)`
does exactly this for uint8 `[N, 32, 32, 3]` images, with `meta` the JSON of the `rtk.normalization`
parameter in config.pbtxt.

## Output

`{model.output.name}`, float32 `[batch, {len(classes)}]`: one logit per class, in the order of
{LABELS_FILE} ({', '.join(classes)}). Softmax gives probabilities; ask Triton for top-k with class
names through its classification extension (`class_count`).

## Serving

max_batch_size {batching.max_batch}; dynamic batching with preferred sizes {preferred} and at most
{batching.max_queue_delay_us} us queue delay; {instances} instance(s) of kind {INSTANCE_KINDS[kind]}.

    tritonserver --model-repository <this folder's parent>

```python
import tritonclient.http as triton
from rtk.preprocess import normalize_uint8_nhwc

normalization = {dict(norm)!r}  # this model's (the rtk.normalization parameter)
x = normalize_uint8_nhwc(images, normalization)  # uint8 [N, 32, 32, 3] -> float32 [N, 3, 32, 32]
request = triton.InferInput("{model.input.name}", list(x.shape), "FP32")
request.set_data_from_numpy(x)
client = triton.InferenceServerClient("localhost:8000")
result = client.infer("{name}", [request], outputs=[triton.InferRequestedOutput("{model.output.name}")])
logits = result.as_numpy("{model.output.name}")  # [N, {len(classes)}]
```
"""


def default_model_name(model: ServedModel) -> str:
    """resnet20_fp32_onnx, resnet20_int8_cpu_onnx, resnet20_int8_trt, ..."""
    meta = model.metadata
    parts = [f"resnet{meta['depth']}", str(meta["precision"])]
    if model.backend == "onnx" and meta.get("int8_target"):
        parts.append(str(meta["int8_target"]))
    parts.append("trt" if model.backend == "tensorrt" else "onnx")
    return "_".join(parts)


def _copy_model_file(model: ServedModel, dest: Path) -> None:
    if model.external_weights:
        # Weights in side files (torch.onnx.export's default): Triton gets one self-contained file.
        import onnx

        from rtk.onnx_meta import load_onnx

        onnx.save_model(load_onnx(model.source), dest, save_as_external_data=False)
    else:
        shutil.copyfile(model.source, dest)


def export_triton(source: Path, repo: Path, *, model_name: str | None = None, precision: str | None = None,
                  max_batch: int | None = None, preferred_batch: Sequence[int] = (),
                  max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US, instances: int = 1,
                  kind: str = "gpu", log: Log = info) -> Path:
    """Write `repo`/<model name>/ (config.pbtxt, labels.txt, README.md, 1/model.*) for `source`;
    returns the model folder. `precision`, if given, must be the artifact's."""
    model = read_served_model(source)
    if precision is not None and precision != model.metadata["precision"]:
        raise RtkError(f"{source} is {with_article(model.metadata['precision'])} model, not {precision}: "
                       f"drop --precision or pass the {precision} file")
    if kind not in INSTANCE_KINDS:
        raise RtkError(f"unknown instance kind {kind!r}; choose one of {', '.join(INSTANCE_KINDS)}")
    if model.backend == "tensorrt" and kind == "cpu":
        raise RtkError(f"{source} is a TensorRT engine, which runs only on a GPU: use --kind gpu, or deploy "
                       f"the ONNX file for CPU instances")
    if instances < 1:
        raise RtkError(f"--instances must be at least 1, got {instances}")
    name = model_name or default_model_name(model)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise RtkError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (it names a folder)")
    batching = _batching(model, max_batch, preferred_batch, max_queue_delay_us)

    folder = Path(repo) / name
    if folder.exists() and not folder.is_dir():
        raise RtkError(f"cannot write the Triton model {folder}: a file is in the way")
    model_file = check_output(folder / MODEL_VERSION / MODEL_FILES[model.backend])
    for file_name in (LABELS_FILE, "README.md", "config.pbtxt"):
        check_output(folder / file_name)
    # Only rtk's own files are replaced, each atomically: other versions (2/, 3/, ...) and files a
    # user added stay. Every text is made before anything is written, and the model file goes first,
    # config.pbtxt (which makes Triton load it) last.
    texts = {LABELS_FILE: "".join(f"{c}\n" for c in model.metadata["classes"]),
             "README.md": _readme(model, name, batching, instances, kind),
             "config.pbtxt": triton_config(model, name, batching, instances=instances, kind=kind,
                                           source_sha256=sha256_file(model.source))}
    with atomic_path(model_file) as tmp:
        _copy_model_file(model, tmp)
    for file_name, text in texts.items():
        write_text_atomic(folder / file_name, text)
    log(f"wrote Triton model {name!r} ({PLATFORMS[model.backend]}, max batch {batching.max_batch}, "
        f"{instances} x {INSTANCE_KINDS[kind]}) from {source} into {folder}")
    return folder
