"""rtk deploy triton: the repository layout, and config.pbtxt parsed against Triton's own schema.

config.pbtxt is read with protobuf's strict text-format parser and a descriptor of the part of
Triton's ModelConfig (model_config.proto, same field numbers and enum values) that rtk writes: a
misspelt field, a wrong enum name or a list where a scalar belongs fails the parse, as it would
fail in tritonserver. The ONNX comes from rtk.export; the engine is random bytes with a matching
sidecar (it is never run here).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_fake_engine

from rtk.cli import main
from rtk.fileio import sha256_file
from rtk.preprocess import CLASSES, normalization_metadata


@functools.cache
def model_config_class() -> type:
    """A message class for the subset of Triton's inference.ModelConfig that rtk writes."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="rtk_triton_model_config.proto", package="inference",
                                              syntax="proto3")

    def enum(parent: Any, name: str, values: dict[str, int]) -> None:
        e = parent.enum_type.add(name=name)
        for value_name, number in values.items():
            e.value.add(name=value_name, number=number)

    def message(parent: Any, name: str, fields: list[tuple[str, int, int, int, str]]) -> Any:
        m = parent.message_type.add(name=name) if parent is file else parent.nested_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = m.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
        return m

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    enum(file, "DataType", {"TYPE_INVALID": 0, "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3,
                            "TYPE_UINT32": 4, "TYPE_UINT64": 5, "TYPE_INT8": 6, "TYPE_INT16": 7,
                            "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10, "TYPE_FP32": 11,
                            "TYPE_FP64": 12, "TYPE_STRING": 13, "TYPE_BF16": 14})
    group = message(file, "ModelInstanceGroup", [
        ("name", 1, F.TYPE_STRING, one, ""), ("kind", 4, F.TYPE_ENUM, one, ".inference.ModelInstanceGroup.Kind"),
        ("count", 2, F.TYPE_INT32, one, ""), ("gpus", 3, F.TYPE_INT32, many, "")])
    enum(group, "Kind", {"KIND_AUTO": 0, "KIND_GPU": 1, "KIND_CPU": 2, "KIND_MODEL": 3})
    message(file, "ModelInput", [
        ("name", 1, F.TYPE_STRING, one, ""), ("data_type", 2, F.TYPE_ENUM, one, ".inference.DataType"),
        ("dims", 4, F.TYPE_INT64, many, "")])
    message(file, "ModelOutput", [
        ("name", 1, F.TYPE_STRING, one, ""), ("data_type", 2, F.TYPE_ENUM, one, ".inference.DataType"),
        ("dims", 3, F.TYPE_INT64, many, ""), ("label_filename", 4, F.TYPE_STRING, one, "")])
    message(file, "ModelDynamicBatching", [
        ("preferred_batch_size", 1, F.TYPE_INT32, many, ""),
        ("max_queue_delay_microseconds", 2, F.TYPE_UINT64, one, "")])
    message(file, "ModelParameter", [("string_value", 1, F.TYPE_STRING, one, "")])
    config = message(file, "ModelConfig", [
        ("name", 1, F.TYPE_STRING, one, ""), ("platform", 2, F.TYPE_STRING, one, ""),
        ("backend", 17, F.TYPE_STRING, one, ""), ("max_batch_size", 4, F.TYPE_INT32, one, ""),
        ("input", 5, F.TYPE_MESSAGE, many, ".inference.ModelInput"),
        ("output", 6, F.TYPE_MESSAGE, many, ".inference.ModelOutput"),
        ("instance_group", 7, F.TYPE_MESSAGE, many, ".inference.ModelInstanceGroup"),
        ("dynamic_batching", 11, F.TYPE_MESSAGE, one, ".inference.ModelDynamicBatching"),
        ("parameters", 14, F.TYPE_MESSAGE, many, ".inference.ModelConfig.ParametersEntry")])
    entry = message(config, "ParametersEntry", [
        ("key", 1, F.TYPE_STRING, one, ""), ("value", 2, F.TYPE_MESSAGE, one, ".inference.ModelParameter")])
    entry.options.map_entry = True  # `map<string, ModelParameter> parameters = 14;`

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(folder: Path) -> Any:
    from google.protobuf import text_format

    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_class()())


