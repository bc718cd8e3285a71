"""rtk.quantize and `rtk quantize`: the QDQ structure of both INT8 flavours, the FP16 model, the
calibration methods and manifest, validation, and (slow) the accuracy of a briefly trained model.

Structure tests use an untrained ResNet-8 with non-trivial BN (test_export.make_checkpoint): n=1
still has an identity-shortcut block and two Slice+Pad shortcuts, and it quantizes in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper
from test_export import make_checkpoint

from rtk import data, export, quantize, stats
from rtk.cli import main
from rtk.errors import RtkError
from rtk.fileio import sha256_file
from rtk.onnx_meta import decode_metadata, read_metadata
from rtk.preprocess import normalize_uint8_nhwc
from rtk.quantize import calibration, validation
from rtk.quantize.qdq import FLAVOURS, activation_quantization, conv_macs

CALIB_IMAGES = 64


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quantize")
    checkpoint, _ = make_checkpoint(root / "checkpoint.pt", depth=8)
    return export.export_onnx(checkpoint, root / "model.onnx", verify=False, log=lambda _: None)


@pytest.fixture(autouse=True)
def loaded_once(monkeypatch, cifar10, cifar_dir):
    """Every stage call reads the real CIFAR-10 (RTK_DATA_DIR), from memory after the first time."""
    monkeypatch.setattr(data, "load_cifar10", lambda data_dir=None: cifar10)
    monkeypatch.setenv("RTK_DATA_DIR", str(cifar_dir))


def quantized(fp32_onnx: Path, tmp_path: Path, target: str, **options) -> tuple[Path, onnx.ModelProto]:
    options = {"num_images": CALIB_IMAGES, "verify": False, "calib_dir": tmp_path / "calib", "log": lambda _: None,
               **({"tune_steps": 0} if target == "tensorrt" else {}), **options}
    out = quantize.quantize_int8(fp32_onnx, tmp_path / f"model.int8.{target}.onnx", target=target, **options)
    return out, onnx.load(out)


def graph_facts(model: onnx.ModelProto) -> tuple[dict, dict, dict]:
    """(producer of each tensor, readers of each tensor, constant arrays by name)"""
    producer = {name: node for node in model.graph.node for name in node.output}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return producer, readers, constants


def op_of(producer: dict, tensor: str) -> str | None:
    node = producer.get(tensor)
    return node.op_type if node is not None else None


def shortcut_ops(model: onnx.ModelProto) -> list[tuple[str, list]]:
    """Slice and Pad nodes with their constant inputs: the option-A shortcuts."""
    _, _, constants = graph_facts(model)
    return [(node.op_type, [constants[name].tolist() for name in node.input[1:] if name in constants])
            for node in model.graph.node if node.op_type in ("Slice", "Pad")]


# ---------------------------------------------------------------------------------------------
# QDQ structure


def test_tensorrt_flavour_is_symmetric_qdq_on_the_inputs_of_the_convs_after_the_first_two(fp32_onnx, tmp_path):
    _, model = quantized(fp32_onnx, tmp_path, "tensorrt")
    fp32 = onnx.load(fp32_onnx)
    producer, readers, constants = graph_facts(model)
    nodes = model.graph.node
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13

    qdq = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for node in qdq:  # symmetric INT8 everywhere: zero points are int8 zeros
        zero_point = constants[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    for node in [n for n in nodes if n.op_type == "DequantizeLinear"]:
        assert constants.get(node.input[0], np.zeros(0, np.int8)).dtype != np.int32, "INT32 bias behind a DQ"
        # a quantized activation is read by Convs only: the shortcut reads the float tensor
        assert {r.op_type for r in readers[node.output[0]]} == {"Conv"}, node.name

    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in fp32.graph.node) == 7
    for conv in convs[:2]:  # the stem and the first block's conv1: float weights, float input
        assert op_of(producer, conv.input[0]) != "DequantizeLinear" and constants[conv.input[1]].dtype == np.float32
    for conv in convs[2:]:
        activation, weight = (producer[name] for name in conv.input[:2])
        assert activation.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
        assert op_of(producer, activation.input[0]) == "QuantizeLinear"
        axis = next(a.i for a in weight.attribute if a.name == "axis")
        out_channels = constants[weight.input[0]].shape[0]
        assert axis == 0 and constants[weight.input[1]].shape == (out_channels,)  # per output channel
    for conv in convs:
        if len(conv.input) > 2:
            assert conv.input[2] in constants  # the folded BN bias stays a float initializer
        # no Q/DQ between Conv and what reads it (ReLU, or the residual Add)
        assert {r.op_type for r in readers[conv.output[0]]} <= {"Relu", "Add"}

    adds = [n for n in nodes if n.op_type == "Add"]
    assert len(adds) == 3
    for add in adds:  # the conv branch and the shortcut (the block input, or Slice + Pad of it), float
        assert sorted(op_of(producer, name) for name in add.input) in (["Conv", "Relu"], ["Conv", "Pad"])
        assert {r.op_type for r in readers[add.output[0]]} == {"Relu"}
    assert all(op_of(producer, n.input[0]) in ("Relu", "Slice") for n in nodes if n.op_type == "Slice")

    assert shortcut_ops(model) == shortcut_ops(fp32)  # Slice / Pad untouched
    assert sum(n.op_type == "Relu" for n in nodes) == sum(n.op_type == "Relu" for n in fp32.graph.node)
    gemm = next(n for n in nodes if n.op_type == "Gemm")
    assert gemm.input[1] in constants and constants[gemm.input[1]].dtype == np.float32  # last FC float

    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    assert meta["precision"] == "int8" and meta["int8_target"] == "tensorrt"
    assert meta["calibration"]["method"] == "percentile" and meta["calibration"]["num_images"] == CALIB_IMAGES
    fp32_meta = decode_metadata({p.key: p.value for p in fp32.metadata_props})
    assert {k: meta[k] for k in ("depth", "normalization", "classes", "checkpoint_sha256")} == \
        {k: fp32_meta[k] for k in ("depth", "normalization", "classes", "checkpoint_sha256")}


def test_cpu_flavour_is_u8s8_with_relus_folded_and_adds_quantized(fp32_onnx, tmp_path):
    _, model = quantized(fp32_onnx, tmp_path, "cpu")
    fp32 = onnx.load(fp32_onnx)
    producer, readers, constants = graph_facts(model)
    nodes = model.graph.node
    activations = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert activations and all(constants[n.input[2]].dtype == np.uint8 for n in activations)
    weights = [n for n in nodes if n.op_type == "DequantizeLinear" and constants.get(n.input[0]) is not None
               and constants[n.input[0]].ndim == 4]
    convs = [n for n in nodes if n.op_type == "Conv"]
    stem = convs[0]  # left float (Flavour.leading_float_convs): the image is the flavour's largest error
    assert stem.input[1] in constants and constants[stem.input[1]].dtype == np.float32
    assert {readers_of.name for node in weights for readers_of in readers[node.output[0]]} == {c.name for c in convs[1:]}
    for node in weights:
        assert constants[node.input[0]].dtype == np.int8 and not constants[node.input[2]].any()
        assert next(a.i for a in node.attribute if a.name == "axis") == 0
    # folded into the U8 zero points, but for the float stem's (a Conv's output is quantized after its ReLU)
    assert [producer[n.input[0]] for n in nodes if n.op_type == "Relu"] == [stem]
    for add in [n for n in nodes if n.op_type == "Add"]:
        assert all(op_of(producer, name) == "DequantizeLinear" for name in add.input)
        assert {r.op_type for r in readers[add.output[0]]} == {"QuantizeLinear"}
    assert shortcut_ops(model) == shortcut_ops(fp32)
    gemm = next(n for n in nodes if n.op_type == "Gemm")
    assert constants[gemm.input[1]].dtype == np.float32
    assert decode_metadata({p.key: p.value for p in model.metadata_props})["int8_target"] == "cpu"


def test_fp16_model_has_fp16_weights_and_fp32_inputs_and_outputs(fp32_onnx, tmp_path):
    out = quantize.convert_fp16(fp32_onnx, tmp_path / "model.fp16.onnx", verify=False, log=lambda _: None)
    model = onnx.load(out)
    floats = [init for init in model.graph.initializer if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert floats and all(init.data_type == TensorProto.FLOAT16 for init in floats)
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    assert decode_metadata({p.key: p.value for p in model.metadata_props})["precision"] == "fp16"
    assert not quantize.validation_path(out).exists()  # verify=False writes no figures


# ---------------------------------------------------------------------------------------------
# Calibration methods and manifest


def test_the_three_methods_give_different_ranges_and_scales(fp32_onnx, tmp_path):
    ranges, scales = {}, {}
    for method in calibration.METHODS:
        _, model = quantized(fp32_onnx, tmp_path / method, "tensorrt", method=method)
        manifest = decode_metadata({p.key: p.value for p in model.metadata_props})["calibration"]["manifest"]
        ranges[method] = json.loads((tmp_path / method / "calib" / manifest).read_text())["ranges"]
        scales[method] = {k: v["scale"] for k, v in activation_quantization(model).items()}
    names = set(ranges["minmax"])
    assert names == set(ranges["entropy"]) == set(ranges["percentile"]) and len(names) > 10
    for a, b in [("minmax", "entropy"), ("minmax", "percentile"), ("entropy", "percentile")]:
        differ = [n for n in names if not np.allclose(ranges[a][n], ranges[b][n], rtol=1e-3)]
        assert len(differ) > len(names) // 2, (a, b, len(differ), len(names))
        assert scales[a] != scales[b]
    for name in names:  # minmax is the observed range; the other two clip inside it
        low, high = ranges["minmax"][name]
        for method in ("entropy", "percentile"):
            assert low - 1e-5 <= ranges[method][name][0] and ranges[method][name][1] <= high + 1e-5


def test_manifest_records_the_calibration_and_is_reused(fp32_onnx, tmp_path, cifar10, monkeypatch):
    calib = tmp_path / "calib"
    _, model = quantized(fp32_onnx, tmp_path, "tensorrt", seed=3)
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    path = calib / meta["calibration"]["manifest"]  # by name: where it was read from does not change the file
    assert path.name == meta["calibration"]["manifest"] == f"resnet8-{meta['checkpoint_sha256'][:12]}-percentile-n{CALIB_IMAGES}-s3.json"
    manifest = json.loads(path.read_text())
    indices = np.asarray(manifest["indices"])
    train_idx, val_idx = data.split_indices()
    assert len(indices) == CALIB_IMAGES and np.isin(indices, train_idx).all() and not np.isin(indices, val_idx).any()
    assert manifest["class_counts"] == np.bincount(cifar10.train_labels[indices], minlength=10).tolist()
    assert max(manifest["class_counts"]) - min(manifest["class_counts"]) <= 1
    assert manifest["data"]["checksum"] == cifar10.checksum()
    assert (manifest["method"], manifest["seed"], manifest["num_images"]) == ("percentile", 3, CALIB_IMAGES)
    assert manifest["model"]["depth"] == 8 and manifest["model"]["onnx_sha256"] == sha256_file(fp32_onnx)
    assert manifest["calibrator"]["options"] == calibration.METHODS["percentile"].options
    assert all(high >= low for low, high in manifest["ranges"].values())
    written = manifest["quantized"]["tensorrt"]
    assert written["activations"] == activation_quantization(model)
    assert all(q["zero_point"] == 0 for q in written["activations"].values())

    # the second flavour reuses indices and ranges: no calibration, no new sample
    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: pytest.fail("calibrated again"))
    monkeypatch.setattr(data, "calibration_indices", lambda *a, **k: pytest.fail("drew a new sample"))
    quantized(fp32_onnx, tmp_path, "cpu", seed=3)
    again = json.loads(path.read_text())
    assert again["indices"] == manifest["indices"] and again["ranges"] == manifest["ranges"]
    assert set(again["quantized"]) == {"tensorrt", "cpu"}
    assert any(q["zero_point"] > 0 for q in again["quantized"]["cpu"]["activations"].values())  # asymmetric U8

    # another FP32 file of the same checkpoint: recalibrated, on the recorded images
    changed = tmp_path / "changed.onnx"
    other = onnx.load(fp32_onnx)
    other.doc_string = "re-exported"
    onnx.save(other, changed)
    seen = []
    monkeypatch.setattr(calibration, "calibrate", lambda onnx_path, images, method: seen.append(images) or
                        manifest["ranges"])
    quantized(changed, tmp_path, "cpu", seed=3)
    expected = normalize_uint8_nhwc(cifar10.train_images[indices])
    assert len(seen) == 1 and np.array_equal(seen[0], expected)

    # data that is not the calibrated data: refused
    tampered = json.loads(path.read_text())
    tampered["data"]["checksum"] = "0" * 64
    path.write_text(json.dumps(tampered))
    with pytest.raises(RtkError, match="other CIFAR-10 data"):
        quantized(fp32_onnx, tmp_path, "cpu", seed=3)


def test_entropy_leaves_the_zeros_of_a_relu_out_and_keeps_the_range_of_the_rest():
    # a ReLU output: half exact zeros, half a normal's tail (max 4.73, 99.999th percentile 4.16)
    values = np.maximum(np.random.default_rng(0).standard_normal(200_000), 0)
    counts, edges = np.histogram(values, bins=2048, range=(0, values.max()))
    low, high = calibration.entropy_range(counts, edges, 0.0, float(values.max()), 128)
    assert low == 0.0 and 3.8 < high < values.max()  # a little clipping of the tail
    # the zeros counted (a two-sided tensor keeps bin 0), as onnxruntime's search counts them: the
    # spike drags the threshold to under half of that, the clipping that cost 2.8 points
    low, clipped = calibration.entropy_range(counts, edges, -1e-9, float(values.max()), 128)
    assert low == -1e-9 and clipped < 0.5 * high


# ---------------------------------------------------------------------------------------------
# Validation


def test_validation_figures_are_stored_and_a_failed_model_is_not_written(fp32_onnx, tmp_path, cifar10,
                                                                       monkeypatch):
    images, labels = cifar10.test_images[:2000], cifar10.test_labels[:2000]  # the slow test uses all 10k
    monkeypatch.setattr(data, "load_test_set", lambda data_dir=None: (images, labels))
    out, _ = quantized(fp32_onnx, tmp_path, "cpu", verify=True, max_drop=100.0)
    figures = json.loads(quantize.validation_path(out).read_text())
    assert figures["format"] == "rtk.validation/1" and figures["test_images"] == 2000
    assert figures["model"] == out.name and figures["reference"] == fp32_onnx.name
    assert figures["sha256"] == sha256_file(out)  # what the C++ Classifier checks the file against
    assert figures["delta_pct"] == pytest.approx(figures["accuracy_pct"] - figures["reference_accuracy_pct"], abs=1e-3)
    assert 0 <= figures["top1_agreement_pct"] <= 100 and figures["max_drop_pct"] == 100.0
    evidence = figures["evidence"]  # the images behind the difference, with the exact McNemar p
    assert evidence["images"] == 2000 and evidence["delta_pct"] == pytest.approx(figures["delta_pct"], abs=1e-3)
    assert (evidence["fixed"] - evidence["broken"]) / 20 == pytest.approx(figures["delta_pct"], abs=1e-3)
    assert 0 <= evidence["p_value"] <= 1
    int8, fp32 = validation.logits(out, images), validation.logits(fp32_onnx, images)
    assert figures["kl_to_reference"] > 0 and figures["logit_mse"] > 0  # INT8 is not FP32
    assert figures["kl_to_reference"] == pytest.approx(stats.kl_divergence(fp32, int8), abs=1e-6)
    assert figures["logit_mse"] == pytest.approx(float(np.mean((int8 - fp32) ** 2)), abs=1e-6)
    assert figures == {**validation.validate(out, fp32_onnx, images, labels),
                       "model": out.name, "reference": fp32_onnx.name, "max_drop_pct": 100.0,
                       "sha256": sha256_file(out)}

    refused = tmp_path / "refused"
    with pytest.raises(quantize.AccuracyDropError, match="not written") as raised:  # must gain 50 points: impossible
        quantize.convert_fp16(fp32_onnx, refused / "model.fp16.onnx", max_drop=-50.0, log=lambda _: None)
    assert not refused.exists()  # nothing written, not even the folder made for it
    assert raised.value.figures["max_drop_pct"] == -50.0 and raised.value.figures["test_images"] == 2000


def test_bad_requests_are_one_clear_error(fp32_onnx, tmp_path):
    with pytest.raises(RtkError, match="unknown INT8 target"):
        quantized(fp32_onnx, tmp_path, "gpu")
    with pytest.raises(RtkError, match="unknown calibration method"):
        quantized(fp32_onnx, tmp_path, "cpu", method="kl")
    fp16 = quantize.convert_fp16(fp32_onnx, tmp_path / "model.fp16.onnx", verify=False, log=lambda _: None)
    with pytest.raises(RtkError, match="starts from the FP32"):
        quantized(fp16, tmp_path, "cpu")


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_help():
    result = CliRunner().invoke(main, ["quantize", "--help"])
    assert result.exit_code == 0
    for option in ("--target", "--method", "--precision", "--fp16", "--num-images", "--seed", "--onnx", "--out",
                   "--data-dir", "--runs-dir"):
        assert option in result.output


def test_cli_writes_both_flavours_beside_the_onnx_and_prints_a_summary(fp32_onnx, tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(fp32_onnx.read_bytes())
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(source), "--num-images", str(CALIB_IMAGES),
                                       "--no-verify", "--calib-dir", str(tmp_path / "calib")])
    assert result.exit_code == 0, result.output
    written = [str(tmp_path / name) for name in ("model.int8.tensorrt.onnx", "model.int8.cpu.onnx")]
    assert result.stdout.strip().splitlines()[-2:] == written  # after the summary table, one path a line
    assert all(Path(path).is_file() for path in written)
    # both flavours were tuned by default (conftest cuts the default to 4 steps)
    manifest = json.loads(next((tmp_path / "calib").glob("*.json")).read_text())
    assert {target: record["recipe"]["steps"] for target, record in manifest["tuned"].items()} == \
        {"tensorrt": 4, "cpu": 4}
    assert "tuned" in manifest["quantized"]["tensorrt"] and "tuned" in manifest["quantized"]["cpu"]
    untuned = CliRunner().invoke(main, ["quantize", "--onnx", str(source), "--num-images", str(CALIB_IMAGES),
                                        "--no-verify", "--calib-dir", str(tmp_path / "calib"), "--target", "tensorrt",
                                        "--tune-steps", "0", "--out", str(tmp_path / "untuned.onnx")])
    assert untuned.exit_code == 0, untuned.output
    meta = read_metadata(tmp_path / "untuned.onnx")
    assert "tuned" not in meta["calibration"] and "tuned" in read_metadata(written[0])["calibration"]


def test_cli_refuses_out_with_several_models(fp32_onnx, tmp_path):
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(fp32_onnx), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "--out names one file" in result.output


def test_cli_exports_a_missing_onnx_first(fp32_onnx, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr("rtk.pipeline.ensure_onnx", lambda paths, **kw: asked.append(paths) or fp32_onnx)
    result = CliRunner().invoke(main, ["quantize", "--depth", "8", "--runs-dir", str(tmp_path), "--fp16",
                                       "--no-verify"])
    assert result.exit_code == 0, result.output
    assert asked[0].onnx == tmp_path / "resnet8" / "model.onnx"
    assert (tmp_path / "resnet8" / "model.fp16.onnx").is_file()


# ---------------------------------------------------------------------------------------------
# Accuracy on a briefly trained model (slow: a short training run on the real data)


@pytest.fixture(scope="module")
def trained_onnx(tmp_path_factory, cifar_dir) -> Path:
    from rtk import train

    root = tmp_path_factory.mktemp("trained")
    cfg = train.TrainConfig(depth=8, iterations=400, batch_size=128, lr=0.2, schedule="onecycle", nesterov=True,
                            weight_decay=5e-4, device="cpu", out_dir=str(root), data_dir=str(cifar_dir))
    checkpoint = train.train(cfg, show_progress=False)
    return export.export_onnx(checkpoint, root / "model.onnx", verify=False, log=lambda _: None)


@pytest.mark.slow
def test_trained_model_loses_little_in_int8_and_fp16(trained_onnx, tmp_path):
    deltas = {}
    for target in FLAVOURS:
        out, _ = quantized(trained_onnx, tmp_path, target, num_images=1024, verify=True)
        deltas[target] = json.loads(quantize.validation_path(out).read_text())
    fp16 = quantize.convert_fp16(trained_onnx, tmp_path / "model.fp16.onnx", log=lambda _: None)
    deltas["fp16"] = json.loads(quantize.validation_path(fp16).read_text())
    assert deltas["fp16"]["reference_accuracy_pct"] > 40  # it learned something
    assert deltas["tensorrt"]["delta_pct"] >= -0.5 and deltas["cpu"]["delta_pct"] >= -0.5, deltas
    assert deltas["fp16"]["delta_pct"] >= -0.1, deltas


def test_cli_reports_a_refused_model_and_goes_on(fp32_onnx, tmp_path, monkeypatch):
    def quantize_int8(onnx_path, out, *, target, method, **options):
        if method == "entropy":
            raise quantize.AccuracyDropError(f"{out.name} loses 2.19 points", {
                "accuracy_pct": 90.02, "delta_pct": -2.19, "top1_agreement_pct": 94.75, "kl_to_reference": 0.02131})
        out.write_bytes(b"written")
        return out

    monkeypatch.setattr(quantize, "quantize_int8", quantize_int8)
    source = tmp_path / "model.onnx"
    source.write_bytes(fp32_onnx.read_bytes())
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(source), "--target", "cpu", "--method", "all",
                                       "--no-verify"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        "error: not written, too much accuracy lost against FP32: model.int8.cpu.entropy.onnx loses 2.19 points"
    assert "90.02%" in result.output and "-2.19" in result.output and "0.02131" in result.output  # KL column
    assert (tmp_path / "model.int8.cpu.minmax.onnx").is_file()
    assert (tmp_path / "model.int8.cpu.percentile.onnx").is_file()


def test_cli_onnx_takes_its_depth_from_the_file_and_refuses_a_contradicting_one(fp32_onnx, tmp_path):
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(fp32_onnx), "--depth", "20", "--fp16"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: --depth 20 contradicts {fp32_onnx}, a ResNet-8 model by its metadata; drop --depth"]
    source = tmp_path / "model.onnx"
    source.write_bytes(fp32_onnx.read_bytes())
    for depth in ([], ["--depth", "8"]):  # from the file, or a --depth that agrees
        result = CliRunner().invoke(main, ["quantize", "--onnx", str(source), *depth, "--fp16", "--no-verify"])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "model.fp16.onnx")


# ---------------------------------------------------------------------------------------------
# Calibration with any image count, at every depth rtk ships (issue 11: onnxruntime's histogram
# collector crashed on a chunk that was not a whole number of calibration batches)


@pytest.mark.parametrize(("num_images", "depth"), [(200, 20), (1024, 32), (100, 8), (64, 8), (10, 56), (1000, 110)])
def test_calibration_chunks_are_whole_batches_and_cover_every_image_once(num_images, depth):
    chunks = calibration.calibration_chunks(num_images, depth)
    assert [start for start, _ in chunks] == [0] + [stop for _, stop in chunks[:-1]]
    assert chunks[-1][1] == num_images and all(stop > start for start, stop in chunks)
    partial = [stop - start for start, stop in chunks if (stop - start) % calibration.CALIB_BATCH]
    assert partial in ([], [num_images % calibration.CALIB_BATCH])  # at most one, the last, on its own
    if partial:
        assert chunks[-1][1] - chunks[-1][0] == partial[0]


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_untrained_models_of_every_depth_export_and_quantize_with_a_ragged_image_count(depth, tmp_path):
    # 100 images = one whole batch of 64 and 36 more; before the fix depth 32's chunk of 80 images
    # (1 batch + 16) crashed percentile calibration as well
    checkpoint, _ = make_checkpoint(tmp_path / "checkpoint.pt", depth=depth)
    onnx_path = export.export_onnx(checkpoint, tmp_path / "model.onnx", verify=False, log=lambda _: None)
    for target in FLAVOURS:
        _, model = quantized(onnx_path, tmp_path, target, num_images=100)
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        assert len(convs) == depth - 1  # with the last FC, the depth - 1 convolutions of ResNet-<depth>
    manifest = json.loads(next((tmp_path / "calib").glob("*.json")).read_text())
    assert len(manifest["indices"]) == 100 and set(manifest["quantized"]) == set(FLAVOURS)


# ---------------------------------------------------------------------------------------------
# Mixed precision


def test_excluded_convs_stay_float_in_both_flavours(fp32_onnx, tmp_path):
    fp32 = onnx.load(fp32_onnx)
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    float_convs = [convs[0], convs[2]]  # the stem (reads the image) and a block's second conv (feeds an Add)
    macs = conv_macs(fp32_onnx)
    assert list(macs) == convs and macs[convs[0]] == 16 * 32 * 32 * 3 * 9  # [16, 32, 32] out, 3x3 over 3 channels
    expected = {"tensorrt": sorted({*float_convs, *convs[:2]}), "cpu": sorted(float_convs)}  # + the flavour's
    for target in FLAVOURS:
        _, model = quantized(fp32_onnx, tmp_path / target, target, exclude=float_convs)
        producer, _, constants = graph_facts(model)
        for conv in (n for n in model.graph.node if n.op_type == "Conv"):
            weight_from = op_of(producer, conv.input[1])
            if conv.name in expected[target]:
                assert weight_from is None and constants[conv.input[1]].dtype == np.float32
                if target == "tensorrt":  # no Q/DQ on its input: TensorRT runs it in float
                    assert op_of(producer, conv.input[0]) != "DequantizeLinear"
            else:
                assert weight_from == "DequantizeLinear"
        meta = decode_metadata({p.key: p.value for p in model.metadata_props})
        assert meta["calibration"]["float_convs"] == expected[target]
    manifest = json.loads(next((tmp_path / "tensorrt" / "calib").glob("*.json")).read_text())
    share = manifest["quantized"]["tensorrt"]["int8_mac_share"]
    assert share == pytest.approx(1 - sum(macs[c] for c in expected["tensorrt"]) / sum(macs.values()))
    with pytest.raises(RtkError, match="not a Conv"):
        quantized(fp32_onnx, tmp_path, "cpu", exclude=["relu"])


def test_max_validation_drop_leaves_convs_out_only_while_the_budget_needs_it(fp32_onnx, tmp_path, monkeypatch):
    _, model = quantized(fp32_onnx, tmp_path / "loose", "cpu", max_validation_drop=100.0)
    entry = json.loads(next((tmp_path / "loose" / "calib").glob("*.json")).read_text())["quantized"]["cpu"]
    selection = decode_metadata({p.key: p.value for p in model.metadata_props})["calibration"]["mixed_precision"]
    assert "mixed_precision" not in entry  # the evidence travels with the model it chose
    stem = list(conv_macs(fp32_onnx))[:1]  # the CPU flavour's own float Conv
    assert selection["float_convs"] == entry["float_convs"] == stem and entry["int8_mac_share"] < 1.0
    assert len(selection["steps"]) == 1 and selection["validation_images"] == 5000
    assert selection["steps"][0]["validation"]["images"] == 5000  # chosen on the validation split
    # the TensorRT flavour's own float Convs are float in every candidate and never ranked
    _, model = quantized(fp32_onnx, tmp_path / "trt", "tensorrt", max_validation_drop=100.0)
    entry = json.loads(next((tmp_path / "trt" / "calib").glob("*.json")).read_text())["quantized"]["tensorrt"]
    selection = decode_metadata({p.key: p.value for p in model.metadata_props})["calibration"]["mixed_precision"]
    leading = list(conv_macs(fp32_onnx))[:2]
    assert entry["float_convs"] == selection["float_convs"] == sorted(leading)
    assert selection["steps"][0]["float_convs"] == leading and entry["int8_mac_share"] < 1.0
    # a budget no mix meets (here every candidate loses 50 points): every Conv ranked, then one clear
    # error naming the manifest (on 500 validation images, to keep the 14 quantize-and-measure steps short)
    from rtk.quantize import mixed_precision

    split, paired = data.split_indices, mixed_precision.paired
    monkeypatch.setattr(data, "split_indices", lambda *a, **k: (split(*a, **k)[0], split(*a, **k)[1][:500]))
    monkeypatch.setattr(mixed_precision, "paired", lambda *a: dataclasses.replace(paired(*a), delta_pct=-50.0))
    with pytest.raises(quantize.AccuracyDropError, match=r"no mix of INT8 and float Convs .* calibration manifest "
                                                         r".*calib/resnet8-.*\.json, which every rerun reuses"):
        quantized(fp32_onnx, tmp_path / "impossible", "cpu", max_validation_drop=0.0)
    for budget in (-1.0, float("nan"), float("inf")):  # before any work
        with pytest.raises(RtkError, match="--max-drop must be a finite number of points >= 0"):
            quantized(fp32_onnx, tmp_path / "bad", "cpu", max_validation_drop=budget)


# ---------------------------------------------------------------------------------------------
# Scales and biases tuned against FP32 (rtk.quantize.tuning, rtk.qat's fake quantization)


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]


def assert_onnxruntime_confirms_tuning(fp32_onnx: Path, cifar10, manifest: dict, untuned: Path, tuned: Path,
                                       record: dict, rel: float) -> None:
    """onnxruntime on the written files: the tuned one closer to FP32 on the calibration images than
    the untuned one, by what torch's simulation recorded (within `rel`)."""
    images = normalize_uint8_nhwc(cifar10.train_images[np.asarray(manifest["indices"])],
                                  read_metadata(fp32_onnx)["normalization"])
    reference = ort_logits(fp32_onnx, images)
    errors = {name: float(np.mean((ort_logits(path, images) - reference) ** 2))
              for name, path in (("untuned", untuned), ("tuned", tuned))}
    assert errors["tuned"] < errors["untuned"], errors
    assert errors["tuned"] == pytest.approx(record["logit_mse"]["tuned"], rel=rel)  # torch simulated the file


