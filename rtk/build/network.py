"""The parsed network and the build through Polygraphy, the same for TensorRT and TensorRT for RTX.

`build_through_polygraphy` is the one path both runtimes build by: NetworkFromOnnxPath (strongly
typed), PostprocessNetwork running rtk's check on the parsed network, a config of rtk's settings,
engine_bytes_from_network (polygraphy/backend/trt/loader.py, config.py, profile.py); only the config
class (CreateConfig or TensorRT for RTX's CreateConfigRTX) and the timing cache differ, passed in by
rtk.build.tensorrt_builder and rtk.build.rtx_builder.

The check needs no GPU: it reads the strongly typed network definition (INetworkDefinition, the same
API in both runtimes) before the build. In a strongly typed network a Convolution computes in the
type of what it reads:

    int8  its data input and its kernel (input 1) both come from an IDequantizeLayer of INT8 data:
          the QuantizeLinear/DequantizeLinear pairs TensorRT fuses into an INT8 convolution
    fp16  its data input is HALF (an FP16 ONNX)
    fp32  its data input is FLOAT, and not both inputs dequantized from INT8

A file of precision P must have every Conv in P, except, in an INT8 file, the Convs its metadata lists
as float (rtk.calibration.float_convs: the TensorRT flavour's first two, and those `--max-drop` or
`--exclude` left float). So an INT8 file whose QDQ were lost fails here, in CI, on any machine; the
engine inspector's gate (rtk.build.inspector) stays where a GPU builds a TensorRT engine.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtk.errors import RtkError
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME

if TYPE_CHECKING:
    import tensorrt as trt  # checked against typings/tensorrt (tests/test_build.py runs mypy)

# What a Conv's input dtype means, by DataType name (the enum's values differ between releases)
_FLOAT_TYPES = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16"}
_HINTS = {
    "int8": "an INT8 Conv reads a DequantizeLinear of INT8 data and of INT8 weights; make the file with "
            "`rtk quantize` (its TensorRT flavour)",
    "fp16": "an FP16 Conv reads FP16 data; make the file with `rtk quantize --fp16`",
    "fp32": "an FP32 file has no QDQ and no FP16 casts; make it with `rtk export`",
}


def conv_precisions(trt_module: Any, network: trt.INetworkDefinition) -> dict[str, str]:
    """{Conv layer name: "int8" | "fp16" | "fp32" | ...} of a parsed strongly typed network, in layer
    order. The ONNX parser names each layer after its ONNX node (node_Conv_374, ...)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producers = {layer.get_output(j).name: layer for layer in layers for j in range(layer.num_outputs)}

    def dtype(layer: trt.ILayer, index: int) -> str | None:
        """The DataType name of a layer's input; None where the input is left out (an FP32 Conv's
        kernel is its weights, not an input)."""
        tensor = layer.get_input(index) if index < layer.num_inputs else None
        return None if tensor is None else tensor.dtype.name

    def dequantized_int8(layer: trt.ILayer, index: int) -> bool:
        tensor = layer.get_input(index) if index < layer.num_inputs else None
        producer = producers.get(tensor.name) if tensor is not None else None
        return (producer is not None and producer.type == trt_module.LayerType.DEQUANTIZE
                and dtype(producer, 0) == "INT8")

    convs = {}
    for layer in layers:
        if layer.type == trt_module.LayerType.CONVOLUTION:
            data = str(dtype(layer, 0))
            convs[layer.name] = ("int8" if dequantized_int8(layer, 0) and dequantized_int8(layer, 1)
                                 else _FLOAT_TYPES.get(data, data.lower()))
    return convs


def check_conv_precisions(precision: str, convs: Mapping[str, str], float_convs: Collection[str],
                          source: str) -> None:
    """RtkError unless every Conv of `convs` computes in `precision` (the `float_convs` of an INT8
    file in FP32)."""
    if not convs:
        raise RtkError(f"{source}: the parsed network has no Convolution layer; is it an rtk ResNet?")
    expected = {name: "fp32" if precision == "int8" and name in float_convs else precision for name in convs}
    wrong = [f"{name} {got}" for name, got in convs.items() if got != expected[name]]
    if wrong:
        listed = ", ".join(wrong[:4]) + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        floats = f", {len(float_convs)} listed float in its metadata" if precision == "int8" else ""
        raise RtkError(f"{source}: {len(wrong)} of {len(convs)} Convs would not compute in {precision} "
                       f"({listed}{floats}); {_HINTS.get(precision, '')}")


def numpy_dtype_name(trt_module: Any, dtype: trt.DataType, tensor: str) -> str:
    """'float32' for DataType.FLOAT: the names rtk.runtime and the C++ app read from the sidecar.
    trt.nptype raises TypeError for types numpy lacks (BF16, FP8, FP4, INT4): one RtkError."""
    import numpy as np

    try:
        return str(np.dtype(trt_module.nptype(dtype)).name)
    except TypeError:
        raise RtkError(f"engine tensor {tensor!r} is {dtype.name}, which numpy has no type for; rtk engines take "
                       "and return float32 (keep the ONNX's inputs and outputs float32)") from None


