"""rtk.build, `rtk build` and scripts/gpu_check_tensorrt.py without TensorRT or a GPU: the sidecar, the
per-layer precision count from inspector reports (real ones TensorRT wrote, tests/fixtures/, and
their TensorRT 11 form), the engine/version/GPU checks, the build through Polygraphy's loaders
against a stand-in tensorrt module (tests/trt_standin.py: what rtk asks TensorRT for, and how it
takes each refusal), the one-line exit 2 where TensorRT, Polygraphy or a CUDA device is missing,
and a mypy run of rtk/build.py and the TensorRT runner against typings/.

The small hand-written reports below follow the format TensorRT documents and prints:
{"Layers": [...], "Bindings": [...]} up to 10.x, each layer with Inputs/Outputs whose
"Format/Datatype" names the datatype and, for convolutions, "Weights": {"Type": ..., "Count": ...}
(ProfilingVerbosity.DETAILED); in 11.x "I/O Tensors" replaces "Bindings" and each tensor's
"Format/Datatype" is split into "Datatype" and "Format"
(docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import import_script, write_fake_engine
from test_cpp import tiny_rtk_onnx
from trt_standin import OTHER_GPU_CACHE, PLAN, forget_cached_tensorrt, make_tensorrt

from rtk import build
from rtk.build import inspector
from rtk.cli import main
from rtk.engine_meta import read_engine, sidecar_path
from rtk.errors import MissingDependency, RtkError, require
from rtk.preprocess import CLASSES, normalization_metadata
from rtk.runtime import engines

ROOT = Path(__file__).resolve().parent.parent
GPU_INSTALL = "pip install 'rtk[gpu-cu13]' (CUDA 13 driver) or 'rtk[gpu-cu12]' (CUDA 12 driver)"
MISSING_TENSORRT = ("tensorrt is not installed (import of tensorrt halted; None in sys.modules); "
                    f"install it with: {GPU_INSTALL}")
FIXTURES = ROOT / "tests" / "fixtures" / "tensorrt_inspector"
# precision -> the report TensorRT wrote for such a ResNet-18 engine (tests/fixtures/.../README.md)
REAL_REPORTS = {"fp32": "resnet18-fp32.engine.graph.json", "fp16": "resnet18-fp16.engine.graph.json",
                "int8": "resnet18-qat-int8.engine.graph.json"}
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def tensor(name: str, datatype: str, dims: list[int]) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": datatype}


INT8_ENGINE_TRT10 = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to conv1 + relu", "LayerType": "Reformat",
         "Inputs": [tensor("input", "Row major linear FP32", [256, 3, 32, 32])],
         "Outputs": [tensor("r0", "Thirty-two wide channel vectorized row major Int8 format.", [256, 3, 32, 32])],
         "ParameterType": "Reformat", "Origin": "REFORMAT", "TacticValue": "0x00000000000003e8"},
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [tensor("r0", "Thirty-two wide channel vectorized row major Int8 format.", [256, 3, 32, 32])],
         "Outputs": [tensor("relu", "Thirty-two wide channel vectorized row major Int8 format.", [256, 16, 32, 32])],
         "ParameterType": "Convolution", "Kernel": [3, 3], "Weights": {"Type": "Int8", "Count": 432},
         "Bias": {"Type": "Float", "Count": 16}, "HasReLU": 1,
         "TacticName": "sm90_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32"},
        {"Name": "conv2 + add + relu", "LayerType": "CaskConvolution",
         "Inputs": [tensor("relu", "Thirty-two wide channel vectorized row major Int8 format.", [256, 16, 32, 32]),
                    tensor("shortcut", "Thirty-two wide channel vectorized row major Int8 format.",
                           [256, 16, 32, 32])],
         "Outputs": [tensor("relu2", "Thirty-two wide channel vectorized row major Int8 format.", [256, 16, 32, 32])],
         "ParameterType": "Convolution", "Weights": {"Type": "Int8", "Count": 2304}},
        {"Name": "mean", "LayerType": "CaskPooling",
         "Inputs": [tensor("relu2", "Row major linear FP32", [256, 64, 8, 8])],
         "Outputs": [tensor("mean", "Row major linear FP32", [256, 64, 1, 1])]},
        {"Name": "fc", "LayerType": "CaskGemmConvolution",
         "Inputs": [tensor("mean", "Row major linear FP32", [256, 64, 1, 1])],
         "Outputs": [tensor("logits", "Row major linear FP32", [256, 10])],
         "Weights": {"Type": "Float", "Count": 640}},
    ],
    "Bindings": ["input", "logits"],
}

def tensor11(name: str, datatype: str, layout: str, dims: list[int]) -> dict:
    """A layer tensor as TensorRT 11 writes it: datatype and format in separate fields."""
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Datatype": datatype, "Format": layout}


FP16_ENGINE_TRT11 = {
    "Layers": [
        {"Name": "input cast", "LayerType": "Reformat",
         "Inputs": [tensor11("input", "Float", "Row major linear format (kLINEAR)", [256, 3, 32, 32])],
         "Outputs": [tensor11("x16", "Half", "Channel major format where channel % 8 == 0", [256, 3, 32, 32])]},
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [tensor11("x16", "Half", "Channel major format where channel % 8 == 0", [256, 3, 32, 32])],
         "Outputs": [tensor11("y", "Half", "Channel major format where channel % 8 == 0", [256, 16, 32, 32])],
         "Weights": {"Type": "Half", "Count": 432}},
        {"Name": "pool", "LayerType": "CaskPooling",
         "Inputs": [tensor11("y", "Half", "Channel major format where channel % 8 == 0", [256, 16, 32, 32])],
         "Outputs": [tensor11("y16", "Half", "Two wide channel vectorized row major format", [256, 10])]},
        {"Name": "logits cast", "LayerType": "Reformat",
         "Inputs": [tensor11("y16", "Half", "Two wide channel vectorized row major format", [256, 10])],
         "Outputs": [tensor11("logits", "Float", "Row major linear format (kLINEAR)", [256, 10])]},
    ],
    "I/O Tensors": [
        {"Name": "input", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 3, 32, 32],
         "Location": "Device", "IsShapeInferenceIO": False},
        {"Name": "logits", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, 10],
         "Location": "Device", "IsShapeInferenceIO": False},
    ],
}

# What a build asked for INT8 gives when the ONNX has no Q/DQ nodes: everything in FP32 ("Float" is
# how older releases name it), the formats unresolved where no execution context was set.
FLOAT_ENGINE_OLD_NAMES = {
    "Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "Inputs": [tensor("input", "Float", [-1, 3, 32, 32])],
         "Outputs": [tensor("c1", "Float", [-1, 16, 32, 32])], "Weights": {"Type": "Float", "Count": 432}},
        {"Name": "shuffle", "LayerType": "NoOp", "Inputs": [tensor("c1", "N/A due to dynamic shapes", [-1, 16])],
         "Outputs": [tensor("s", "N/A due to dynamic shapes", [-1, 16])]},
    ],
    "Bindings": ["input", "logits"],
}


# ---------------------------------------------------------------------------------------------
# Counting layer precisions


def test_layer_precisions_are_counted_from_weights_and_formats():
    assert inspector.count_layer_precisions(INT8_ENGINE_TRT10) == {"fp32": 3, "int8": 2}
    assert inspector.count_layer_precisions(FP16_ENGINE_TRT11) == {"fp16": 3, "fp32": 1}  # 11.x: split fields
    # fused layers (ConvActPool) name their weights "ConvWeights": the weights' type decides
    fused = {"Name": "conv1 + pool", "LayerType": "ConvActPool", "ConvWeights": {"Type": "Int8", "Count": 9408},
             "ConvBias": {"Type": "Float", "Count": 64}, "ConvHasSparseWeights": 0,
             "Inputs": [tensor("x", "Row major linear FP32", [32, 3, 224, 224])]}
    assert inspector.layer_precision(fused) == "int8"
    assert inspector.count_layer_precisions(FLOAT_ENGINE_OLD_NAMES) == {"fp32": 1, "unknown": 1}
    # LAYER_NAMES_ONLY verbosity lists names only: nothing can be claimed about precision
    assert inspector.count_layer_precisions({"Layers": ["conv1", "conv2"], "Bindings": []}) == {"unknown": 2}
    assert inspector.datatype_of("Thirty-two wide channel vectorized row major Int8 format.") == "int8"
    assert inspector.datatype_of("Row major linear BFloat16") == "bf16"
    assert inspector.datatype_of("N/A due to dynamic shapes") is None
    with pytest.raises(RtkError, match="no 'Layers'"):
        inspector.count_layer_precisions({"Bindings": []})


def test_a_build_without_layers_of_its_precision_fails():
    inspector.check_layer_precisions("int8", inspector.count_layer_precisions(INT8_ENGINE_TRT10), "model.int8.plan")
    inspector.check_layer_precisions("fp16", inspector.count_layer_precisions(FP16_ENGINE_TRT11), "model.fp16.plan")
    inspector.check_layer_precisions("fp32", inspector.count_layer_precisions(FLOAT_ENGINE_OLD_NAMES), "model.fp32.plan")
    with pytest.raises(RtkError, match=r"asked for int8 but TensorRT built no int8 layer \(1 fp32, 1 unknown\)"):
        inspector.check_layer_precisions("int8", inspector.count_layer_precisions(FLOAT_ENGINE_OLD_NAMES), "model.int8.plan")
    with pytest.raises(RtkError, match="no fp16 layer"):
        inspector.check_layer_precisions("fp16", inspector.count_layer_precisions(INT8_ENGINE_TRT10), "model.fp16.plan")


def real_report(precision: str) -> dict:
    return json.loads((FIXTURES / REAL_REPORTS[precision]).read_text())


# The datatype word of a TensorRT <= 10.x "Format/Datatype" string -> the DataType name TensorRT 11
# writes in its separate "Datatype" field (11's "I/O Tensors" spell it "Float", as the migration
# notes show; "Half" and "Int8" are the same enum's names).
_DATATYPE_NAMES = {"FP32": "Float", "Float": "Float", "FP16": "Half", "Half": "Half", "Int8": "Int8"}
_DATATYPE_WORD = re.compile(r"\b(" + "|".join(_DATATYPE_NAMES) + r")\b")


def trt11_form(report: dict) -> dict:
    """The same report in TensorRT 11's schema (11.0 migration notes; Polygraphy 0.53.6
    extractors/_trt.py reads both): every layer tensor's "Format/Datatype" string becomes a
    "Datatype" (the DataType name) and a "Format" (the string without the datatype word, so only
    "Datatype" says it), and "Bindings" (names) becomes "I/O Tensors" (objects)."""
    def split(tensor: dict) -> dict:
        tensor = dict(tensor)
        combined = tensor.pop("Format/Datatype")
        word = _DATATYPE_WORD.search(combined)
        assert word, f"no datatype word in {combined!r}"
        tensor["Datatype"] = _DATATYPE_NAMES[word.group(1)]
        tensor["Format"] = " ".join(_DATATYPE_WORD.sub("", combined).split())
        return tensor

    layers = [{**layer, "Inputs": [split(t) for t in layer.get("Inputs", [])],
               "Outputs": [split(t) for t in layer.get("Outputs", [])]} for layer in report["Layers"]]
    io_tensors = [{"Name": name, "IOMode": "Input" if i == 0 else "Output", "DataType": "Float",
                   "Location": "Device", "IsShapeInferenceIO": False} for i, name in enumerate(report["Bindings"])]
    return {"Layers": layers, "I/O Tensors": io_tensors}


@pytest.mark.parametrize("precision, expected", [
    ("fp32", {"fp32": 32}), ("fp16", {"fp16": 35, "fp32": 1}), ("int8", {"fp32": 2, "int8": 22})])
def test_real_inspector_reports_in_both_schemas(precision: str, expected: dict):
    """Reports TensorRT wrote (FP32, FP16 and QAT-INT8 ResNet-18 engines on an A100) and their 11.x
    form: every layer gets a known precision, the same one in both schemas."""
    report = real_report(precision)
    report11 = trt11_form(report)
    assert "Format/Datatype" not in json.dumps(report11) and "Bindings" not in report11
    per_layer = [inspector.layer_precision(layer) for layer in report["Layers"]]
    assert per_layer == [inspector.layer_precision(layer) for layer in report11["Layers"]]
    assert inspector.count_layer_precisions(report) == inspector.count_layer_precisions(report11) == expected
    assert sum(expected.values()) == len(report["Layers"])  # no layer unknown
    inspector.check_layer_precisions(precision, expected, f"model.{precision}.plan")
    if precision == "int8":  # the fused ConvActPool layer states its weights as "ConvWeights"
        fused = next(layer for layer in report11["Layers"] if layer["LayerType"] == "ConvActPool")
        assert "Weights" not in fused and inspector.layer_precision(fused) == "int8"
    else:
        with pytest.raises(RtkError, match="no int8 layer"):
            inspector.check_layer_precisions("int8", expected, "model.int8.plan")


# ---------------------------------------------------------------------------------------------
# The sidecar and the checks on load


def test_sidecar_has_the_common_format(tmp_path):
    metadata = {"depth": 20, "normalization": normalization_metadata(), "classes": list(CLASSES)}
    sidecar = build.engine_sidecar(
        runtime_fields={"runtime": "tensorrt", "tensorrt_version": "10.13.0.35", "gpu": H100,
                        "layer_precisions": {"int8": 20, "fp32": 3}}, precision="int8", metadata=metadata,
        inputs=[{"name": "input", "shape": [-1, 3, 32, 32], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": [-1, 10], "dtype": "float32"}],
        profile={"min": 1, "opt": 256, "max": 1024}, onnx_sha256="a" * 64, engine_sha256="b" * 64, tf32=True,
        optimization_level=3, conv_precisions={"int8": 17, "fp32": 2}, build_seconds=12.0)
    assert set(sidecar) >= set(write_fake_engine(tmp_path / "fake.plan"))  # the format rtk.runtime and cpp/ read
    assert set(sidecar) >= {"format", "runtime", "tensorrt_version", "gpu", "precision", "depth", "inputs",
                            "outputs", "profile", "onnx_sha256", "engine_sha256", "normalization", "classes",
                            "tf32", "builder_optimization_level", "layer_precisions", "conv_precisions"}
    assert sidecar["format"] == "rtk.engine/1" and sidecar["gpu"] == H100 and sidecar["build_seconds"] == 12.0
    json.dumps(sidecar)  # plain JSON


def test_engine_checks_refuse_a_changed_plan_and_name_version_or_gpu_mismatches(tmp_path, monkeypatch):
    plan = tmp_path / "model.int8.plan"
    sidecar = write_fake_engine(plan, precision="int8")
    assert engines.runtime_of(sidecar) is engines.TENSORRT  # written before sidecars named their runtime
    environment = ("10.13.0.42", H100)  # another build of the same release
    monkeypatch.setattr(engines, "running_environment", lambda runtime: environment)
    blob, loaded = engines.load_engine_checked(plan)
    assert blob == plan.read_bytes() and loaded == sidecar

    environment = ("11.0.0.10", H100)
    with pytest.raises(RtkError, match=r"built with TensorRT 10\.13\.0\.35 but this is TensorRT 11\.0\.0\.10.*"
                                       r"rtk build --precision int8`$"):
        engines.load_engine_checked(plan)
    environment = ("10.13.0.35", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(RtkError, match=r"built for NVIDIA H100 80GB HBM3 \(compute capability 9\.0\) but this GPU "
                                       r"is NVIDIA L4 \(compute capability 8\.9\)"):
        engines.load_engine_checked(plan)
    assert engines.compatibility_problems(sidecar, "10.13.0.35", H100) == []

    damaged = bytearray(plan.read_bytes())
    damaged[100] ^= 0xFF
    plan.write_bytes(bytes(damaged))
    with pytest.raises(RtkError, match="does not match its sidecar"):
        engines.load_engine_checked(plan)  # refused before TensorRT is even asked
    sidecar_path(plan).unlink()
    with pytest.raises(RtkError, match="model.int8.plan.json is missing"):
        read_engine(plan)
    with pytest.raises(RtkError, match="engine not found"):
        read_engine(tmp_path / "missing.plan")


def test_a_tensorrt_rtx_engine_is_refused_on_a_gpu_it_was_not_built_for(tmp_path, monkeypatch):
    """TensorRT for RTX engines run on the compute capabilities they were built for, in the release
    that built them: one line before TensorRT for RTX is asked (H100/H200's 9.0 is no RTX target)."""
    plan = tmp_path / "model.int8.rtx.plan"
    sidecar = write_fake_engine(plan, precision="int8", runtime="tensorrt-rtx", tensorrt_rtx_version="1.7.1.116",
                                compute_capabilities=["8.6", "8.9", "12.0"])
    asked = []
    environment = ("1.7.1.116", {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"})
    monkeypatch.setattr(engines, "running_environment", lambda runtime: asked.append(runtime) or environment)
    assert engines.load_engine_checked(plan)[1] == sidecar and asked == [engines.TENSORRT_RTX]
    environment = ("1.7.1.116", H100)
    with pytest.raises(RtkError, match=r"built for compute capabilities 8\.6, 8\.9, 12\.0 but this GPU is NVIDIA "
                                       r"H100 80GB HBM3 \(compute capability 9\.0\).* `rtk build --precision int8 "
                                       r"--runtime tensorrt-rtx --compute-capability 9\.0`$"):
        engines.load_engine_checked(plan)
    environment = ("1.8.0.5", {"name": "NVIDIA GeForce RTX 5090", "compute_capability": "12.0"})
    with pytest.raises(RtkError, match=r"built with TensorRT for RTX 1\.7\.1\.116 but this is TensorRT for RTX 1\.8\.0\.5"):
        engines.load_engine_checked(plan)
    with pytest.raises(RtkError, match="names runtime 'tensorrt-xyz'"):
        engines.runtime_of({"runtime": "tensorrt-xyz"})


def test_build_refuses_an_onnx_of_another_precision_before_needing_tensorrt(tmp_path):
    from test_export import make_checkpoint

    from rtk import export

    checkpoint, _ = make_checkpoint(tmp_path / "checkpoint.pt", depth=8)
    onnx_path = export.export_onnx(checkpoint, tmp_path / "model.onnx", verify=False, log=lambda _: None)
    with pytest.raises(RtkError, match="is an fp32 model, not int8"):
        build.build_engine(onnx_path, tmp_path / "model.int8.plan", precision="int8")
    with pytest.raises(RtkError, match="1 <= min <= opt <= max"):
        build.build_engine(onnx_path, tmp_path / "model.fp32.plan", precision="fp32", opt_batch=2048)
    assert not list(tmp_path.glob("*.plan*"))


# ---------------------------------------------------------------------------------------------
# Missing TensorRT or GPU: one line, exit 2


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_cli_without_tensorrt_is_one_line_and_exit_2_before_making_inputs(no_tensorrt, monkeypatch, tmp_path):
    monkeypatch.setattr("rtk.pipeline.ensure_onnx_for", lambda *a, **k: pytest.fail("made an input first"))
    result = CliRunner().invoke(main, ["build", "--precision", "int8", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {MISSING_TENSORRT}"]


def fake_cuda_python(monkeypatch, count: int, error: int = 0) -> types.SimpleNamespace:
    """cuda.bindings.runtime as cuda-python has it, with `count` devices (an H100 as device 0)."""
    errors = types.SimpleNamespace(cudaSuccess=0, cudaErrorNoDevice=100)
    props = types.SimpleNamespace(name=b"NVIDIA H100 80GB HBM3\x00\x00", major=9, minor=0)
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaError_t = errors
    runtime.cudaGetDeviceCount = lambda: (error, count)
    runtime.cudaGetDeviceProperties = lambda index: (errors.cudaSuccess, props)
    runtime.cudaGetErrorName = lambda err: (0, b"cudaErrorNoDevice")
    for name, module in (("cuda", types.ModuleType("cuda")), ("cuda.bindings", types.ModuleType("cuda.bindings")),
                         ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, module)
    return runtime


def fake_pycuda(monkeypatch, name: str = "NVIDIA L4", capability: tuple = (8, 9)) -> types.ModuleType:
    """pycuda.driver with one device, where cuda-python is not installed; counts context pushes."""
    for module in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, module, None)
    driver = types.ModuleType("pycuda.driver")
    driver.pushed = 0

    class Context:
        def push(self) -> None:
            driver.pushed += 1

        @staticmethod
        def pop() -> None:
            driver.pushed -= 1

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return name

        def compute_capability(self) -> tuple:
            return capability

        def retain_primary_context(self) -> Context:
            return Context()

    driver.init, driver.Device, driver.Context = (lambda: None), Device, Context
    monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return driver


def test_no_cuda_device_is_one_clear_line(monkeypatch):
    fake_cuda_python(monkeypatch, count=0, error=100)
    with pytest.raises(MissingDependency, match=r"^no CUDA device \(cudaErrorNoDevice\): TensorRT needs an "
                                                r"NVIDIA GPU and its driver$") as raised:
        engines.cuda_device()
    assert raised.value.exit_code == 2
    fake_cuda_python(monkeypatch, count=0)
    with pytest.raises(MissingDependency, match=r"no CUDA device \(0 devices\)"):
        engines.cuda_device()
    fake_cuda_python(monkeypatch, count=1)
    assert engines.cuda_device() == H100


def test_device_is_asked_through_pycuda_where_cuda_python_is_absent(monkeypatch):
    """The pycuda fallback: the GPU name and compute capability come from pycuda, not from a
    cuda-python that is not there (before, every TensorRT command exited 2 saying cuda was missing)."""
    fake_pycuda(monkeypatch)
    assert engines.cuda_device() == {"name": "NVIDIA L4", "compute_capability": "8.9"}


def test_a_broken_install_is_a_missing_dependency_not_a_traceback(monkeypatch, tmp_path):
    """A package that is there but whose import fails with something other than ImportError (a
    TensorRT whose shared library is missing raises FileNotFoundError on some platforms)."""
    (tmp_path / "broken_trt").mkdir()
    (tmp_path / "broken_trt" / "__init__.py").write_text(
        "raise FileNotFoundError(2, 'No such file or directory', 'libnvinfer.so.10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependency, match=r"^broken_trt is installed but cannot be imported "
                                                r"\(FileNotFoundError: .*libnvinfer.so.10.*\); reinstall it with: "
                                                + re.escape(GPU_INSTALL)) as raised:
        require("broken_trt", "gpu")
    assert raised.value.exit_code == 2


def test_gpu_extras_keep_one_cuda_major_and_a_cuda_python_with_bindings_runtime():
    """pyproject.toml: one GPU extra per CUDA major, so pip cannot mix a CUDA 12 TensorRT with
    cuda-python 13 (which needs a CUDA 13 driver); cuda.bindings.runtime ships from cuda-python
    12.6.1 on, so no extra may allow an older one."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli, tomllib's origin
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for major in ("12", "13"):
        requirements = {r.name: r for r in map(Requirement, extras[f"gpu-cu{major}"])}
        cuda_python = requirements["cuda-python"].specifier
        assert "12.6.0" not in cuda_python and "12.5.0" not in cuda_python
        assert all(version.startswith(major) for version in ("12.6.1", "12.9.1", "13.0.0", "13.4.4")
                   if version in cuda_python)
        assert f"{major}.9.9" in cuda_python and f"{int(major) + 1}.0.0" not in cuda_python
        assert f"tensorrt-cu{major}" in requirements and "tensorrt" not in requirements
        assert {"10.13.3", "11.4.0"} <= {v for v in ("10.13.3", "11.4.0", "12.0.0")
                                          if v in requirements[f"tensorrt-cu{major}"].specifier}
        assert "0.53.6" in requirements["polygraphy"].specifier and "0.53.4" not in requirements["polygraphy"].specifier
        rtx = {r.name: r for r in map(Requirement, extras[f"rtx-cu{major}"])}  # TensorRT for RTX: the same rule
        assert set(rtx) >= {f"tensorrt-rtx-cu{major}", "cuda-python", "polygraphy"}
        assert f"{major}.9.9" in rtx["cuda-python"].specifier and f"{int(major) + 1}.0.0" not in rtx["cuda-python"].specifier
        assert "1.7.1.116" in rtx[f"tensorrt-rtx-cu{major}"].specifier
    assert "gpu" not in extras and "rtx" not in extras  # one extra that mixes majors would be picked by habit
    dev = {r.name: r for r in map(Requirement, extras["dev"])}  # the tests build real TensorRT-for-RTX engines
    assert "1.7.1.116" in dev["tensorrt-rtx-cu13"].specifier and "cuda-python" not in dev


# ---------------------------------------------------------------------------------------------
# The build through Polygraphy, against the stand-in tensorrt module (tests/trt_standin.py)


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """install(**make_tensorrt arguments) -> the stand-in module, put where `import tensorrt`
    finds it, with an H100 as the CUDA device."""
    def install(**kwargs):
        trt = make_tensorrt(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        forget_cached_tensorrt()
        monkeypatch.setattr(engines, "cuda_device", lambda extra="gpu": H100)
        return trt

    yield install
    forget_cached_tensorrt()


def test_build_goes_through_polygraphy_with_rtk_settings(standin, tmp_path, capsys):
    trt = standin(version="10.13.0.35", report=real_report("int8"), convs=("int8", "int8"))
    onnx_path = tiny_rtk_onnx(tmp_path / "model.int8.tensorrt.onnx", precision="int8")
    (tmp_path / "timing.cache").write_bytes(b"timings of this GPU")
    logs: list[str] = []
    out = build.build_engine(onnx_path, tmp_path / "model.int8.plan", precision="int8", log=logs.append)

    assert trt.calls["create_network"] == [1 << 1]  # STRONGLY_TYPED, looked up by name (1 in 10.x)
    assert trt.calls["parse_from_file"] == [str(onnx_path)]
    assert trt.calls["set_shape"] == [("input", (1, 3, 32, 32), (256, 3, 32, 32), (1024, 3, 32, 32))]
    assert trt.calls["set_memory_pool_limit"] == [(trt.MemoryPoolType.WORKSPACE, 1024 << 20)]
    [built] = trt.calls["build"]
    assert trt.BuilderFlag.TF32 in built["flags"]  # rtk's default (Polygraphy's is off)
    assert not {trt.BuilderFlag.FP16, trt.BuilderFlag.INT8} & built["flags"]  # strongly typed: no precision flags
    assert built["verbosity"] == trt.ProfilingVerbosity.DETAILED and built["level"] == 3
    assert built["cache"] == b"timings of this GPU"  # the saved cache was read and attached
    assert (tmp_path / "timing.cache").read_bytes() == b"timing cache:timings of this GPU"  # written back
    assert trt.calls["set_input_shape"] == [("input", (256, 3, 32, 32))]  # inspected at the opt batch
    [(fmt, context)] = trt.calls["inspector"]
    assert fmt == trt.LayerInformationFormat.JSON and context is not None

    assert out.read_bytes() == PLAN
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["layer_precisions"] == {"fp32": 2, "int8": 22} and sidecar["tf32"] is True
    assert sidecar["conv_precisions"] == {"int8": 2}  # read from the network definition before the build
    assert sidecar["runtime"] == "tensorrt" and sidecar["tensorrt_version"] == "10.13.0.35" and sidecar["gpu"] == H100
    assert sidecar["inputs"] == [{"name": "input", "shape": [-1, 3, 32, 32], "dtype": "float32"}]
    assert json.loads(inspector.layers_path(out).read_text()) == real_report("int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no .lock or temporary file left
        "model.int8.layers.json", "model.int8.plan", "model.int8.plan.json", "model.int8.tensorrt.onnx",
        "timing.cache"]
    assert capsys.readouterr().out == ""  # Polygraphy's messages go to stderr, results own stdout
    assert any("int8 22" in line for line in logs)


@pytest.mark.parametrize("version, strongly_typed_value, flags", [
    ("10.13.0.35", 1, 1 << 1),  # 10.x: the flag turns strong typing on
    ("11.4.0.106", 0, 1 << 0),  # 11.x renumbered the deprecated flag: still asked for by name
    ("11.9.0.1", None, 0),  # a release without the member: strong typing is always on, no flags
])
def test_strongly_typed_flag_is_looked_up_by_name(standin, tmp_path, version, strongly_typed_value, flags):
    report = real_report("fp16") if version.startswith("10.") else trt11_form(real_report("fp16"))
    trt = standin(version=version, strongly_typed_value=strongly_typed_value, report=report, convs=("fp16",))
    onnx_path = tiny_rtk_onnx(tmp_path / "model.fp16.onnx", precision="fp16")
    out = build.build_engine(onnx_path, tmp_path / "model.fp16.plan", precision="fp16", log=lambda _: None,
                             tf32=False, optimization_level=5, workspace_mb=64)
    assert trt.calls["create_network"] == [flags]
    [built] = trt.calls["build"]
    assert trt.BuilderFlag.TF32 not in built["flags"] and built["level"] == 5  # --no-tf32 clears it
    assert trt.calls["set_memory_pool_limit"] == [(trt.MemoryPoolType.WORKSPACE, 64 << 20)]
    assert json.loads(sidecar_path(out).read_text())["layer_precisions"] == {"fp16": 35, "fp32": 1}


def test_a_timing_cache_of_another_gpu_is_replaced_not_merged(standin, tmp_path):
    trt = standin(report=real_report("fp32"))
    onnx_path = tiny_rtk_onnx(tmp_path / "model.onnx")
    (tmp_path / "timing.cache").write_bytes(OTHER_GPU_CACHE)
    logs: list[str] = []
    build.build_engine(onnx_path, tmp_path / "model.fp32.plan", precision="fp32", log=logs.append)
    assert trt.calls["set_timing_cache"][:2] == [(OTHER_GPU_CACHE, False), (b"", False)]
    assert trt.calls["build"][0]["cache"] == b""  # built with a new cache
    assert (tmp_path / "timing.cache").read_bytes() == b"timing cache:"  # the other GPU's entries are gone
    assert any("from another GPU or TensorRT version" in line for line in logs)


@pytest.mark.parametrize("refusal, message", [
    ({"refuse_profile": True}, "refused the optimization profile for 'input'"),
    ({"context_fails": True}, r"could not create an execution context .*create_execution_context returned None"),
    ({"output_dtype": "BF16"}, "engine tensor 'logits' is BF16, which numpy has no type for"),
    ({"parse_errors": ("Pad mode reflect",)}, r"could not build an engine from .*: Could not parse ONNX correctly"),
    ({"report": {"Layers": [{"Name": "conv", "Weights": {"Type": "Float"}}]}}, "asked for int8 but TensorRT built"),
    # the network definition's check, before the build: a Conv that lost its QDQ computes in float
    ({"convs": ("int8", "fp32", "int8")}, r"1 of 3 Convs would not compute in int8 \(conv1 fp32, 0 listed float"),
])
def test_each_tensorrt_refusal_is_one_error_and_leaves_no_engine(standin, tmp_path, refusal, message):
    trt = standin(**{"report": real_report("int8"), "convs": ("int8",), **refusal})
    onnx_path = tiny_rtk_onnx(tmp_path / "model.int8.tensorrt.onnx", precision="int8")
    with pytest.raises(RtkError, match=message):
        build.build_engine(onnx_path, tmp_path / "model.int8.plan", precision="int8", log=lambda _: None)
    assert not (tmp_path / "model.int8.plan").exists() and not (tmp_path / "model.int8.plan.json").exists()
    if "convs" in refusal:
        assert trt.calls["parse_from_file"] and not trt.calls["build"]  # refused before the builder ran


def test_a_shape_the_profile_refuses_is_one_error(standin, tmp_path, monkeypatch):
    """IOptimizationProfile.set_shape raises for shapes it refuses. rtk checks min <= opt <= max
    before TensorRT is asked, so the refusal is forced by swapping min and max on the way in."""
    standin(report=real_report("fp32"))
    onnx_path = tiny_rtk_onnx(tmp_path / "model.onnx")
    import polygraphy.backend.trt as polygraphy_trt

    original = polygraphy_trt.Profile.add
    monkeypatch.setattr(polygraphy_trt.Profile, "add",
                        lambda self, name, lo, opt, hi: original(self, name, hi, opt, lo))  # min > max
    with pytest.raises(RtkError, match=r"could not build an engine from .*min <= opt <= max does not hold"):
        build.build_engine(onnx_path, tmp_path / "model.fp32.plan", precision="fp32", log=lambda _: None)
    assert not (tmp_path / "model.fp32.plan").exists()


def test_cli_without_polygraphy_is_one_line_and_exit_2(standin, monkeypatch, tmp_path):
    standin()
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    monkeypatch.setattr("rtk.pipeline.ensure_onnx_for", lambda *a, **k: pytest.fail("made an input first"))
    result = CliRunner().invoke(main, ["build", "--precision", "fp32", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        ("error: polygraphy is not installed (import of polygraphy halted; None in sys.modules); "
         f"install it with: {GPU_INSTALL}")]


def test_cli_help():
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0
    for option in ("--precision", "--depth", "--onnx", "--out", "--min-batch", "--opt-batch", "--max-batch",
                   "--workspace-mb", "--opt-level", "--timing-cache", "--tf32 / --no-tf32"):
        assert option in result.output


# ---------------------------------------------------------------------------------------------
# scripts/gpu_check_tensorrt.py


def run_gpu_check(*args: str) -> subprocess.CompletedProcess:
    """The script as a machine without TensorRT runs it (tensorrt made unimportable, whatever is installed)."""
    code = ("import runpy, sys; sys.modules['tensorrt'] = None; "
            f"sys.argv = ['gpu_check_tensorrt.py', *{list(args)!r}]; "
            "runpy.run_path('scripts/gpu_check_tensorrt.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def test_gpu_check_script_says_in_one_line_that_tensorrt_is_missing(tmp_path):
    result = run_gpu_check("--work-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"TensorRT check not run: {MISSING_TENSORRT}"]
    assert not list(tmp_path.iterdir())


def test_gpu_check_script_help_and_comparison():
    result = run_gpu_check("--help")
    assert result.returncode == 0 and "--precision" in result.stdout and "top-1 agreement" in result.stdout
    script = import_script("gpu_check_tensorrt")
    args = script.parse_args(["--precision", "int8", "fp32", "--num-images", "100"])
    assert args.precision == ["int8", "fp32"] and args.num_images == 100
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((1000, 10)).astype(np.float32)
    labels = reference.argmax(1)
    assert script.compare("fp32", reference + 1e-4, reference, labels)["passed"]
    assert not script.compare("fp32", reference + 2e-3, reference, labels)["passed"]  # agreement fine, diff not
    flipped = reference.copy()
    flipped[:6] = flipped[:6, ::-1]  # 6 of 1000 top-1 changes: 99.4% < 99.5%
    result = script.compare("int8", flipped, reference, labels)
    assert not result["passed"] and result["top1_agreement_pct"] <= 99.4
    assert result["onnxruntime_accuracy_pct"] == 100.0


def test_gpu_check_polygraphy_comparison_is_a_command_polygraphy_accepts(tmp_path):
    """The `polygraphy run --trt --onnxrt` the script runs: its flags, and (without --trt, which
    needs TensorRT) Polygraphy's CLI taking them and the saved real-image inputs on the ONNX file."""
    script = import_script("gpu_check_tensorrt")
    onnx_path = tiny_rtk_onnx(tmp_path / "model.int8.tensorrt.onnx", precision="int8")
    test_images = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    inputs_json, batch = script.save_polygraphy_inputs(test_images, tmp_path / "inputs.json")
    assert batch == script.POLYGRAPHY_IMAGES == 256
    command = script.polygraphy_command(onnx_path, inputs_json, "int8", batch)
    assert command[3:] == ["run", str(onnx_path), "--trt", "--onnxrt", "--strongly-typed", "--input-shapes",
                           "input:[256,3,32,32]", "--load-inputs", str(inputs_json), "--atol", "0.1", "--rtol", "0.1",
                           "--tf32"]  # TF32 as rtk builds int8 engines; fp32 is built and compared without it
    assert "--tf32" not in script.polygraphy_command(onnx_path, inputs_json, "fp32", batch)
    without_tensorrt = [arg for arg in command if arg != "--trt"]
    done = subprocess.run(without_tensorrt, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "input [dtype=float32, shape=(256, 3, 32, 32)]" in done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------
# Type check against the TensorRT API


def test_tensorrt_code_type_checks_against_the_stubs():
    """mypy --strict on rtk/build/ and the engine runners with typings/ (tensorrt: the documented API,
    TensorRT ships no stubs; tensorrt_rtx: the same API and what TensorRT for RTX adds; polygraphy: no
    py.typed marker). The stubs mark what may come back as None (create_execution_context,
    get_timing_cache, create_runtime_config, ...), so an unchecked use fails here."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary", "rtk/build",
         "rtk/runtime/tensorrt_runner.py", "rtk/runtime/cuda.py", "rtk/runtime/engines.py"], cwd=ROOT, capture_output=True, text=True,
        timeout=300, check=False,
        env={**os.environ, "MYPYPATH": str(ROOT / "typings")})
    assert result.returncode == 0, result.stdout + result.stderr