def test_tuned_scales_and_biases_bring_the_int8_logits_closer_to_fp32_and_are_reused(fp32_onnx, tmp_path, cifar10):
    untuned, untuned_model = quantized(fp32_onnx, tmp_path / "untuned", "tensorrt", num_images=256)
    logs: list[str] = []
    tuned, model = quantized(fp32_onnx, tmp_path, "tensorrt", num_images=256, tune_steps=60, log=logs.append)
    manifest = json.loads(next((tmp_path / "calib").glob("*.json")).read_text())
    record = manifest["tuned"]["tensorrt"]
    assert record["recipe"]["steps"] == 60 and record["recipe"]["float_convs"] == sorted(list(conv_macs(fp32_onnx))[:2])
    assert record["logit_mse"]["tuned"] < record["logit_mse"]["calibrated"]
    assert manifest["quantized"]["tensorrt"]["tuned"]["logit_mse"] == record["logit_mse"]

    # onnxruntime on the written file agrees: closer to FP32 on the calibration images than untuned
    assert_onnxruntime_confirms_tuning(fp32_onnx, cifar10, manifest, untuned, tuned, record, rel=0.05)

    # the file holds the tuned scales and the FP32 biases plus the tuned shifts
    scales = activation_quantization(model)
    for tensor, (low, high) in record["ranges"].items():
        assert scales[tensor]["scale"] == pytest.approx(high / 127, rel=1e-6) and low == -high
    fp32_model = onnx.load(fp32_onnx)
    fp32_constants, constants = graph_facts(fp32_model)[2], graph_facts(model)[2]
    fp32_nodes = {node.name: node for node in fp32_model.graph.node}
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        source = fp32_nodes[node.name].input  # this untrained FC's bias is zeros: the exporter left it out
        bias = fp32_constants[source[2]] if len(source) > 2 else 0.0
        np.testing.assert_allclose(constants[node.input[2]], bias + np.asarray(record["bias_shifts"][node.name],
                                                                                np.float32), rtol=1e-6, atol=1e-7)
    assert any(np.abs(shift).max() > 0 for shift in record["bias_shifts"].values())
    assert not any(np.array_equal(constants[n.input[2]], graph_facts(untuned_model)[2][n.input[2]])
                   for n in model.graph.node if n.op_type == "Conv")
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    assert meta["calibration"]["tuned"] == record["recipe"]

    # the same recipe again: reused from the manifest, the same bytes; another recipe tunes again
    logs.clear()
    again, _ = quantized(fp32_onnx, tmp_path, "tensorrt", num_images=256, tune_steps=60, log=logs.append)
    assert any("reusing the tuned scales and biases" in line for line in logs) and not any("tuning" in line for line in logs)
    assert again.read_bytes() == tuned.read_bytes()
    logs.clear()
    quantized(fp32_onnx, tmp_path, "tensorrt", num_images=256, tune_steps=3, log=logs.append)
    assert any(line.startswith("tuning ") for line in logs)
    assert json.loads(next((tmp_path / "calib").glob("*.json")).read_text())["tuned"]["tensorrt"]["recipe"]["steps"] == 3


