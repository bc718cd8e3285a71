"""rtk.build, `rtk build` and scripts/gpu_check_tensorrt.py without TensorRT or a GPU: the sidecar, the
per-layer precision count from inspector reports, the engine/version/GPU checks, the one-line exit 2
where TensorRT or a CUDA device is missing, and a mypy run of rtk/build.py against typings/tensorrt.

The inspector reports below are hand-written in the format TensorRT documents and prints:
{"Layers": [...], "Bindings": [...]} in 10.x, "I/O Tensors" instead of "Bindings" in 11.x
(docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html),
each layer with Inputs/Outputs whose "Format/Datatype" names the datatype and, for convolutions,
"Weights": {"Type": ..., "Count": ...} (ProfilingVerbosity.DETAILED).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_fake_engine

from rtk import build
from rtk.cli import main
from rtk.errors import MissingDependency, RtkError
from rtk.preprocess import CLASSES, normalization_metadata

ROOT = Path(__file__).resolve().parent.parent
MISSING_TENSORRT = ("tensorrt is not installed (import of tensorrt halted; None in sys.modules); "
                    "install it with: pip install 'rtk[gpu]'")
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

FP16_ENGINE_TRT11 = {
    "Layers": [
        {"Name": "input cast", "LayerType": "Reformat",
         "Inputs": [tensor("input", "Row major linear FP32 format (kLINEAR)", [256, 3, 32, 32])],
         "Outputs": [tensor("x16", "Channel major FP16 format where channel % 8 == 0", [256, 3, 32, 32])]},
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [tensor("x16", "Channel major FP16 format where channel % 8 == 0", [256, 3, 32, 32])],
         "Outputs": [tensor("y", "Channel major FP16 format where channel % 8 == 0", [256, 16, 32, 32])],
         "Weights": {"Type": "Half", "Count": 432}},
        {"Name": "logits cast", "LayerType": "Reformat",
         "Inputs": [tensor("y16", "Two wide channel vectorized row major FP16 format", [256, 10])],
         "Outputs": [tensor("logits", "Row major linear FP32 format (kLINEAR)", [256, 10])]},
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
    assert build.count_layer_precisions(INT8_ENGINE_TRT10) == {"fp32": 3, "int8": 2}
    assert build.count_layer_precisions(FP16_ENGINE_TRT11) == {"fp16": 2, "fp32": 1}
    assert build.count_layer_precisions(FLOAT_ENGINE_OLD_NAMES) == {"fp32": 1, "unknown": 1}
    # LAYER_NAMES_ONLY verbosity lists names only: nothing can be claimed about precision
    assert build.count_layer_precisions({"Layers": ["conv1", "conv2"], "Bindings": []}) == {"unknown": 2}
    assert build.datatype_of("Thirty-two wide channel vectorized row major Int8 format.") == "int8"
    assert build.datatype_of("Row major linear BFloat16") == "bf16"
    assert build.datatype_of("N/A due to dynamic shapes") is None
    with pytest.raises(RtkError, match="no 'Layers'"):
        build.count_layer_precisions({"Bindings": []})


def test_a_build_without_layers_of_its_precision_fails():
    build.check_layer_precisions("int8", build.count_layer_precisions(INT8_ENGINE_TRT10), "model.int8.plan")
    build.check_layer_precisions("fp16", build.count_layer_precisions(FP16_ENGINE_TRT11), "model.fp16.plan")
    build.check_layer_precisions("fp32", build.count_layer_precisions(FLOAT_ENGINE_OLD_NAMES), "model.fp32.plan")
    with pytest.raises(RtkError, match=r"asked for int8 but TensorRT built no int8 layer \(1 fp32, 1 unknown\)"):
        build.check_layer_precisions("int8", build.count_layer_precisions(FLOAT_ENGINE_OLD_NAMES), "model.int8.plan")
    with pytest.raises(RtkError, match="no fp16 layer"):
        build.check_layer_precisions("fp16", build.count_layer_precisions(INT8_ENGINE_TRT10), "model.fp16.plan")


# ---------------------------------------------------------------------------------------------
# The sidecar and the checks on load


def test_sidecar_has_the_common_format(tmp_path):
    metadata = {"depth": 20, "normalization": normalization_metadata(), "classes": list(CLASSES)}
    sidecar = build.engine_sidecar(
        tensorrt_version="10.13.0.35", gpu=H100, precision="int8", metadata=metadata,
        inputs=[{"name": "input", "shape": [-1, 3, 32, 32], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": [-1, 10], "dtype": "float32"}],
        profile={"min": 1, "opt": 256, "max": 1024}, onnx_sha256="a" * 64, engine_sha256="b" * 64, tf32=True,
        optimization_level=3, layer_precisions={"int8": 20, "fp32": 3}, build_seconds=12.0)
    assert set(sidecar) >= set(write_fake_engine(tmp_path / "fake.plan"))  # the format rtk.runtime and cpp/ read
    assert set(sidecar) >= {"format", "tensorrt_version", "gpu", "precision", "depth", "inputs", "outputs",
                            "profile", "onnx_sha256", "engine_sha256", "normalization", "classes", "tf32",
                            "builder_optimization_level", "layer_precisions"}
    assert sidecar["format"] == "rtk.engine/1" and sidecar["gpu"] == H100 and sidecar["build_seconds"] == 12.0
    json.dumps(sidecar)  # plain JSON


def test_engine_checks_refuse_a_changed_plan_and_name_version_or_gpu_mismatches(tmp_path, monkeypatch):
    plan = tmp_path / "model.int8.plan"
    sidecar = write_fake_engine(plan, precision="int8")
    monkeypatch.setattr(build, "running_environment", lambda: ("10.13.0.42", H100))  # another build, same release
    blob, loaded = build.load_engine_checked(plan)
    assert blob == plan.read_bytes() and loaded == sidecar

    monkeypatch.setattr(build, "running_environment", lambda: ("11.0.0.10", H100))
    with pytest.raises(RtkError, match=r"built with TensorRT 10\.13\.0\.35 but this is TensorRT 11\.0\.0\.10.*"
                                       r"rtk build --precision int8"):
        build.load_engine_checked(plan)
    l4 = {"name": "NVIDIA L4", "compute_capability": "8.9"}
    monkeypatch.setattr(build, "running_environment", lambda: ("10.13.0.35", l4))
    with pytest.raises(RtkError, match=r"built for NVIDIA H100 80GB HBM3 \(compute capability 9\.0\) but this GPU "
                                       r"is NVIDIA L4 \(compute capability 8\.9\)"):
        build.load_engine_checked(plan)
    assert build.compatibility_problems(sidecar, "10.13.0.35", H100) == []

    damaged = bytearray(plan.read_bytes())
    damaged[100] ^= 0xFF
    plan.write_bytes(bytes(damaged))
    with pytest.raises(RtkError, match="does not match its sidecar"):
        build.load_engine_checked(plan)  # refused before TensorRT is even asked
    build.sidecar_path(plan).unlink()
    with pytest.raises(RtkError, match="has no sidecar"):
        build.read_engine_checked(plan)
    with pytest.raises(RtkError, match="engine not found"):
        build.read_engine_checked(tmp_path / "missing.plan")


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


def test_no_cuda_device_is_one_clear_line(monkeypatch):
    errors = types.SimpleNamespace(cudaSuccess=0, cudaErrorNoDevice=100)
    runtime = types.SimpleNamespace(
        cudaError_t=errors, cudaGetDeviceCount=lambda: (errors.cudaErrorNoDevice, 0),
        cudaGetErrorName=lambda error: (0, b"cudaErrorNoDevice"))
    monkeypatch.setattr(build, "require", lambda module, extra=None, **kw: runtime)
    with pytest.raises(MissingDependency, match=r"^no CUDA device \(cudaErrorNoDevice\): TensorRT needs an "
                                                r"NVIDIA GPU and its driver$") as raised:
        build.cuda_device()
    assert raised.value.exit_code == 2
    props = types.SimpleNamespace(name=b"NVIDIA H100 80GB HBM3\x00\x00", major=9, minor=0)
    runtime.cudaGetDeviceCount = lambda: (errors.cudaSuccess, 1)
    runtime.cudaGetDeviceProperties = lambda index: (errors.cudaSuccess, props)
    assert build.cuda_device() == H100


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
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check_tensorrt as script
    finally:
        sys.path.remove(str(ROOT / "scripts"))
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


# ---------------------------------------------------------------------------------------------
# Type check against the TensorRT API


def test_build_module_type_checks_against_the_tensorrt_stub():
    """mypy --strict on rtk/build.py with typings/tensorrt (the documented API; TensorRT ships no stubs)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
         "rtk/build.py"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "MYPYPATH": str(ROOT / "typings")})
    assert result.returncode == 0, result.stdout + result.stderr