class NetworkCheck:
    """The function PostprocessNetwork runs on the parsed network: checks its Convs' precisions and
    keeps what the sidecar records (Conv counts per precision, the I/O tensors)."""

    def __init__(self, trt_module: Any, precision: str, float_convs: Collection[str], source: str) -> None:
        self.trt, self.precision, self.float_convs, self.source = trt_module, precision, float_convs, source
        self.convs: dict[str, str] = {}
        self.tensors: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}

    def __call__(self, *, network: trt.INetworkDefinition) -> None:
        self.convs = conv_precisions(self.trt, network)
        check_conv_precisions(self.precision, self.convs, self.float_convs, self.source)
        for kind, count, get in (("inputs", network.num_inputs, network.get_input),
                                 ("outputs", network.num_outputs, network.get_output)):
            self.tensors[kind] = [{"name": t.name, "shape": list(t.shape),
                                   "dtype": numpy_dtype_name(self.trt, t.dtype, t.name)}
                                  for t in map(get, range(count))]

    @property
    def counts(self) -> dict[str, int]:
        """{precision: number of Convs}"""
        return dict(sorted(Counter(self.convs.values()).items()))


@dataclass
class Built:
    """What a runtime's build hands rtk.build.build_engine for the engine file and its sidecar."""

    plan: bytes
    product: str  # the runtime and its version, "TensorRT 10.13.0.35"
    seconds: float
    conv_precisions: dict[str, int]  # NetworkCheck.counts
    tensors: dict[str, list[dict[str, Any]]]  # NetworkCheck.tensors
    fields: dict[str, Any]  # the runtime's own sidecar fields (rtk.engine_meta)
    packages: tuple[str, ...]  # whose versions the sidecar's provenance records


def strongly_typed_flag_exists(trt_module: Any) -> bool:
    """Whether this TensorRT has NetworkDefinitionCreationFlag.STRONGLY_TYPED, looked up by name:
    10.x needs it for strong typing; 11 deprecated it (and renumbered it 1 -> 0) because strong
    typing is always on, so a release without it builds strongly typed with no flag at all.
    TensorRT for RTX 1.7 has it and asks for it to be set ("explicitly specify this to avoid
    warning", NVIDIA/TensorRT-RTX samples/helloWorld/python/hello_world.py)."""
    return hasattr(trt_module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


@contextlib.contextmanager
def polygraphy_logs_to_stderr() -> Iterator[None]:
    """Polygraphy prints its (and TensorRT's) messages on stdout; rtk keeps stdout for results.
    Warnings and errors only: rtk logs its own progress."""
    from polygraphy.logger import G_LOGGER

    with contextlib.redirect_stdout(sys.stderr), G_LOGGER.verbosity(G_LOGGER.WARNING):
        yield


def config_options(trt_module: Any, *, batches: tuple[int, int, int], workspace_mb: int,
                   optimization_level: int) -> dict[str, Any]:
    """The arguments of Polygraphy's CreateConfig and CreateConfigRTX that rtk sets for both runtimes:
    one profile for the input batch ([N, 3, 32, 32], N min/opt/max), the workspace limit, the
    optimization level and DETAILED profiling verbosity. (TF32 is CreateConfig's argument alone.)"""
    from polygraphy.backend.trt import Profile

    profile = Profile().add(INPUT_NAME, *((batch, *IMAGE_SHAPE) for batch in batches))
    return {"profiles": [profile],
            "memory_pool_limits": {trt_module.MemoryPoolType.WORKSPACE: workspace_mb << 20},
            "builder_optimization_level": optimization_level,
            "profiling_verbosity": trt_module.ProfilingVerbosity.DETAILED}


def check_profile(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
    """add_optimization_profile's -1, which Polygraphy's CreateConfig leaves unchecked
    (polygraphy/backend/trt/config.py), as one error."""
    if config.num_optimization_profiles != 1:
        raise RtkError(f"TensorRT refused the optimization profile for {INPUT_NAME!r} (add_optimization_profile "
                       "failed; see the TensorRT log above)")


def build_through_polygraphy(trt_module: Any, onnx_path: Path, make_config: Callable[[], Any], check: NetworkCheck,
                             *, product: str, save_timing_cache: Any = None) -> bytes:
    """The serialized engine of `onnx_path`, built with the config `make_config()` returns, after
    `check` passed on the parsed network; Polygraphy's and TensorRT's errors become one RtkError."""
    from polygraphy.backend.trt import NetworkFromOnnxPath, PostprocessNetwork, engine_bytes_from_network
    from polygraphy.exception import PolygraphyException

    parsed = NetworkFromOnnxPath(os.fspath(onnx_path), strongly_typed=strongly_typed_flag_exists(trt_module))
    try:
        with polygraphy_logs_to_stderr():
            network = PostprocessNetwork(parsed, check, name="rtk's check of the Conv precisions")
            return bytes(engine_bytes_from_network(network, make_config(), save_timing_cache=save_timing_cache))
    except (PolygraphyException, RuntimeError, ValueError) as exc:  # TensorRT's own calls raise the last two
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RtkError(f"{product} could not build an engine from {onnx_path}: {reason} "
                       f"(see the {product} log above)") from exc