def test_the_cpu_flavour_tuned_keeps_its_zero_points_and_brings_onnxruntime_closer_to_fp32(fp32_onnx, tmp_path,
                                                                                          cifar10):
    """The same tuning on the U8S8 flavour (rtk.qat.attach_cpu): every quantized tensor's scale, zero
    points as calibrated, the shifted biases quantized to INT32 by quantize_static."""
    untuned, untuned_model = quantized(fp32_onnx, tmp_path / "untuned", "cpu", num_images=256)
    tuned, model = quantized(fp32_onnx, tmp_path, "cpu", num_images=256, tune_steps=60)
    record = json.loads(next((tmp_path / "calib").glob("*.json")).read_text())["tuned"]["cpu"]
    assert record["logit_mse"]["tuned"] < record["logit_mse"]["calibrated"] and record["device"] == "cpu"
    before, after = activation_quantization(untuned_model), activation_quantization(model)
    assert set(record["ranges"]) == set(before) == set(after)  # every activation the file quantizes
    for tensor, (low, high) in record["ranges"].items():
        assert after[tensor]["zero_point"] == before[tensor]["zero_point"]
        assert after[tensor]["scale"] == pytest.approx((high - low) / 255, rel=1e-6)
    assert any(after[t]["scale"] != pytest.approx(before[t]["scale"], rel=1e-4) for t in after)
    # the biases: INT32 behind a DequantizeLinear, the FP32 bias plus the shift to within one step
    producer, _, constants = graph_facts(model)
    fp32_biases = {node.name: graph_facts(onnx.load(fp32_onnx))[2][node.input[2]]
                   for node in onnx.load(fp32_onnx).graph.node if node.op_type == "Conv"}
    for node in (n for n in model.graph.node if n.op_type == "Conv" and n.input[2] in producer):  # not the float stem
        dq = producer[node.input[2]]
        scale = constants[dq.input[1]]
        bias = constants[dq.input[0]].astype(np.float64) * scale
        expected = fp32_biases[node.name] + np.asarray(record["bias_shifts"][node.name])
        assert np.all(np.abs(bias - expected) <= scale / 2 + 1e-7), node.name

    manifest = json.loads(next((tmp_path / "calib").glob("*.json")).read_text())
    assert_onnxruntime_confirms_tuning(fp32_onnx, cifar10, manifest, untuned, tuned, record, rel=0.1)


