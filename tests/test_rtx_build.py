"""`rtk build --runtime tensorrt-rtx` with the real TensorRT for RTX (PyPI tensorrt-rtx-cu13, its ONNX
parser and builder, NVIDIA's CPU-only ahead-of-time build: no GPU) on every ONNX file rtk writes:
FP32, FP16, the TensorRT-flavour INT8 (tuned, with Convs left float as `--max-drop` leaves them, and
after `--qat-epochs`, this one for ResNet-8 alone) for ResNet-8 and every depth shipped in rtk/weights/.
No stand-in anywhere in this file; the engines are real, and only loading them needs an RTX GPU.

Also: the CPU INT8 flavour, which the parser refuses, refused by rtk first; the check of each Conv's
precision on the network definition failing for an INT8 file whose Convs lost their QDQ; what the
builder logs at warning level or above shown, recorded, and checked against docs/quantization.md; and
TensorRT for RTX's Polygraphy mode kept out of this process, where TensorRT's build runs (against the
stand-in of tests/trt_standin.py in the one test that shows the two side by side).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import fails_cleanly, run
from onnx import numpy_helper
from test_export import make_checkpoint

from rtk import build, data, export, pipeline, qat, quantize
from rtk.build import rtx_builder
from rtk.engine_meta import read_sidecar
from rtk.errors import RtkError
from rtk.fileio import sha256_file
from rtk.names import TUNE_STEPS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(int(path.stem.removeprefix("resnet")) for path in (ROOT / "rtk" / "weights").glob("resnet*.pt"))
DOCS = ROOT / "docs" / "quantization.md"
WARNINGS_HEADING = "### What TensorRT for RTX's builder says about rtk's files"


def quiet(message: str) -> None:
    return None


@pytest.fixture(scope="module")
def rtx_version() -> str:
    """The installed TensorRT for RTX; not a skip: the dev extra installs it, and CI must build with it."""
    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.fail("tensorrt_rtx is not installed: the dev extra brings it (pip install -e '.[dev]'), and these "
                    "tests build real TensorRT-for-RTX engines")
    return importlib.metadata.version("tensorrt-rtx-cu13")


def documented_warnings() -> list[re.Pattern[str]]:
    """The regular expressions (first column, in backticks) of the table under WARNINGS_HEADING."""
    text = DOCS.read_text()
    assert WARNINGS_HEADING in text, f"{DOCS} has no section {WARNINGS_HEADING!r}"
    section = text.split(WARNINGS_HEADING, 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # after header and |---|
    return [re.compile(re.search(r"`([^`]+)`", row.split("|")[1]).group(1)) for row in rows]  # type: ignore[union-attr]


def unexplained(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    patterns = documented_warnings()
    return [m for m in messages if not any(p.search(m["message"]) for p in patterns)]


def built_checked(onnx_path: Path, precision: str, out: Path, version: str, *, convs: int, float_convs: int = 0,
                  **options: object) -> dict:
    """Build `onnx_path` with TensorRT for RTX, check the engine and its sidecar; the sidecar."""
    logs: list[str] = []
    engine = build.build_engine(onnx_path, out, precision=precision, runtime="tensorrt-rtx", log=logs.append,
                                **options)  # type: ignore[arg-type]
    sidecar = read_sidecar(engine)  # sha256 of the engine checked against the sidecar
    assert sidecar["runtime"] == "tensorrt-rtx" and sidecar["tensorrt_rtx_version"] == version
    assert sidecar["precision"] == precision and sidecar["onnx"] == onnx_path.name
    assert sidecar["onnx_sha256"] == sha256_file(onnx_path)
    assert engine.stat().st_size > 100_000  # a serialized engine of real kernels, weights included
    expected = {precision: convs - float_convs, "fp32": float_convs} if float_convs else {precision: convs}
    assert sidecar["conv_precisions"] == expected
    assert sidecar["inputs"] == [{"name": "input", "shape": [-1, 3, 32, 32], "dtype": "float32"}]
    assert sidecar["outputs"] == [{"name": "logits", "shape": [-1, 10], "dtype": "float32"}]
    for message in sidecar["builder_messages"]:  # shown to the user as well as recorded
        assert f"TensorRT for RTX {message['severity']}: {message['message']}" in logs
    assert unexplained(sidecar["builder_messages"]) == [], (
        f"the builder warned about {onnx_path.name} in a way {DOCS.name} does not list and explain")
    return sidecar


# ---------------------------------------------------------------------------------------------
# Every ONNX file rtk writes, ResNet-8 (untrained) and the shipped depths


@pytest.fixture(scope="module")
def depth8(tmp_path_factory, cifar10, cifar_dir) -> dict[str, Path]:
    """ResNet-8's files as rtk's stages write them, with test-sized options: FP32, FP16, the TensorRT
    flavour (tuned for a few steps), the same with a third Conv left float (what `--max-drop` writes
    for the Convs it picks; `--exclude` names one here, untuned: the tuning changes values, not the
    graph), after QAT (one epoch cut to one batch), and the CPU flavour."""
    root = tmp_path_factory.mktemp("rtx8")
    checkpoint, _ = make_checkpoint(root / "checkpoint.pt", depth=8)
    fp32 = export.export_onnx(checkpoint, root / "model.onnx", verify=False, log=quiet)
    options = {"num_images": 64, "verify": False, "calib_dir": root / "calib", "data_dir": cifar_dir, "log": quiet}
    third_conv = [node.name for node in onnx.load(fp32).graph.node if node.op_type == "Conv"][2]
    files = {
        "fp32": fp32, "fp16": quantize.convert_fp16(fp32, root / "model.fp16.onnx", verify=False, log=quiet),
        "int8": quantize.quantize_int8(fp32, root / "model.int8.tensorrt.onnx", target="tensorrt", tune_steps=4,
                                       **options),
        "int8-max-drop": quantize.quantize_int8(fp32, root / "model.int8.tensorrt.float3.onnx", target="tensorrt",
                                                tune_steps=0, exclude=[third_conv], **options),
        "int8-cpu": quantize.quantize_int8(fp32, root / "model.int8.cpu.onnx", target="cpu", **options)}
    with pytest.MonkeyPatch.context() as patch:  # QAT's fine-tuning cut to one batch, validation to 500 images
        patch.setattr(data, "load_cifar10", lambda data_dir=None: cifar10)
        patch.setattr(qat, "finetune", functools.partial(qat.finetune, limit_batches=1))
        split = data.split_indices
        patch.setattr(data, "split_indices", lambda *a, **k: (split(*a, **k)[0], split(*a, **k)[1][:500]))
        files["int8-qat"] = pipeline.qat_int8(
            pipeline.run_paths(8, root), fp32, root / "model.int8.tensorrt.qat.onnx", epochs=1, checkpoint=checkpoint,
            data_dir=str(cifar_dir), num_images=64, calib_dir=root / "calib", verify=False, log=quiet)
    return files


@pytest.mark.parametrize("variant, precision, float_convs", [
    ("fp32", "fp32", 0), ("fp16", "fp16", 0),
    ("int8", "int8", 2),  # the TensorRT flavour's first two Convs are float
    ("int8-max-drop", "int8", 3), ("int8-qat", "int8", 2)])
def test_every_rtk_file_of_resnet8_builds(depth8, rtx_version, tmp_path, variant, precision, float_convs):
    sidecar = built_checked(depth8[variant], precision, tmp_path / f"{variant}.rtx.plan", rtx_version, convs=7,
                            float_convs=float_convs)
    targets = sidecar["compute_capabilities"]  # by default every target of Ampere and later it names
    assert {"8.6", "8.9", "12.0"} <= set(targets) and all(int(t.split(".")[0]) >= 8 for t in targets)


@pytest.fixture(scope="module", params=SHIPPED, ids=[f"resnet{depth}" for depth in SHIPPED])
def shipped(request, tmp_path_factory, cifar_dir) -> tuple[int, dict[str, Path]]:
    """(depth, its files) made from the shipped weights as `rtk quantize` makes them by default, from the
    tracked calibration manifest and its tuned scales (calib/): FP32, FP16, the TensorRT flavour, the
    same with a third Conv left float (as in depth8, untuned), and the CPU flavour. (QAT is built for
    ResNet-8 alone: its graph is the TensorRT flavour's, and fine-tuning a shipped depth costs more.)"""
    depth = request.param
    root = tmp_path_factory.mktemp(f"rtx{depth}")
    shutil.copytree(ROOT / "calib", root / "calib")
    fp32 = export.export_onnx(pipeline.shipped_checkpoint(depth), root / "model.onnx", verify=False, log=quiet)
    logs: list[str] = []
    options = {"verify": False, "calib_dir": root / "calib", "data_dir": cifar_dir, "log": logs.append}
    int8 = quantize.quantize_int8(fp32, root / "model.int8.tensorrt.onnx", target="tensorrt", tune_steps=TUNE_STEPS,
                                  **options)
    assert any("reusing the tuned scales" in line for line in logs), (
        f"calib/ holds no tuned manifest of the shipped ResNet-{depth}: tuning it here would take minutes")
    third_conv = [node.name for node in onnx.load(fp32).graph.node if node.op_type == "Conv"][2]
    return depth, {
        "fp32": fp32, "fp16": quantize.convert_fp16(fp32, root / "model.fp16.onnx", verify=False, log=quiet),
        "int8": int8,
        "int8-max-drop": quantize.quantize_int8(fp32, root / "model.int8.tensorrt.float3.onnx", target="tensorrt",
                                                tune_steps=0, exclude=[third_conv], **options),
        "int8-cpu": quantize.quantize_int8(fp32, root / "model.int8.cpu.onnx", target="cpu", **options)}


def test_every_rtk_file_of_the_shipped_models_builds(shipped, rtx_version, tmp_path):
    depth, files = shipped
    for variant, float_convs in (("fp32", 0), ("fp16", 0), ("int8", 2), ("int8-max-drop", 3)):
        precision = variant.split("-")[0]
        built_checked(files[variant], precision, tmp_path / f"{variant}.rtx.plan", rtx_version, convs=depth - 1,
                      float_convs=float_convs)
    with pytest.raises(RtkError, match="CPU flavour of INT8"):
        build.build_engine(files["int8-cpu"], tmp_path / "cpu.rtx.plan", precision="int8", runtime="tensorrt-rtx",
                           log=quiet)


# ---------------------------------------------------------------------------------------------
# What the builder cannot take, and the precision check before it


def test_the_cpu_flavour_is_refused_before_the_builder_which_would_refuse_it(depth8, rtx_version, tmp_path):
    out = tmp_path / "model.int8.rtx.plan"
    with pytest.raises(RtkError, match=r"CPU flavour of INT8 .* build from the TensorRT flavour"):
        build.build_engine(depth8["int8-cpu"], out, precision="int8", runtime="tensorrt-rtx", log=quiet)
    assert not out.exists()
    # the reason, from the parser itself: the build process asked directly, past rtk's refusal
    with pytest.raises(RtkError, match=r"Could not parse ONNX.*input has type Int32 but must have type FP8, FP4, "
                                       r"Int4, Int8, or UInt8"):
        rtx_builder.build(depth8["int8-cpu"], precision="int8", float_convs=[], compute_capabilities=[],
                          batches=(1, 8, 16), workspace_mb=256, optimization_level=3, tf32=True, log=quiet)


def strip_conv_qdq(source: Path, out: Path, only: str | None = None) -> Path:
    """`source` (a TensorRT-flavour INT8 file) with the QDQ of its Convs (or of Conv `only`) removed: each
    Conv reads the float tensor its input QuantizeLinear read, and float weights (the int8 weights
    times their scales); the metadata, which says int8, left as it was."""
    model = onnx.load(source)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for conv in [n for n in graph.node if n.op_type == "Conv" and only in (None, n.name)]:
        data, weight = (producer.get(name) for name in conv.input[:2])
        if data is None or data.op_type != "DequantizeLinear":
            continue
        conv.input[0] = producer[data.input[0]].input[0]  # DequantizeLinear <- QuantizeLinear <- float
        scale = constants[weight.input[1]].reshape(-1, 1, 1, 1)  # per output channel, [C_out, 1, 1, 1]
        floats = (constants[weight.input[0]].astype(np.float32) * scale).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(floats, f"{conv.name}_float_weight"))
        conv.input[1] = f"{conv.name}_float_weight"
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    while dangling := [n for n in graph.node if not any(o in used for o in n.output)]:
        for node in dangling:
            graph.node.remove(node)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    onnx.checker.check_model(model)
    onnx.save(model, out)
    return out