@pytest.fixture(scope="module")
def exported_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ResNet-20 through rtk's own exporter (dynamic batch, rtk metadata)."""
    import torch

    from rtk import checkpoint
    from rtk.export import export_onnx
    from rtk.model import ResNet

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx")
    ckpt = checkpoint.save(root / "checkpoint.pt", ResNet(20), split={"seed": 0, "val_size": 5000},
                           recipe={}, metrics={})
    return export_onnx(ckpt, root / "model.onnx", verify=False, log=lambda message: None)


def onnx_variant(source: Path, out: Path, edit: Any) -> Path:
    """A copy of `source` with `edit(model)` applied."""
    from rtk.onnx_meta import load_onnx

    model = load_onnx(source)
    edit(model)
    import onnx

    onnx.save_model(model, out)
    return out


def set_metadata(**fields: Any) -> Any:
    from rtk.onnx_meta import encode_metadata

    def edit(model: Any) -> None:
        for key, value in encode_metadata(fields).items():
            prop = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add(key=key)
            prop.value = value
    return edit


def deploy(*args: object) -> Any:
    return CliRunner().invoke(main, ["deploy", "triton", *map(str, args)])


def test_onnx_repository_matches_the_model(exported_onnx: Path, tmp_path: Path):
    from rtk.onnx_meta import read_metadata

    repo = tmp_path / "repo"
    result = deploy("--source", exported_onnx, "--repo", repo, "--kind", "cpu", "--instances", 2,
                    "--max-batch", 128, "--max-queue-delay-us", 250)
    assert result.exit_code == 0, result.output
    folder = repo / "resnet20_fp32_onnx"
    assert result.stdout.strip() == str(folder)
    assert sorted(p.name for p in repo.iterdir()) == ["resnet20_fp32_onnx"]  # no temporary folders left
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        "1", "1/model.onnx", "README.md", "config.pbtxt", "labels.txt"]
    assert (folder / "1" / "model.onnx").read_bytes() == exported_onnx.read_bytes()

    config = parse_config(folder)
    assert config.name == "resnet20_fp32_onnx" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 128
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims)) == ("input", [3, 32, 32])
    assert (out.name, list(out.dims), out.label_filename) == ("logits", [10], "labels.txt")
    fp32 = model_config_class().DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_name["TYPE_FP32"].number
    assert inp.data_type == out.data_type == fp32
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == group.KIND_CPU

    meta = read_metadata(exported_onnx)
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert json.loads(params["rtk.normalization"]) == meta["normalization"] == normalization_metadata()
    assert params["rtk.depth"] == "20" and params["rtk.precision"] == "fp32"
    assert params["rtk.source_sha256"] == sha256_file(exported_onnx)
    assert "0.4914" in params["rtk.preprocessing"] and "0.2616" in params["rtk.preprocessing"]
    assert (folder / "labels.txt").read_text().splitlines() == meta["classes"] == list(CLASSES)
    readme = (folder / "README.md").read_text()
    assert str(list(meta["normalization"]["mean"])) in readme and str(list(meta["normalization"]["std"])) in readme


def test_onnx_model_in_the_repository_runs(exported_onnx: Path, tmp_path: Path):
    import numpy as np
    import onnxruntime

    folder = Path(deploy("--source", exported_onnx, "--repo", tmp_path).stdout.strip())
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    session = onnxruntime.InferenceSession(folder / "1" / "model.onnx", providers=["CPUExecutionProvider"])
    assert session.run(["logits"], {"input": x})[0].shape == (3, 10)