def test_tuning_runs_on_cuda_when_torch_sees_a_gpu_and_says_how_long_it_will_take(fp32_onnx, tmp_path,
                                                                                 monkeypatch):
    """The device is chosen by torch.cuda.is_available() (no GPU here: the choice is what is
    tested); on the CPU the estimate comes after the first steps, before the rest run."""
    import torch

    from rtk.quantize import tuning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tuning.tuning_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tuning.tuning_device() == "cpu"
    logs: list[str] = []
    quantized(fp32_onnx, tmp_path, "tensorrt", num_images=256, tune_steps=10, log=logs.append)
    first = next(i for i, line in enumerate(logs) if line.startswith("tuning will take about"))
    assert "on cpu" in logs[first] and any(line.startswith("tuning ") and "on cpu" in line for line in logs[:first])
    assert logs[-1].startswith("quantizing") and any(line.startswith("tuned: ") for line in logs[first:])


def test_tuning_is_refused_where_it_does_not_apply(fp32_onnx, tmp_path):
    quantized(fp32_onnx, tmp_path, "cpu")  # a manifest of ranges, as QAT hands on
    with pytest.raises(RtkError, match="starts from calibrated ranges"):
        quantize.quantize_int8(fp32_onnx, tmp_path / "q.onnx", target="tensorrt", verify=False, tune_steps=5,
                               ranges_from=next((tmp_path / "calib").glob("*.json")), num_images=CALIB_IMAGES)
    for args in (["--fp16"], ["--target", "tensorrt", "--qat-epochs", "1"]):
        result = CliRunner().invoke(main, ["quantize", "--onnx", str(fp32_onnx), "--tune-steps", "5", *args])
        assert result.exit_code == 2 and "--tune-steps tunes the INT8 models" in result.output, result.output