def test_an_int8_file_whose_convs_lost_their_qdq_fails_the_check_before_the_build(depth8, rtx_version, tmp_path):
    """The precision check on the network definition (no GPU): every Conv the metadata does not list
    as float must read INT8 through QDQ; else one error naming them, and no engine."""
    convs = [node.name for node in onnx.load(depth8["int8"]).graph.node if node.op_type == "Conv"]
    stripped = strip_conv_qdq(depth8["int8"], tmp_path / "model.int8.tensorrt.onnx")
    out = tmp_path / "model.int8.rtx.plan"
    with pytest.raises(RtkError, match=rf"5 of 7 Convs would not compute in int8 \({convs[2]} fp32, {convs[3]} fp32, "
                                       r".* and 1 more, 2 listed float in its metadata\); an INT8 Conv reads"):
        build.build_engine(stripped, out, precision="int8", runtime="tensorrt-rtx", log=quiet)
    one = strip_conv_qdq(depth8["int8"], tmp_path / "one.onnx", only=convs[4])
    with pytest.raises(RtkError, match=rf"1 of 7 Convs would not compute in int8 \({convs[4]} fp32,"):
        build.build_engine(one, out, precision="int8", runtime="tensorrt-rtx", log=quiet)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# What the builder says


def test_builder_warnings_are_shown_recorded_and_held_against_the_docs(depth8, rtx_version, tmp_path):
    """A file that makes the builder warn (an INT32 zero point on an INT8 DequantizeLinear, which ONNX
    does not allow and TensorRT's parser reads as INT8): the warning is printed, kept in the sidecar,
    and it is not one docs/quantization.md explains, so the check of rtk's own files would fail on it."""
    model = onnx.load(depth8["int8"])
    dequantize = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) == 3)
    zero_point = next(init for init in model.graph.initializer if init.name == dequantize.input[2])
    zero_point.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zero_point).astype(np.int32), zero_point.name))
    odd = tmp_path / "model.int8.tensorrt.onnx"
    onnx.save(model, odd)
    logs: list[str] = []
    out = build.build_engine(odd, tmp_path / "odd.rtx.plan", precision="int8", runtime="tensorrt-rtx",
                             log=logs.append)
    messages = read_sidecar(out)["builder_messages"]
    assert messages == [{"severity": "warning",
                         "message": "onnxOpImporters.cpp:1988: For zero_point with type int32 TensorRT will use "
                                    "INT8 instead."}]
    assert f"TensorRT for RTX warning: {messages[0]['message']}" in logs
    assert unexplained(messages) == messages


