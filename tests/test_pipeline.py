"""rtk.pipeline: artifact names, and that an artifact left from other weights is never reused."""

import pytest
import torch

from rtk import export, pipeline
from rtk.checkpoint import save
from rtk.errors import RtkError
from rtk.fileio import sha256_file
from rtk.model import ResNet
from rtk.onnx_meta import read_metadata


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    return save(path, ResNet(8).eval(), split={"seed": 0, "val_size": 5000}, recipe={}, metrics={})


def test_artifact_names():
    paths = pipeline.run_paths(32, "runs")
    assert str(paths.onnx) == "runs/resnet32/model.onnx"
    assert str(paths.int8_onnx("cpu")) == "runs/resnet32/model.int8.cpu.onnx"
    assert paths.onnx_for("int8") == paths.int8_onnx("tensorrt") and paths.onnx_for("fp16") == paths.fp16_onnx
    assert str(paths.engine("fp16")) == "runs/resnet32/model.fp16.plan"
    with pytest.raises(RtkError, match="unknown INT8 target"):
        paths.int8_onnx("gpu")


def test_an_onnx_from_other_weights_is_made_again(tmp_path, monkeypatch):
    paths = pipeline.run_paths(8, tmp_path / "runs")
    first, second = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    logged = []
    onnx_path = pipeline.ensure_onnx(paths, first, log=logged.append)
    assert read_metadata(onnx_path)["checkpoint_sha256"] == sha256_file(first)

    real_export = export.export_onnx
    calls = []
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: calls.append(a) or real_export(*a, **k))
    assert pipeline.ensure_onnx(paths, first, log=logged.append) == onnx_path and calls == []  # current: reused
    pipeline.ensure_onnx(paths, second, log=logged.append)
    assert len(calls) == 1 and read_metadata(onnx_path)["checkpoint_sha256"] == sha256_file(second)
    assert any("made from other weights" in line for line in logged)