# ---------------------------------------------------------------------------------------------
# A manifest edited by hand or forged: every range checked, the manifest named


def _cli_quantize(source: Path, tmp_path: Path, *extra: str):
    return CliRunner().invoke(main, ["quantize", "--onnx", str(source), "--target", "cpu", "--num-images",
                                     str(CALIB_IMAGES), "--calib-dir", str(tmp_path / "calib"), *extra])


@pytest.mark.parametrize("forge, message", [
    (lambda r: r.update({next(iter(r)): [0.0, 0.0]}), "has no width"),
    (lambda r: r.update({next(iter(r)): [5.0, -5.0]}), "has low > high"),
    (lambda r: r.update({next(iter(r)): [float("nan"), float("nan")]}), "is not finite"),
    (lambda r: r.update({next(iter(r)): ["low", "high"]}), "not \\[low, high\\]"),
    (lambda r: r.pop(next(iter(r))), "does not fit model.onnx: it has no range for"),
    (lambda r: r.update({"no_such_tensor": [0.0, 1.0]}), "a range for no_such_tensor, which it does not calibrate"),
])
def test_a_forged_manifest_is_refused_naming_it(fp32_onnx, tmp_path, forge, message):
    """[0, 0] or [5, -5] were used as they were with --no-verify (the model written scored 89.69%);
    NaN, strings and a missing tensor ended in tracebacks."""
    from conftest import fails_cleanly

    source = tmp_path / "model.onnx"
    source.write_bytes(fp32_onnx.read_bytes())
    assert _cli_quantize(source, tmp_path, "--no-verify").exit_code == 0
    (manifest,) = (tmp_path / "calib").iterdir()
    record = json.loads(manifest.read_text())
    forge(record["ranges"])
    manifest.write_text(json.dumps(record))
    (tmp_path / "model.int8.cpu.onnx").unlink()
    line = fails_cleanly(_cli_quantize(source, tmp_path, "--no-verify"), message)
    assert str(manifest) in line and not (tmp_path / "model.int8.cpu.onnx").exists()


