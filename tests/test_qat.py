"""rtk.qat and `rtk quantize --qat-epochs`: fake quantization placed and scaled as the TensorRT QDQ
file (torch reproduces onnxruntime on that file), BN folding, and the tuned checkpoint and QDQ model.
An untrained ResNet-8; fine-tuning cut to a few batches."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from test_compare import int8_run

from rtk import checkpoint, data, qat, quantize
from rtk.cli import main
from rtk.errors import RtkError
from rtk.onnx_meta import decode_metadata
from rtk.preprocess import normalize_uint8_nhwc
from rtk.quantize.qdq import activation_quantization


@pytest.fixture(scope="module")
def run(tmp_path_factory, cifar_dir) -> dict[str, Path]:
    return int8_run(tmp_path_factory.mktemp("qat"), cifar_dir)


def test_fake_quantized_torch_model_computes_what_onnxruntime_computes_on_the_qdq_file(run, cifar10):
    images = cifar10.train_images[:64]
    x = normalize_uint8_nhwc(images)
    # the QDQ file's defined arithmetic (DequantizeLinear, then float ops): no fused integer kernels
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(run["int8"]), options, providers=["CPUExecutionProvider"])
    reference = session.run(["logits"], {"input": x})[0]
    fp32 = ort.InferenceSession(str(run["fp32"]), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]

    model, _ = checkpoint.load(run["checkpoint"])
    model.eval()
    qat.fold_batchnorm(model)
    with torch.no_grad():  # folding changes nothing in float
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), fp32, atol=1e-4, rtol=1e-4)
    conv_scales, shortcut_scales = qat.qdq_scales(run["int8"])
    # the flavour's first two Convs float, the others quantized; the residual Adds read float
    assert len(conv_scales) == 7 and conv_scales[:2] == [None, None] and all(s and s > 0 for s in conv_scales[2:])
    assert shortcut_scales == [None] * 3
    fake = qat.attach(model, conv_scales, shortcut_scales)
    with torch.no_grad():
        simulated = model(torch.from_numpy(x)).numpy()
    # the INT8 error is what both see: torch's simulation is far closer to the QDQ file than FP32 is
    assert np.abs(simulated - reference).mean() < 0.05 * np.abs(fp32 - reference).mean()
    assert np.mean(simulated.argmax(1) == reference.argmax(1)) >= 0.95
    qat.detach(model, fake)
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), fp32, atol=1e-4, rtol=1e-4)


def test_the_folded_model_read_from_an_onnx_file_computes_what_the_file_does(run, cifar10):
    x = normalize_uint8_nhwc(cifar10.train_images[:32])
    expected = ort.InferenceSession(str(run["fp32"]), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    with torch.no_grad():
        got = qat.folded_from_onnx(run["fp32"])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(RtkError, match="not an FP32 ONNX of an rtk ResNet"):
        qat.folded_from_onnx(run["int8"])  # a QDQ file: its Convs read DequantizeLinear weights


def test_finetune_writes_a_loadable_checkpoint_with_its_recipe(run, cifar_dir, tmp_path):
    out = qat.finetune(run["checkpoint"], run["int8"], tmp_path / "tuned.pt", epochs=2, data_dir=cifar_dir,
                       limit_batches=2, log=lambda _: None)
    _, ckpt = checkpoint.load(out)
    recipe = ckpt["recipe"]["qat"]
    assert recipe["epochs"] == 2 and recipe["steps_per_epoch"] == 2 and len(recipe["history"]) == 3
    assert recipe["kept_epoch"] == max(recipe["history"], key=lambda h: h["val_acc"])["epoch"]
    assert ckpt["metrics"]["val_acc"] == recipe["history"][recipe["kept_epoch"]]["val_acc"]
    assert ckpt["split"] == {"seed": 0, "val_size": 5000}
    assert not any("parametrizations" in key for key in ckpt["state_dict"])  # a plain ResNet again


def test_cli_qat_writes_the_tuned_qdq_model_and_checkpoint_beside_it(run, cifar10, cifar_dir, monkeypatch):
    monkeypatch.setattr(qat, "finetune", functools.partial(qat.finetune, limit_batches=2))
    split = data.split_indices  # 500 validation images: the epoch choice, not its quality, is tested here
    monkeypatch.setattr(data, "split_indices", lambda *a, **k: (split(*a, **k)[0], split(*a, **k)[1][:500]))
    monkeypatch.setattr(data, "load_test_set", lambda data_dir=None: (cifar10.test_images[:500],
                                                                      cifar10.test_labels[:500]))
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(run["fp32"]), "--target", "tensorrt",
                                       "--qat-epochs", "1", "--num-images", "64", "--calib-dir",
                                       str(run["root"] / "calib"), "--data-dir", str(cifar_dir)])
    assert result.exit_code == 0, result.output
    out = run["root"] / "model.int8.tensorrt.qat.onnx"
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert (run["root"] / "model.int8.tensorrt.qat.pt").is_file()
    import onnx

    model = onnx.load(out)
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    assert meta["precision"] == "int8" and meta["int8_target"] == "tensorrt"
    assert activation_quantization(model) == activation_quantization(onnx.load(run["int8"]))
    figures = json.loads(quantize.validation_path(out).read_text())
    assert figures["reference"] == "model.onnx" and figures["test_images"] == 500  # against the original FP32
    refused = CliRunner().invoke(main, ["quantize", "--onnx", str(run["fp32"]), "--qat-epochs", "1"])
    assert refused.exit_code == 2 and "--target tensorrt" in refused.output
