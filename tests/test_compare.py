"""rtk.compare and `rtk compare`: tensors matched by name across the QDQ rewrite, SQNR in graph order,
flips, and the same file on two backends. An untrained ResNet-8 on a few validation images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_export import make_checkpoint

from rtk import compare, data, export, quantize
from rtk.cli import main
from rtk.errors import RtkError


def int8_run(root: Path, cifar_dir: Path) -> dict[str, Path]:
    """An untrained ResNet-8 in `root`: checkpoint, FP32 ONNX and its TensorRT-flavour QDQ (64 images),
    untuned: its biases are the checkpoint's, as rtk.qat's simulation of it assumes."""
    checkpoint, _ = make_checkpoint(root / "checkpoint.pt", depth=8)
    fp32 = export.export_onnx(checkpoint, root / "model.onnx", verify=False, log=lambda _: None)
    int8 = quantize.quantize_int8(fp32, root / "model.int8.tensorrt.onnx", target="tensorrt", num_images=64,
                                  verify=False, calib_dir=root / "calib", data_dir=cifar_dir, tune_steps=0,
                                  log=lambda _: None)
    return {"root": root, "checkpoint": checkpoint, "fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def models(tmp_path_factory, cifar_dir) -> dict[str, Path]:
    return int8_run(tmp_path_factory.mktemp("compare"), cifar_dir)


def test_fp32_against_int8_matches_tensors_across_the_qdq_rewrite(models, cifar_dir):
    result = compare.compare(models["fp32"], models["int8"], num_images=30, data_dir=cifar_dir,
                             threshold_db=100.0, log=lambda _: None)
    fp32 = onnx.load(models["fp32"])
    order = [out for node in fp32.graph.node for out in node.output if out != "logits"]
    names = [row["tensor"] for row in result["tensors"]]
    assert names == [name for name in order if name in names]  # graph order
    ops = {row["op"] for row in result["tensors"]}
    assert {"Conv", "Relu", "Add"} <= ops and not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert sum(row["op"] == "Conv" for row in result["tensors"]) == 7  # every conv of ResNet-8
    # the TensorRT flavour's first two Convs are float on a float image: exact up to them and their ReLUs
    conv_rows = [i for i, row in enumerate(result["tensors"]) if row["op"] == "Conv"]
    exact, quantized = result["tensors"][:conv_rows[2]], result["tensors"][conv_rows[2]:]
    assert [row["op"] for row in exact] == ["Conv", "Relu", "Conv", "Relu"]
    assert all(row["max_abs_error"] == 0 and row["sqnr_db"] >= 100 for row in exact)
    for row in quantized:
        assert row["sqnr_db"] < 100 and 0.5 < row["cosine"] <= 1.0 + 1e-9 and row["max_abs_error"] > 0
    assert result["first_below_threshold"] == quantized[0]["tensor"]  # every INT8 tensor is under 100 dB
    assert result["blamed"]["tensor"] in names and result["blamed"]["sqnr_lost_db"] >= 0
    assert result["images"] == {"split": "validation", "count": 30}
    top1 = result["top1"]
    assert len(result["flips"]) == round(30 * (1 - top1["agreement_pct"] / 100))
    assert all(flip["a"] != flip["b"] and flip["grows_at"] in names for flip in result["flips"])
    _, val_idx = data.split_indices()
    assert {flip["image"] for flip in result["flips"]} <= set(val_idx[:30].tolist())


def test_one_file_on_two_backends_agrees_closely(models, cifar_dir):
    result = compare.compare(models["fp32"], models["fp32"], backend_b="openvino", num_images=10,
                             data_dir=cifar_dir, log=lambda _: None)
    assert result["tensors"] and min(row["sqnr_db"] for row in result["tensors"]) > 60  # f32 on both
    assert result["first_below_threshold"] is None and result["top1"]["agreement_pct"] == 100.0
    with pytest.raises(RtkError, match="same file on the same backend"):
        compare.compare(models["fp32"], models["fp32"], num_images=10, data_dir=cifar_dir)


def test_cli_prints_the_table_and_writes_json_and_png(models, cifar_dir, tmp_path):
    result = CliRunner().invoke(main, ["compare", str(models["fp32"]), str(models["int8"]), "--images", "20",
                                       "--data-dir", str(cifar_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # rich wraps at the test console's 80 columns
    assert "SQNR" in out and "cosine" in out and "most SQNR lost:" in out and "McNemar p" in out
    assert result.stdout.strip().splitlines()[-2:] == [str(tmp_path / "compare.json"), str(tmp_path / "compare.png")]
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["format"] == "rtk.compare/1" and np.isfinite([r["sqnr_db"] for r in saved["tensors"]]).all()
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    refused = CliRunner().invoke(main, ["compare", str(models["fp32"]), str(models["int8"]), "--images", "9999",
                                        "--data-dir", str(cifar_dir), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "--images must be an integer from 1 to 5,000" in refused.output  # before any work
    assert not (tmp_path / "x").exists()
