"""A stand-in `tensorrt` module for tests on machines without TensorRT (all of ours).

It implements the small part of TensorRT's Python API that rtk.build and Polygraphy's loaders
call on the way to an engine, records every call rtk (through Polygraphy) makes, and returns what
the test set up: an inspector report (real ones from tests/fixtures/), refusals (a profile, a
timing cache, an execution context). It builds nothing and says nothing about TensorRT's results:
it checks what rtk asks TensorRT for and how it handles the answers.

    trt = make_tensorrt(version="10.13.0.35", report=json_report)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    ... rtk.build.build_engine(...) ...
    trt.calls["create_network"] == [2]   # 1 << STRONGLY_TYPED (1 in 10.x)
"""

from __future__ import annotations

import enum
import json
import sys
import types
from collections import defaultdict
from typing import Any

import numpy as np

OTHER_GPU_CACHE = b"timing cache from another GPU"
PLAN = b"serialized engine of the stand-in TensorRT"


class HostMemory:
    """IHostMemory: a buffer, and a context manager (Polygraphy writes the timing cache under `with`)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nbytes = len(data)

    def __buffer__(self, flags: int) -> memoryview:
        return memoryview(self.data)

    def __bytes__(self) -> bytes:
        return self.data

    def __enter__(self) -> bytes:
        return self.data

    def __exit__(self, *exc: object) -> None:
        return None


def make_tensorrt(*, version: str = "10.13.0.35", report: dict | None = None, strongly_typed_value: int | None = 1,
                  refuse_profile: bool = False, context_fails: bool = False, output_dtype: str = "FLOAT",
                  parse_errors: tuple[str, ...] = (), convs: tuple[str, ...] = ("fp32",)) -> types.ModuleType:
    """The stand-in module. strongly_typed_value: NetworkDefinitionCreationFlag.STRONGLY_TYPED's
    value (1 in 10.x, 0 in 11.x) or None for a release without the member. convs: the precision of
    each Convolution of the parsed network ("int8": data and kernel from IDequantizeLayers of INT8
    constants, as the parser makes them of QDQ; "fp16": HALF data; "fp32": FLOAT data), named
    conv0, conv1, ..."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: dict[str, list[Any]] = defaultdict(list)
    trt.calls = calls

    flags = {"EXPLICIT_BATCH": 0} if strongly_typed_value != 0 else {}
    if strongly_typed_value is not None:
        flags["STRONGLY_TYPED"] = strongly_typed_value
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags or {"_NONE": 99})
    for name, members in {
        "BuilderFlag": ("TF32", "FP16", "INT8", "DIRECT_IO"), "MemoryPoolType": ("WORKSPACE",),
        "ProfilingVerbosity": ("LAYER_NAMES_ONLY", "NONE", "DETAILED"), "DeviceType": ("GPU", "DLA"),
        "LayerType": ("SHAPE", "QUANTIZE", "DEQUANTIZE", "CONVOLUTION", "CONSTANT"), "LayerInformationFormat": ("ONELINE", "JSON"),
        "DataType": ("FLOAT", "HALF", "BF16", "FP8", "INT8", "INT32"),
    }.items():
        setattr(trt, name, enum.IntEnum(name, {member: i for i, member in enumerate(members)}))

    def nptype(dtype: Any) -> type:
        types_ = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
                  trt.DataType.INT32: np.int32}
        if dtype not in types_:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return types_[dtype]

    trt.nptype = nptype

    class ILogger:
        def __init__(self, *args: object) -> None:
            return None

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any = None) -> None:
            self.name, self.shape, self.is_shape_tensor = name, shape, False
            self.dtype = trt.DataType.FLOAT if dtype is None else dtype

    class Layer:
        def __init__(self, name: str, kind: Any, inputs: list[Tensor], output: Tensor) -> None:
            self.name, self.type, self._inputs, self._output = name, kind, inputs, output
            self.num_inputs, self.num_outputs = len(inputs), 1

        def get_input(self, index: int) -> Tensor:
            return self._inputs[index]

        def get_output(self, index: int) -> Tensor:
            return self._output

    def layers_of(precisions: tuple[str, ...]) -> list[Layer]:
        layers, float_type = [], {"fp16": trt.DataType.HALF, "int8": trt.DataType.FLOAT}
        for i, precision in enumerate(precisions):
            data = Tensor(f"x{i}", (-1, 16, 32, 32), float_type.get(precision, trt.DataType.FLOAT))
            inputs = [data]
            if precision == "int8":  # Constant(INT8) -> Dequantize for the kernel, Dequantize for the data
                kernel = Tensor(f"w{i}", (16, 16, 3, 3))
                for tensor, source in ((data, f"q{i}"), (kernel, f"wq{i}")):
                    quantized = Tensor(source, tensor.shape, trt.DataType.INT8)
                    layers.append(Layer(f"dq_{source}", trt.LayerType.DEQUANTIZE, [quantized], tensor))
                inputs.append(kernel)
            layers.append(Layer(f"conv{i}", trt.LayerType.CONVOLUTION, inputs,
                                Tensor(f"y{i}", (-1, 16, 32, 32), data.dtype)))
        return layers

    class Network:
        num_inputs = num_outputs = 1

        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.layers = layers_of(convs)
            self.num_layers = len(self.layers)

        def get_input(self, index: int) -> Tensor:
            return Tensor("input", (-1, 3, 32, 32))

        def get_output(self, index: int) -> Tensor:
            return Tensor("logits", (-1, 10), getattr(trt.DataType, output_dtype))

        def get_layer(self, index: int) -> Layer:
            return self.layers[index]

        def get_flag(self, flag: Any) -> bool:
            return bool(self.flags & (1 << int(flag)))

        def __iter__(self):
            return iter(self.layers)

    class Profile:
        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
            if not tuple(min) <= tuple(opt) <= tuple(max):
                raise ValueError("min <= opt <= max does not hold")  # what TensorRT's binding raises
            calls["set_shape"].append((name, tuple(min), tuple(opt), tuple(max)))

        def __bool__(self) -> bool:
            return True

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> HostMemory:
            return HostMemory(b"timing cache:" + self.data)

        def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
            calls["combine"].append(other.data)
            return True

    class Config:
        DLA_core = -1

        def __init__(self) -> None:
            self.default_device_type = trt.DeviceType.GPU
            self.flags: set[Any] = {trt.BuilderFlag.TF32}  # TensorRT's default: TF32 on
            self.profiles: list[Profile] = []
            self.cache: TimingCache | None = None
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self.builder_optimization_level = 3

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(flag)

        def get_flag(self, flag: Any) -> bool:
            return flag in self.flags

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls["set_memory_pool_limit"].append((pool, size))

        def add_optimization_profile(self, profile: Profile) -> int:
            if refuse_profile:
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls["create_timing_cache"].append(bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls["set_timing_cache"].append((cache.data, ignore_mismatch))
            if cache.data == OTHER_GPU_CACHE and not ignore_mismatch:
                return False  # not attached
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            return None

        def create_network(self, flags: int = 0) -> Network:
            calls["create_network"].append(flags)
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> HostMemory:
            calls["build"].append({"flags": set(config.flags), "verbosity": config.profiling_verbosity,
                                   "level": config.builder_optimization_level,
                                   "cache": config.cache.data if config.cache else None})
            return HostMemory(PLAN)

    class ParserError:
        def __init__(self, desc: str) -> None:
            self._desc = desc

        def __str__(self) -> str:
            return f"In node 0 (parse): UNSUPPORTED_NODE: {self._desc}"

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            calls["parse_from_file"].append(path)
            self.num_errors = len(parse_errors)
            return not parse_errors

        def get_error(self, index: int) -> ParserError:
            return ParserError(parse_errors[index])

    class Context:
        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            calls["set_input_shape"].append((name, tuple(shape)))
            return name == "input"

    class Inspector:
        execution_context: Context | None = None

        def get_engine_information(self, fmt: Any) -> str:
            calls["inspector"].append((fmt, self.execution_context))
            return json.dumps(report if report is not None else {"Layers": []})

    class Engine:
        def create_execution_context(self) -> Context | None:
            return None if context_fails else Context()

        def create_engine_inspector(self) -> Inspector:
            return Inspector()

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            return None

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            calls["deserialize"].append(bytes(plan))
            return Engine() if bytes(plan) == PLAN else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def forget_cached_tensorrt() -> None:
    """Polygraphy imports tensorrt lazily and keeps the module it got (polygraphy/mod/importer.py
    LazyModule) and its TensorRT logger: drop both, so each test's stand-in is the one used."""
    for name, module in list(sys.modules.items()):
        if name.startswith("polygraphy") and module is not None:
            for value in vars(module).values():
                if type(value).__name__ == "LazyModule":
                    object.__setattr__(value, "module", None)
    trt_util = sys.modules.get("polygraphy.backend.trt.util")
    if trt_util is not None:
        trt_util.TRT_LOGGER = None