def test_onnx_with_external_weights_is_served_as_one_file(exported_onnx: Path, tmp_path: Path):
    import onnx

    from rtk.describe import summarize_onnx
    from rtk.onnx_meta import load_onnx

    split = tmp_path / "split" / "model.onnx"
    split.parent.mkdir()
    onnx.save_model(load_onnx(exported_onnx), split, save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    assert summarize_onnx(load_onnx(split, load_weights=False)).external_initializers
    result = deploy("--source", split, "--repo", tmp_path / "repo")
    assert result.exit_code == 0, result.output
    served = Path(result.stdout.strip()) / "1"
    assert [p.name for p in served.iterdir()] == ["model.onnx"]
    assert not summarize_onnx(load_onnx(served / "model.onnx", load_weights=False)).external_initializers


def test_engine_repository_follows_the_sidecar(tmp_path: Path):
    engine = tmp_path / "model.int8.plan"
    sidecar = write_fake_engine(engine, precision="int8", profile=(1, 64, 256))
    result = deploy("--source", engine, "--repo", tmp_path / "repo")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "repo" / "resnet20_int8_trt"
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    config = parse_config(folder)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 256
    assert list(config.dynamic_batching.preferred_batch_size) == [64, 256]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    assert group.count == 1 and group.kind == group.KIND_GPU
    assert list(config.input[0].dims) == sidecar["inputs"][0]["shape"][1:]
    assert list(config.output[0].dims) == sidecar["outputs"][0]["shape"][1:]
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params["rtk.tensorrt_version"] == "10.13.0.35"
    assert json.loads(params["rtk.gpu"]) == sidecar["gpu"]
    assert params["rtk.precision"] == "int8" and params["rtk.source_sha256"] == sidecar["engine_sha256"]
    assert (folder / "labels.txt").read_text().splitlines() == sidecar["classes"]
    assert "TensorRT 10.13.0.35" in (folder / "README.md").read_text()

    smaller = deploy("--source", engine, "--repo", tmp_path / "repo", "--max-batch", 128, "--preferred-batch", 32)
    assert smaller.exit_code == 0, smaller.output
    config = parse_config(folder)
    assert config.max_batch_size == 128 and list(config.dynamic_batching.preferred_batch_size) == [32]


def test_default_model_names(exported_onnx: Path, tmp_path: Path):
    from rtk.deploy import default_model_name, read_served_model

    int8_cpu = onnx_variant(exported_onnx, tmp_path / "model.int8.cpu.onnx",
                            set_metadata(precision="int8", int8_target="cpu"))
    write_fake_engine(tmp_path / "model.fp16.plan", precision="fp16")
    assert default_model_name(read_served_model(exported_onnx)) == "resnet20_fp32_onnx"
    assert default_model_name(read_served_model(int8_cpu)) == "resnet20_int8_cpu_onnx"
    assert default_model_name(read_served_model(tmp_path / "model.fp16.plan")) == "resnet20_fp16_trt"


def test_source_defaults_to_the_runs_folder(exported_onnx: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    (runs / "resnet20").mkdir(parents=True)
    shutil.copyfile(exported_onnx, runs / "resnet20" / "model.onnx")
    result = deploy("--runs-dir", runs)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(runs / "triton" / "resnet20_fp32_onnx")

    write_fake_engine(runs / "resnet20" / "model.fp32.plan")
    assert deploy("--runs-dir", runs).stdout.strip() == str(runs / "triton" / "resnet20_fp32_trt")
    # CPU instances cannot run the engine: the ONNX is served.
    assert deploy("--runs-dir", runs, "--kind", "cpu").stdout.strip().endswith("resnet20_fp32_onnx")


def test_a_failed_deploy_keeps_the_previous_model(exported_onnx: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    from rtk import deploy as deploy_module

    repo = tmp_path / "repo"
    assert deploy("--source", exported_onnx, "--repo", repo, "--max-batch", 64).exit_code == 0

    def broken_readme(*args: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(deploy_module, "_readme", broken_readme)
    assert deploy("--source", exported_onnx, "--repo", repo, "--max-batch", 32).exit_code != 0
    assert parse_config(repo / "resnet20_fp32_onnx").max_batch_size == 64
    assert sorted(p.name for p in repo.iterdir()) == ["resnet20_fp32_onnx"]


def test_a_rerun_replaces_only_rtks_files(exported_onnx: Path, tmp_path: Path):
    """A Triton model folder holds several versions and the user's own files: a re-run keeps them,
    and every file and folder gets the mode plain open() / mkdir() give under the umask."""
    repo = tmp_path / "repo"
    old_umask = os.umask(0o022)
    try:
        assert deploy("--source", exported_onnx, "--repo", repo, "--max-batch", 64).exit_code == 0
        folder = repo / "resnet20_fp32_onnx"
        (folder / "2").mkdir()
        (folder / "2" / "model.onnx").write_bytes(b"version 2")
        (folder / "notes.txt").write_text("mine")
        assert deploy("--source", exported_onnx, "--repo", repo, "--max-batch", 32).exit_code == 0
    finally:
        os.umask(old_umask)
    assert parse_config(folder).max_batch_size == 32
    assert (folder / "2" / "model.onnx").read_bytes() == b"version 2"
    assert (folder / "notes.txt").read_text() == "mine"
    assert sha256_file(folder / "1" / "model.onnx") == sha256_file(exported_onnx)
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "README.md", "config.pbtxt",
                                                        "labels.txt", "notes.txt"]
    modes = {p.relative_to(repo).as_posix(): oct(p.stat().st_mode & 0o777) for p in [repo, *repo.rglob("*")]}
    assert modes["resnet20_fp32_onnx"] == modes["resnet20_fp32_onnx/1"] == oct(0o755), modes
    assert modes["resnet20_fp32_onnx/config.pbtxt"] == modes["resnet20_fp32_onnx/1/model.onnx"] == oct(0o644)


def _bad_source(case: str, exported_onnx: Path, tmp_path: Path) -> list[object]:
    """CLI arguments for one kind of bad input."""
    engine = tmp_path / "model.fp32.plan"
    if case == "missing source":
        return ["--source", tmp_path / "none.onnx"]
    if case == "not a model file":
        (tmp_path / "model.txt").write_text("hello")
        return ["--source", tmp_path / "model.txt"]
    if case == "engine without sidecar":
        engine.write_bytes(b"engine bytes")
        return ["--source", engine]
    write_fake_engine(engine)
    if case == "engine replaced after build":
        engine.write_bytes(b"another engine")
    elif case == "sidecar of another format":
        write_fake_engine(engine, format="something/2")
    elif case == "sidecar without profile":
        sidecar = json.loads(Path(f"{engine}.json").read_text())
        del sidecar["profile"]
        Path(f"{engine}.json").write_text(json.dumps(sidecar))
    elif case == "engine on cpu":
        return ["--source", engine, "--kind", "cpu"]
    elif case == "tensorrt for rtx engine":
        write_fake_engine(engine, runtime="tensorrt-rtx")
    elif case == "max batch above the profile":
        return ["--source", engine, "--max-batch", 512]
    elif case == "preferred above max batch":
        return ["--source", exported_onnx, "--max-batch", 64, "--preferred-batch", 128]
    elif case == "wrong precision":
        return ["--source", exported_onnx, "--precision", "int8"]
    elif case == "bad model name":
        return ["--source", exported_onnx, "--model-name", "../escape"]
    elif case == "onnx without rtk metadata":
        return ["--source", onnx_variant(exported_onnx, tmp_path / "plain.onnx",
                                         lambda m: m.ClearField("metadata_props"))]
    elif case == "onnx with a fixed batch":
        def fix_batch(model: Any) -> None:
            for value in (*model.graph.input, *model.graph.output):
                value.type.tensor_type.shape.dim[0].dim_value = 8
        return ["--source", onnx_variant(exported_onnx, tmp_path / "fixed.onnx", fix_batch)]
    return ["--source", engine]


@pytest.mark.parametrize("case, message", [
    ("missing source", "nothing to deploy at"),
    ("not a model file", "rtk deploys .onnx files or TensorRT engines"),
    ("engine without sidecar", "model.fp32.plan.json is missing"),
    ("engine replaced after build", "does not match its sidecar's engine_sha256"),
    ("sidecar of another format", "is not an rtk engine sidecar (format 'something/2'"),
    ("sidecar without profile", "model.fp32.plan.json has no 'profile' field"),
    ("engine on cpu", "runs only on a GPU"),
    ("tensorrt for rtx engine", "is a TensorRT for RTX engine: Triton's tensorrt backend runs TensorRT engines"),
    ("max batch above the profile", "the engine's optimization profile ends at 256"),
    ("preferred above max batch", "preferred batch sizes [128] are outside 1..64"),
    ("wrong precision", "is an fp32 model, not int8"),
    ("bad model name", "model name '../escape'"),
    ("onnx without rtk metadata", "is not an rtk ONNX file"),
    ("onnx with a fixed batch", "has a fixed batch of 8"),
])
def test_bad_inputs_fail_with_one_clear_line(exported_onnx: Path, tmp_path: Path, case: str, message: str):
    repo = tmp_path / "repo"
    result = deploy(*_bad_source(case, exported_onnx, tmp_path), "--repo", repo)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not repo.exists() or not any(repo.iterdir())


@pytest.mark.parametrize("command", [["deploy"], ["deploy", "triton"], ["export-triton"]])
def test_help(command: list[str]):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert ("triton" in result.output) and ("--max-batch" in result.output or command == ["deploy"])


def test_export_triton_is_listed_once_as_the_alias_of_deploy_triton():
    lines = CliRunner().invoke(main, ["--help"]).output.splitlines()
    listed = [line for line in lines if "export-triton" in line]
    assert len(listed) == 1 and "rtk deploy triton" in listed[0], lines