# ---------------------------------------------------------------------------------------------
# Two runtimes, one process


def test_tensorrt_and_tensorrt_rtx_builds_do_not_leak_into_each_other(depth8, rtx_version, tmp_path, monkeypatch):
    """The RTX build's POLYGRAPHY_USE_TENSORRT_RTX=1 lives in its own process: a TensorRT build in this
    process (the stand-in TensorRT of tests/trt_standin.py) before and after it goes to `tensorrt`,
    and the RTX build between them to the real tensorrt_rtx. A process whose Polygraphy was turned to
    TensorRT for RTX is refused for TensorRT builds."""
    import polygraphy.config
    from test_build import H100
    from test_cpp import tiny_rtk_onnx
    from trt_standin import forget_cached_tensorrt, make_tensorrt

    from rtk.runtime import engines

    monkeypatch.setattr(engines, "cuda_device", lambda extra="gpu": H100)
    tiny = tiny_rtk_onnx(tmp_path / "model.onnx")
    standins = []
    try:
        for step in ("tensorrt", "tensorrt-rtx", "tensorrt"):
            if step == "tensorrt":
                standins.append(make_tensorrt(report={"Layers": [{"Name": "c", "Weights": {"Type": "Float"}}]}))
                monkeypatch.setitem(sys.modules, "tensorrt", standins[-1])
                forget_cached_tensorrt()
                out = build.build_engine(tiny, tmp_path / f"model{len(standins)}.plan", precision="fp32", log=quiet)
                assert read_sidecar(out)["tensorrt_version"] == "10.13.0.35" and standins[-1].calls["build"]
            else:
                built_checked(depth8["fp32"], "fp32", tmp_path / "model.fp32.rtx.plan", rtx_version, convs=7)
            assert not polygraphy.config.USE_TENSORRT_RTX and "POLYGRAPHY_USE_TENSORRT_RTX" not in os.environ
        assert "tensorrt_rtx" not in sys.modules  # this process never loaded TensorRT for RTX
        monkeypatch.setattr(polygraphy.config, "USE_TENSORRT_RTX", True)
        with pytest.raises(RtkError, match="POLYGRAPHY_USE_TENSORRT_RTX is set in this process's environment"):
            build.build_engine(tiny, tmp_path / "refused.plan", precision="fp32", log=quiet)
    finally:
        forget_cached_tensorrt()


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_builds_for_the_asked_compute_capabilities_and_info_shows_them(depth8, rtx_version, tmp_path):
    out = tmp_path / "model.int8.rtx.plan"
    result = run("build", "--precision", "int8", "--runtime", "tensorrt-rtx", "--onnx", depth8["int8"], "--out", out,
                 "--compute-capability", "12.0", "--compute-capability", "8.9", "--opt-batch", "32", "--max-batch", "64")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)  # the engine's path, last on stdout
    assert f"TensorRT for RTX {rtx_version}" in result.stderr
    sidecar = read_sidecar(out)
    assert sidecar["compute_capabilities"] == ["8.9", "12.0"] and sidecar["profile"]["max"] == 64
    shown = run("info", out)
    assert shown.exit_code == 0 and all(word in shown.stdout for word in ("tensorrt-rtx", rtx_version, '"12.0"'))

    base = ["build", "--precision", "int8", "--onnx", depth8["int8"], "--out", tmp_path / "refused.plan"]
    fails_cleanly(run(*base, "--runtime", "tensorrt-rtx", "--compute-capability", "9.0"),
                  r"does not build for compute capability 9\.0: it builds for 7\.5, 8\.0, .*--runtime tensorrt")
    for extra in (["--compute-capability", "8.6"], ["--runtime", "tensorrt-rtx", "--timing-cache", "t.cache"],
                  ["--runtime", "tensorrt-rtx", "--compute-capability", "sm86"]):
        refused = run(*base, *extra)
        assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert not (tmp_path / "refused.plan").exists()


def test_cli_without_tensorrt_rtx_is_one_line_and_exit_2(depth8, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    result = run("build", "--precision", "fp32", "--runtime", "tensorrt-rtx", "--onnx", depth8["fp32"],
                 "--out", tmp_path / "x.plan")
    fails_cleanly(result, r"tensorrt_rtx is not installed; install it with: pip install 'rtk\[rtx-cu13\]' \(CUDA 13 "
                          r"driver\) or 'rtk\[rtx-cu12\]' \(CUDA 12 driver\)$", code=2)