def test_a_duplicated_range_and_an_accuracy_the_ranges_cannot_reach_name_the_manifest(tmp_path, cifar10):
    from conftest import fails_cleanly, make_readout_checkpoint

    checkpoint = make_readout_checkpoint(tmp_path / "checkpoint.pt", cifar10, depth=8)  # ~25% top-1, not chance
    source = export.export_onnx(checkpoint, tmp_path / "model.onnx", verify=False, log=lambda _: None)
    assert _cli_quantize(source, tmp_path, "--no-verify").exit_code == 0
    (manifest,) = (tmp_path / "calib").iterdir()
    text = manifest.read_text()
    name, value = next(iter(json.loads(text)["ranges"].items()))
    manifest.write_text(text.replace('"ranges": {', f'"ranges": {{"{name}": {json.dumps(value)},', 1))
    fails_cleanly(_cli_quantize(source, tmp_path, "--no-verify"), f"'{name}' is given 2 times")
    # valid but absurd ranges (a hundredth of each): the model loses accuracy, and the refusal says
    # which manifest every rerun would reuse
    record = json.loads(text)
    record["ranges"] = {key: [low / 100, high / 100] for key, (low, high) in record["ranges"].items()}
    manifest.write_text(json.dumps(record))
    line = fails_cleanly(_cli_quantize(source, tmp_path), "too much accuracy lost")
    assert f"calibration manifest {manifest}, which every rerun reuses" in line


def test_max_drop_must_be_a_finite_budget_and_a_choice_that_changes_nothing_leaves_the_manifest(fp32_onnx, tmp_path):
    """`--max-drop nan` wrote NaN (not JSON) into the manifest; `--max-drop -1` searched for minutes;
    a --max-drop run whose choice was the default model rewrote the reused manifest."""
    source = tmp_path / "model.onnx"
    source.write_bytes(fp32_onnx.read_bytes())
    for budget in ("nan", "-1", "inf"):
        result = _cli_quantize(source, tmp_path, "--max-drop", budget)
        assert result.exit_code == 2 and "--max-drop" in result.output and not (tmp_path / "calib").exists()
    assert _cli_quantize(source, tmp_path, "--no-verify").exit_code == 0
    (manifest,) = (tmp_path / "calib").iterdir()
    before = manifest.stat()
    result = _cli_quantize(source, tmp_path, "--no-verify", "--max-drop", "100", "--out", str(tmp_path / "mp.onnx"))
    assert result.exit_code == 0, result.output
    after = manifest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    stem = list(conv_macs(source))[:1]  # the CPU flavour's own float Conv, the default model's
    assert read_metadata(tmp_path / "mp.onnx")["calibration"]["mixed_precision"]["float_convs"] == stem
