"""rtk.compare and `rtk compare`: tensors matched by name across the QDQ rewrite, SQNR in graph order,
flips, and the same file on two backends. An untrained ResNet-8 on a few validation images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import fails_cleanly
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


def test_the_cpu_flavours_folded_relus_are_compared_with_relus(models, cifar_dir):
    """The CPU flavour folds each ReLU into the quantization before it: its Conv writes the ReLU's
    output name, pre-ReLU. Paired by name alone, FP32 after ReLU met INT8 before it (-13..+11 dB on
    every relu_N of the shipped model, and the blame fell on a ReLU while the Convs sat near 29 dB)."""
    cpu = quantize.quantize_int8(models["fp32"], models["root"] / "model.int8.cpu.onnx", target="cpu", num_images=64,
                                 verify=False, calib_dir=models["root"] / "calib", data_dir=cifar_dir,
                                 log=lambda _: None)
    producers = {out: node.op_type for node in onnx.load(cpu).graph.node for out in node.output}
    assert producers["relu_1"] != "Relu"  # the fold this test is about
    result = compare.compare(models["fp32"], cpu, num_images=30, data_dir=cifar_dir, log=lambda _: None)
    rows = result["tensors"]
    relus = [i for i, row in enumerate(rows) if row["op"] == "Relu"]
    # every ReLU folded in B is applied to it; the float stem's ReLU is a Relu in both (nothing to apply)
    assert [rows[i].get("b_relu_applied", False) for i in relus] == \
        [producers[rows[i]["b_tensor"]] != "Relu" for i in relus] and sum(producers[rows[i]["b_tensor"]] == "Relu"
                                                                             for i in relus) == 1
    for i in relus:  # a ReLU adds no error of its own: about as close to A as the tensor before it
        assert rows[i]["sqnr_db"] > rows[i - 1]["sqnr_db"] - 6, rows[i - 1:i + 1]
    convs = [row for row in rows if row["op"] == "Conv"]
    assert len(convs) == 7 and all(row["sqnr_db"] > 10 for row in convs)  # the Conv outputs are paired too
    assert result["left_out"] == [] and result["blamed"]["op"] != "Relu"


def test_a_byte_copy_loses_nothing_and_metadata_is_checked(models, cifar_dir, tmp_path):
    copy = tmp_path / "copy" / "model.onnx"  # another folder, the same base name
    copy.parent.mkdir()
    copy.write_bytes(models["fp32"].read_bytes())
    result = CliRunner().invoke(main, ["compare", str(models["fp32"]), str(copy), "--images", "10",
                                       "--data-dir", str(cifar_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "most SQNR lost: none" in out and "None" not in out and "-0.0 dB" not in out
    assert json.loads((tmp_path / "compare.json").read_text())["blamed"] is None

    def edited(name: str, change) -> Path:
        model = onnx.load(models["fp32"])
        props = {p.key: p.value for p in model.metadata_props}
        change(props)
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        path = tmp_path / name / "model.onnx"
        path.parent.mkdir()
        onnx.save(model, path)
        return path

    other_norm = edited("norm", lambda props: props.update({"rtk.normalization": props["rtk.normalization"].replace(
        "0.4914", "0.5")}))
    stripped = edited("stripped", lambda props: props.clear())
    for b, message in ((other_norm, "normalization differs"), (stripped, r"carries no rtk metadata \(format, depth")):
        refused = CliRunner().invoke(main, ["compare", str(models["fp32"]), str(b), "--images", "10",
                                            "--data-dir", str(cifar_dir), "--out", str(tmp_path / "x")])
        line = fails_cleanly(refused, message)
        assert str(b) in line and "Traceback" not in refused.output
    other = export.export_onnx(make_checkpoint(tmp_path / "c.pt", depth=8, seed=1)[0], tmp_path / "other" / "model.onnx",
                               verify=False, log=lambda _: None)
    line = fails_cleanly(CliRunner().invoke(main, ["compare", str(models["fp32"]), str(other), "--images", "10",
                                                   "--data-dir", str(cifar_dir)]), "not one network")
    assert str(models["fp32"]) in line and str(other) in line  # both paths, not "model.onnx and model.onnx"
