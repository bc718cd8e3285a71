"""rtk.export and `rtk export` / `rtk info`: the graph facts, numerical validation, metadata, errors.

Checkpoints here are untrained but not trivial: BN gammas/betas are random and the running stats
are set from a train-mode pass, so folding BN into the convolutions really changes the weights.
Tests of the CLI wiring use ResNet-8 (n=1, the smallest valid depth: still two Pads) to stay fast.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from conftest import write_fake_engine
from onnx import numpy_helper

from rtk import __version__, export
from rtk.checkpoint import save
from rtk.cli import main
from rtk.errors import RtkError
from rtk.export.validation import beyond_tolerance
from rtk.fileio import sha256_file
from rtk.model import ResNet
from rtk.onnx_meta import OPSET, decode_metadata, encode_metadata, read_metadata
from rtk.preprocess import CLASSES, normalization_metadata

DEPTHS = (20, 32, 56, 110)
HELPER_OPS = {"BatchNormalization", "ConstantOfShape", "Concat", "Transpose", "Cast", "CastLike", "Shape",
              "Expand", "Gather"}
METRICS = {"val_acc": 0.9123, "test_acc": 0.9087}


def make_checkpoint(path: Path, depth: int, seed: int = 0) -> tuple[Path, ResNet]:
    """An untrained ResNet-<depth> whose BN layers hold non-trivial affine parameters and stats."""
    torch.manual_seed(seed)
    model = ResNet(depth)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.normal_(bn.bias, 0.0, 0.1)
        bn.momentum = 1.0  # running stats := this batch's stats, so eval-mode activations stay O(1)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
    save(path, model, split={"seed": 0, "val_size": 5000}, recipe={"epochs": 0}, metrics=METRICS)
    return path, model


def random_inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def torch_logits(model: ResNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_matches_torch(got: np.ndarray, model: ResNet, x: np.ndarray) -> None:
    expected = torch_logits(model, x)
    assert got.shape == expected.shape
    assert not beyond_tolerance(got, expected).any(), np.abs(got - expected).max()


def constant(model: onnx.ModelProto, name: str) -> list[int]:
    init = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(init[name]).tolist()


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, *fragments: str) -> None:
    assert code != 0, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(autouse=True)
def no_default_data(monkeypatch, tmp_path):
    """Without an explicit --data-dir, validation falls back to random images (the cache is empty)."""
    monkeypatch.delenv("RTK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[int, tuple[Path, Path, ResNet, list]]:
    """depth -> (checkpoint, onnx, torch model, [validation, log lines]) for every depth in DEPTHS."""
    root = tmp_path_factory.mktemp("export")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RTK_DATA_DIR", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(root / "empty-cache"))
        for depth in DEPTHS:
            ckpt, model = make_checkpoint(root / f"r{depth}.pt", depth)
            seen, logged = [], []
            out = export.export_onnx(ckpt, root / f"r{depth}.onnx", num_images=16, log=logged.append,
                                     on_validation=seen.append)
            results[depth] = (ckpt, out, model, seen + [logged])
    return results


# ---------------------------------------------------------------------------------------------
# The graph


def assert_clean_graph(path: Path, batch: int | str = "batch") -> None:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert not HELPER_OPS & set(ops), sorted(HELPER_OPS & set(ops))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not list(path.parent.glob(path.name + ".data"))

    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 2
    assert [p for p in pads if onnx.helper.get_attribute_value(p.attribute[0]) != b"constant"] == []
    # ONNX pads: [N_begin, C_begin, H_begin, W_begin, N_end, C_end, H_end, W_end]: channels only.
    assert [constant(model, p.input[1]) for p in pads] == [[0, 8, 0, 0, 0, 8, 0, 0], [0, 16, 0, 0, 0, 16, 0, 0]]

    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    axes = sorted(a for s in slices for a in constant(model, s.input[3]))
    assert axes == [2, 2, 3, 3]
    assert {step for s in slices for step in constant(model, s.input[4])} == {2}
    # Each Pad reads the output of the strided Slices.
    producers = {out: n for n in model.graph.node for out in n.output}
    assert all(producers[p.input[0]].op_type == "Slice" for p in pads)

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: v.type.tensor_type.shape.dim for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for value in (out for node in inferred.graph.node for out in node.output):
        dims = shapes[value]
        assert dims[0].dim_param == batch or dims[0].dim_value == batch, value
        assert all(d.dim_value > 0 for d in dims[1:]), value


@pytest.mark.parametrize("depth", DEPTHS)
def test_graph_has_folded_bn_and_two_channel_pads(exported, depth):
    _, path, _, _ = exported[depth]
    assert_clean_graph(path)
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == depth - 1 and ops.count("Gemm") == 1
    assert export.graph_report(model).problems == []


@pytest.mark.parametrize("depth", DEPTHS)
def test_names_dynamic_batch_and_opset(exported, depth):
    _, path, _, _ = exported[depth]
    model = onnx.load(path)
    assert model.opset_import[0].version == OPSET == 20

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert [(v.name, shape(v)) for v in model.graph.input] == [("input", ["batch", 3, 32, 32])]
    assert [(v.name, shape(v)) for v in model.graph.output] == [("logits", ["batch", 10])]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("depth", DEPTHS)
def test_metadata_round_trip(exported, depth):
    ckpt, path, _, _ = exported[depth]
    expected = {
        "format": "rtk.onnx/1", "depth": depth, "precision": "fp32",
        "normalization": normalization_metadata(), "classes": list(CLASSES),
        "checkpoint_sha256": sha256_file(ckpt), **METRICS, "version": __version__,
    }
    assert read_metadata(path) == expected
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert decode_metadata(session.get_modelmeta().custom_metadata_map) == expected


@pytest.mark.parametrize("depth", DEPTHS)
def test_validation_ran_on_random_images_and_passed(exported, depth):
    _, _, _, (validation, logged) = exported[depth]
    assert validation.passed, validation.problems
    assert validation.source == "16 random images (no CIFAR-10 found)"
    assert validation.batch_sizes == [1, 7, 8]  # 16 images: batches of 1, 7, then the rest
    assert validation.max_abs_diff <= 1e-4 and validation.top1_agreement == 1.0
    assert any("random images" in line for line in logged)


# A batch of 256 through ResNet-56/110 costs ~10 s of torch + onnxruntime on 2 cores: slow-marked there.
# The export's own validation already ran batches of 1 and 7 for every depth.
@pytest.mark.parametrize("depth", [20, 32, *(pytest.param(d, marks=pytest.mark.slow) for d in (56, 110))])
def test_batch_sweep_matches_torch(exported, depth):
    _, path, model, _ = exported[depth]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 256):
        x = random_inputs(batch, seed=batch)
        got = session.run(["logits"], {"input": x})[0]
        assert got.shape == (batch, 10)
        assert_matches_torch(got, model, x)


@pytest.mark.slow
def test_depth_1202(tmp_path):
    ckpt, model = make_checkpoint(tmp_path / "r1202.pt", 1202)
    seen = []
    path = export.export_onnx(ckpt, tmp_path / "r1202.onnx", num_images=8, on_validation=seen.append)
    assert_clean_graph(path)
    assert seen[0].passed
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 256):
        x = random_inputs(batch, seed=batch)
        assert_matches_torch(session.run(["logits"], {"input": x})[0], model, x)


def test_tolerance_scales_with_the_image_logits_not_each_logit():
    expected = np.array([[64.0, -1.6] + [0.0] * 8, [5.0, -1.6] + [0.0] * 8], dtype=np.float32)
    got = expected.copy()
    got[:, 1] += 4.4e-4  # ResNet-1202's measured fp32 noise, on a small logit of each image
    # Image 0's logits reach 64: bound 6.4e-4. Image 1's reach 5: the plain 1e-4 applies.
    assert beyond_tolerance(got, expected).tolist() == [[False] * 10, [False, True] + [False] * 8]
    assert not beyond_tolerance(expected + 9e-5, expected).any()


def test_nan_and_infinity_are_beyond_any_tolerance():
    """`max abs diff nan ... result pass` once: NaN compares false with every bound."""
    expected = np.zeros((3, 10), np.float32)
    got = expected.copy()
    got[0, 0], got[1, 1], expected[2, 2] = np.nan, np.inf, np.nan
    beyond = beyond_tolerance(got, expected)
    assert beyond[:2].sum(axis=1).tolist() == [1, 1] and beyond[2].all()  # a NaN reference: its whole image


# ---------------------------------------------------------------------------------------------
# graph_report catches each kind of bad graph


def test_graph_report_flags_unfolded_bn_and_helper_chains(tmp_path):
    _, model = make_checkpoint(tmp_path / "r8.pt", 8)
    program = torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), input_names=["input"],
                                output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                optimize=False, external_data=False, verbose=False)
    problems = " ".join(export.graph_report(program.model_proto).problems)
    for op in ("BatchNormalization", "Shape", "Cast", "Concat"):
        assert op in problems


def _edit(exported, edit) -> list[str]:
    model = onnx.load(exported[20][1])
    edit(model)
    return export.graph_report(model).problems


def test_graph_report_flags_wrong_pads_slices_and_names(exported):
    def pad_mode(model):
        pad = next(n for n in model.graph.node if n.op_type == "Pad")
        pad.attribute[0].s = b"reflect"

    def pad_on_width(model):
        pad = next(n for n in model.graph.node if n.op_type == "Pad")
        init = next(t for t in model.graph.initializer if t.name == pad.input[1])
        init.CopyFrom(numpy_helper.from_array(np.array([0, 8, 0, 1, 0, 8, 0, 1]), init.name))

    def slice_step(model):
        sl = next(n for n in model.graph.node if n.op_type == "Slice")
        init = next(t for t in model.graph.initializer if t.name == sl.input[4])
        init.CopyFrom(numpy_helper.from_array(np.array([1]), init.name))

    def extra_pad(model):
        pad = next(n for n in model.graph.node if n.op_type == "Pad")
        model.graph.node.append(onnx.helper.make_node("Pad", [pad.output[0], pad.input[1]], ["extra"]))

    def rename_output(model):
        model.graph.output[0].name = "probs"

    assert any("mode 'reflect'" in p for p in _edit(exported, pad_mode))
    assert any("touch axes [1, 3]" in p for p in _edit(exported, pad_on_width))
    assert any("step 2" in p for p in _edit(exported, slice_step))
    assert any("3 Pad nodes, expected exactly 2" in p for p in _edit(exported, extra_pad))
    assert any("outputs are [('probs'" in p for p in _edit(exported, rename_output))


# ---------------------------------------------------------------------------------------------
# A broken export fails and leaves nothing behind


def test_traced_weights_that_differ_from_the_checkpoint_fail_validation(tmp_path, monkeypatch):
    ckpt, _ = make_checkpoint(tmp_path / "r8.pt", 8)
    out = tmp_path / "out" / "model.onnx"
    real_export = torch.onnx.export

    def export_changed_weights(model, *args, **kwargs):
        with torch.no_grad():
            model.fc.bias += 0.01  # the graph the exporter traces no longer matches the checkpoint
        return real_export(model, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_changed_weights)
    code, output = invoke("export", "--checkpoint", str(ckpt), "--out", str(out), "--num-images", "8")
    assert_one_line_error(code, output, "failed its checks", "was not written", "differ by more than max(atol")
    assert "FAIL" in output  # the validation table is printed before the error
    assert not out.exists()
    assert not out.parent.exists()  # no temporary file left either, nor the folder made for it


def test_no_verify_skips_only_the_comparison(tmp_path, monkeypatch):
    ckpt, _ = make_checkpoint(tmp_path / "r8.pt", 8)
    monkeypatch.setattr(export, "validate_onnx", lambda *a, **k: pytest.fail("validation ran"))
    out = tmp_path / "model.onnx"
    code, output = invoke("export", "--checkpoint", str(ckpt), "--out", str(out), "--no-verify")
    assert code == 0, output
    assert output.splitlines()[-1] == str(out)
    assert export.graph_report(onnx.load(out)).problems == []


# ---------------------------------------------------------------------------------------------
# The CLI


def test_cli_fixed_batch_with_depth_from_checkpoint_and_default_out(tmp_path):
    ckpt, model = make_checkpoint(tmp_path / "somewhere.pt", 8)
    code, output = invoke("export", "--checkpoint", str(ckpt), "--runs-dir", str(tmp_path / "runs"),
                          "--fixed-batch", "4", "--num-images", "10")
    assert code == 0, output
    out = tmp_path / "runs" / "resnet8" / "model.onnx"  # depth 8 read from the checkpoint
    assert output.splitlines()[-1] == str(out)
    assert "10 random images" in output and "pass" in output
    assert_clean_graph(out, batch=4)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = random_inputs(4)
    assert_matches_torch(session.run(None, {"input": x})[0], model, x)
    with pytest.raises(Exception, match="input"):
        session.run(None, {"input": random_inputs(5)})


def test_cli_on_real_test_images(cifar_dir, tmp_path):
    """`rtk export --depth 8` finds runs/resnet8/checkpoint.pt and validates on 512 real images."""
    runs = tmp_path / "runs"
    make_checkpoint(runs / "resnet8" / "checkpoint.pt", 8)
    code, output = invoke("export", "--depth", "8", "--runs-dir", str(runs), "--data-dir", str(cifar_dir))
    assert code == 0, output
    assert "512 CIFAR-10 test images" in output and "pass" in output
    assert output.splitlines()[-1] == str(runs / "resnet8" / "model.onnx")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(*invoke("export", "--checkpoint", str(tmp_path / "nope.pt")), "not found")
    assert_one_line_error(*invoke("export", "--depth", "8", "--runs-dir", str(tmp_path)), "no checkpoint")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(*invoke("export", "--checkpoint", str(bad)), "corrupt")


def test_depth_mismatch(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "r8.pt", 8)
    assert_one_line_error(*invoke("export", "--checkpoint", str(ckpt), "--depth", "20"),
                          "ResNet-8, not ResNet-20")


def test_unwritable_output(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "r8.pt", 8)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(*invoke("export", "--checkpoint", str(ckpt), "--out", str(blocker / "model.onnx")),
                          "cannot write")


def test_too_old_onnxruntime(tmp_path, monkeypatch):
    ckpt, _ = make_checkpoint(tmp_path / "r8.pt", 8)
    monkeypatch.setattr(ort, "__version__", "1.9.0")
    code, output = invoke("export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert_one_line_error(code, output, "onnxruntime 1.9.0 is too old", "onnxruntime>=1.27")
    assert code == 2


def test_min_versions_match_pyproject():
    """The versions export refuses below are the ones the `cpu` extra installs."""
    pins = {}
    for req in importlib.metadata.requires("rtk") or []:
        match = re.fullmatch(r'(\S+)>=(\S+); extra == "cpu"', req)
        if match:
            pins[match[1]] = match[2]
    assert {name: pins.get(name) for name in export.MIN_VERSIONS} == export.MIN_VERSIONS


def test_unsupported_opset(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path / "r8.pt", 8)
    assert invoke("export", "--checkpoint", str(ckpt), "--opset", "13")[0] == 2  # click: below 18
    with pytest.raises(RtkError, match="opset 99 is not supported"):
        export.export_onnx(ckpt, tmp_path / "m.onnx", opset=99)


@pytest.mark.parametrize("command", ["export", "info"])
def test_help(command):
    code, output = invoke(command, "--help")
    assert code == 0, output
    assert f"main {command} [OPTIONS]" in output


# ---------------------------------------------------------------------------------------------
# rtk.onnx_meta and rtk info


def test_metadata_codec_round_trip():
    fields = {"format": "rtk.onnx/1", "depth": 56, "precision": "int8", "int8_target": "cpu",
              "normalization": normalization_metadata(), "classes": list(CLASSES), "val_acc": None,
              "test_acc": 0.93, "calibration": {"method": "percentile", "num_images": 1024, "seed": 0}}
    encoded = encode_metadata(fields)
    assert all(isinstance(v, str) for v in encoded.values())
    assert encoded["rtk.depth"] == "56" and encoded["rtk.val_acc"] == ""
    assert decode_metadata({**encoded, "producer.other": "x"}) == fields
    with pytest.raises(ValueError, match="unknown rtk metadata"):
        encode_metadata({"dept": 20})
    with pytest.raises(RtkError, match="malformed"):
        decode_metadata({"rtk.classes": "[oops"})


def test_info_onnx(exported):
    code, output = invoke("info", str(exported[20][1]))
    assert code == 0, output
    for text in ("[batch, 3, 32, 32]", "[batch, 10]", "float32", "Pad", "opset", "20", "rtk.onnx/1",
                 "checkpoint_sha256", "airplane"):
        assert text in output, text


def test_info_checkpoint(exported):
    code, output = invoke("info", str(exported[20][0]))
    assert code == 0, output
    for text in ("269,722", "resnet_cifar_option_a", "val_acc", "0.9123", "provenance"):
        assert text in output, text


def test_info_engine_sidecar(tmp_path):
    engine = tmp_path / "model.int8.plan"
    write_fake_engine(engine, precision="int8")
    code, output = invoke("info", str(engine))
    assert code == 0, output
    assert "rtk.engine/1" in output and "H100" in output and "int8" in output
    Path(f"{engine}.json").unlink()
    assert_one_line_error(*invoke("info", str(engine)), "model.int8.plan.json is missing")


def test_info_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    assert_one_line_error(*invoke("info", str(junk)), "not a readable ONNX file")
    assert_one_line_error(*invoke("info", str(tmp_path / "missing.onnx")), "not found")
    assert_one_line_error(*invoke("info", str(tmp_path / "notes.txt")), "cannot describe")


def test_export_is_byte_reproducible_and_carries_no_local_paths(exported, tmp_path):
    checkpoint, first, _, _ = exported[20]
    again = export.export_onnx(checkpoint, tmp_path / "again.onnx", verify=False, log=lambda _: None)
    assert again.read_bytes() == first.read_bytes()
    model = onnx.load(first)
    assert not any(node.metadata_props for node in model.graph.node)  # no stack traces, no paths
    assert str(Path.cwd()) not in first.read_bytes().decode("latin1")


@pytest.mark.parametrize("folder_exists", [True, False])
def test_cli_out_folder_gets_model_onnx_inside(tmp_path, folder_exists):
    ckpt, _ = make_checkpoint(tmp_path / "c.pt", 8)
    folder = tmp_path / "exports"
    if folder_exists:
        folder.mkdir()
    out = str(folder) + ("" if folder_exists else "/")  # an existing folder, or a name with a trailing slash
    code, output = invoke("export", "--checkpoint", str(ckpt), "--out", out, "--no-verify")
    assert code == 0, output
    assert output.splitlines()[-1] == str(folder / "model.onnx")
    assert folder.is_dir() and [p.name for p in folder.iterdir()] == ["model.onnx"]
