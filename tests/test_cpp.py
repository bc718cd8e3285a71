"""The C++ library in cpp/: built here with CMake into a temporary folder with its OpenVINO backend
(OpenVINO's CMake package from the openvino wheel; the TensorRT backend builds only where TensorRT
is found), its unit tests run through ctest, its preprocessing compared with rtk.preprocess float
for float, and `classify` compared with rtk.runtime's OpenVINO backend on the shipped ResNet-20's
FP32 and CPU-flavour INT8 files over the 10,000 test images. scripts/gpu_check_cpp.sh runs the
TensorRT backend against the Python runtime on a GPU machine."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import import_script, run, write_fake_engine

from rtk.fileio import sha256_file
from rtk.names import TUNE_STEPS
from rtk.preprocess import CLASSES, normalization_metadata, normalize_uint8_nhwc

CPP = Path(__file__).resolve().parent.parent / "cpp"


@dataclass
class CppBuild:
    root: Path
    configure_log: str

    def tool(self, name: str) -> Path:
        return self.root / name


def _run(args: list[object], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True,
                          timeout=300, **kwargs)


def openvino_cmake_dir() -> Path:
    """The CMake package the openvino wheel ships, <site-packages>/openvino/cmake (found without
    importing OpenVINO)."""
    spec = importlib.util.find_spec("openvino")
    assert spec is not None and spec.submodule_search_locations, "openvino is not installed: pip install 'rtk[openvino]'"
    return Path(next(iter(spec.submodule_search_locations))) / "cmake"


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory: pytest.TempPathFactory) -> CppBuild:
    root = tmp_path_factory.mktemp("cpp-build")
    configure = _run(["cmake", "-S", CPP, "-B", root, "-DCMAKE_BUILD_TYPE=Release", "-DRTK_REQUIRE_OPENVINO=ON",
                      f"-DOpenVINO_DIR={openvino_cmake_dir()}"])
    assert configure.returncode == 0, configure.stdout + configure.stderr
    build = _run(["cmake", "--build", root, "--parallel", "2"])
    assert build.returncode == 0, build.stdout + build.stderr
    return CppBuild(root, configure.stdout)


def write_cifar_binary(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """CIFAR-10 binary records: a label byte, then the image channel-planar (R, G, B planes)."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # [N, 3072]
    path.write_bytes(np.concatenate([labels.astype(np.uint8)[:, None], planar], axis=1).tobytes())
    return path


def write_ppm(path: Path, image: np.ndarray) -> Path:
    height, width, _ = image.shape
    path.write_bytes(f"P6\n# rtk test\n{width} {height}\n255\n".encode() + image.tobytes())
    return path


def random_images(n: int, seed: int = 0) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 255, 128)  # both ends of the value range
    return images


def dump(cpp_build: CppBuild, sidecar: Path, image: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run([cpp_build.tool("rtk_preprocess_dump"), sidecar, image, out, *extra])


def dumped_floats(cpp_build: CppBuild, sidecar: Path, image: Path, tmp_path: Path, *extra: str) -> np.ndarray:
    out = tmp_path / "input.f32"
    result = dump(cpp_build, sidecar, image, out, *extra)
    assert result.returncode == 0, result.stderr
    return np.fromfile(out, dtype="<f4").reshape(-1, 3, 32, 32)


def test_core_unit_tests_pass_under_ctest(cpp_build: CppBuild):
    result = _run(["ctest", "--test-dir", cpp_build.root, "--output-on-failure"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed, 0 tests failed out of 8" in result.stdout


def test_tensorrt_backend_builds_where_tensorrt_is_found(cpp_build: CppBuild, tmp_path: Path):
    skipped = re.search(r"TensorRT backend skipped: (.*)", cpp_build.configure_log)
    if skipped and "TensorRT headers not found" in skipped.group(1):
        # Without it, classify says so for an engine instead of failing on the file.
        write_fake_engine(tmp_path / "m.plan")
        result = _run([cpp_build.tool("classify"), tmp_path / "m.plan", tmp_path / "none.bin"])
        assert result.returncode == 1 and "this build of rtk_infer has no TensorRT backend" in result.stderr
        pytest.skip(f"{skipped.group(1)}: the TensorRT backend is not built")
    assert not skipped, f"TensorRT was found but the build skipped it: {skipped.group(1)}"
    missing = _run([cpp_build.tool("classify"), cpp_build.root / "none.plan", cpp_build.root / "none.bin"])
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "engine not found" in missing.stderr


@pytest.mark.parametrize("fmt", ["cifar", "ppm", "png"])
def test_preprocessing_equals_rtk_preprocess_bit_for_bit(cpp_build: CppBuild, tmp_path: Path, fmt: str):
    sidecar = write_fake_engine(tmp_path / "m.plan")
    if fmt == "cifar":
        images = random_images(5)
        source = write_cifar_binary(tmp_path / "x.bin", images, np.arange(5))
    elif fmt == "ppm":
        images = random_images(1, seed=1)
        source = write_ppm(tmp_path / "x.ppm", images[0])
    else:
        from PIL import Image

        images = random_images(1, seed=2)
        source = tmp_path / "x.png"
        Image.fromarray(images[0]).save(source)
        if "PNG input disabled" in cpp_build.configure_log:
            result = dump(cpp_build, tmp_path / "m.plan.json", source, tmp_path / "out.f32")
            assert result.returncode == 1 and "PNG input is not supported by this build" in result.stderr
            return
    floats = dumped_floats(cpp_build, tmp_path / "m.plan.json", source, tmp_path)
    expected = normalize_uint8_nhwc(images, sidecar["normalization"])
    assert floats.shape == expected.shape
    assert np.array_equal(floats, expected), np.abs(floats - expected).max()


def test_preprocessing_follows_the_sidecars_normalization(cpp_build: CppBuild, tmp_path: Path):
    normalization = {**normalization_metadata(), "mean": [0.5, 0.25, 0.125], "std": [0.3, 0.2, 0.1],
                     "scale": 1 / 127.5}
    write_fake_engine(tmp_path / "m.plan", normalization=normalization)
    images = random_images(3)
    floats = dumped_floats(cpp_build, tmp_path / "m.plan.json",
                           write_cifar_binary(tmp_path / "x.bin", images, np.zeros(3)), tmp_path)
    assert np.array_equal(floats, normalize_uint8_nhwc(images, normalization))
    assert not np.allclose(floats, normalize_uint8_nhwc(images))


def test_preprocessing_of_real_test_images(cpp_build: CppBuild, tmp_path: Path, cifar_dir: Path):
    from rtk.data import load_test_set

    images, labels = load_test_set(cifar_dir)
    source = write_cifar_binary(tmp_path / "test16.bin", images[:16], labels[:16])
    write_fake_engine(tmp_path / "m.plan")
    floats = dumped_floats(cpp_build, tmp_path / "m.plan.json", source, tmp_path)
    assert np.array_equal(floats, normalize_uint8_nhwc(images[:16]))
    one = dumped_floats(cpp_build, tmp_path / "m.plan.json", source, tmp_path, "--index", "7")
    assert np.array_equal(one, normalize_uint8_nhwc(images[7:8]))


def test_reads_every_field_of_a_sidecar_in_the_common_format(cpp_build: CppBuild, tmp_path: Path):
    sidecar = write_fake_engine(tmp_path / "m.int8.plan", precision="int8", profile=(1, 128, 1024))
    source = write_cifar_binary(tmp_path / "x.bin", random_images(2), np.zeros(2))
    result = dump(cpp_build, tmp_path / "m.int8.plan.json", source, tmp_path / "out.f32")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert fields["depth"] == "20" and fields["precision"] == "int8"
    assert fields["tensorrt_version"] == sidecar["tensorrt_version"]
    assert fields["gpu"] == sidecar["gpu"]["name"]
    assert fields["compute_capability"] == "9.0"
    assert fields["profile"] == "1 128 1024"
    assert fields["input"] == "input -1 3 32 32" and fields["output"] == "logits -1 10"
    assert fields["engine_sha256"] == sidecar["engine_sha256"]
    assert fields["classes"].split() == list(CLASSES)
    assert fields["shape"] == "2 3 32 32"


def _broken_sidecar(tmp_path: Path, **overrides: object) -> Path:
    write_fake_engine(tmp_path / "m.plan", **overrides)
    return tmp_path / "m.plan.json"


@pytest.mark.parametrize("case, expected", [
    ("missing image", "image file not found: "),
    ("missing sidecar", "sidecar not found: "),
    ("wrong size", "is 16x16 pixels but the model takes 32x32 RGB images"),
    ("not an image", "is not a CIFAR-10 binary file"),
    ("index out of range", "--index 9 is out of range (the file holds 2 images)"),
    ("sidecar without classes", "m.plan.json: classes: missing"),
    ("other sidecar format", "format: 'rtk.engine/9' is not 'rtk.engine/1'"),
    ("BGR sidecar", "normalization.channel_order: 'BGR' is not supported"),
    ("corrupt sidecar", "m.plan.json: invalid JSON at byte"),
])
def test_bad_inputs_fail_with_one_line(cpp_build: CppBuild, tmp_path: Path, case: str, expected: str):
    sidecar = _broken_sidecar(tmp_path)
    image = write_cifar_binary(tmp_path / "x.bin", random_images(2), np.zeros(2))
    extra: list[str] = []
    if case == "missing image":
        image = tmp_path / "none.bin"
    elif case == "missing sidecar":
        sidecar = tmp_path / "none.plan.json"
    elif case == "wrong size":
        image = write_ppm(tmp_path / "small.ppm", np.zeros((16, 16, 3), np.uint8))
    elif case == "not an image":
        image.write_bytes(b"hello")
    elif case == "index out of range":
        extra = ["--index", "9"]
    elif case == "sidecar without classes":
        data = json.loads(sidecar.read_text())
        del data["classes"]
        sidecar.write_text(json.dumps(data))
    elif case == "other sidecar format":
        sidecar = _broken_sidecar(tmp_path, format="rtk.engine/9")
    elif case == "BGR sidecar":
        sidecar = _broken_sidecar(tmp_path, normalization={**normalization_metadata(), "channel_order": "BGR"})
    elif case == "corrupt sidecar":
        sidecar.write_text(sidecar.read_text()[:100])
    out = tmp_path / "out.f32"
    result = dump(cpp_build, sidecar, image, out, *extra)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert expected in result.stderr
    assert not out.exists()


def test_tools_print_usage(cpp_build: CppBuild):
    result = _run([cpp_build.tool("rtk_preprocess_dump"), "--help"])
    assert result.returncode == 0 and result.stdout.startswith("usage: rtk_preprocess_dump SIDECAR IMAGE OUT")
    wrong = _run([cpp_build.tool("rtk_preprocess_dump"), "only-one-argument"])
    assert wrong.returncode == 1 and "expected 3 arguments, got 1" in wrong.stderr


FIND_TENSORRT_PROJECT = """
cmake_minimum_required(VERSION 3.18)
project(find_tensorrt_check NONE)
set(CMAKE_FIND_LIBRARY_PREFIXES lib)
set(CMAKE_FIND_LIBRARY_SUFFIXES .so)
list(APPEND CMAKE_MODULE_PATH "{module_dir}")
find_package(TensorRT)
get_target_property(include_dirs TensorRT::nvinfer INTERFACE_INCLUDE_DIRECTORIES)
message(STATUS "found=${{TensorRT_FOUND}} version=${{TensorRT_VERSION}} include=${{include_dirs}}")
"""


@pytest.mark.parametrize("version_header, version", [
    ("#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n#define NV_TENSORRT_PATCH 1\n", "8.6.1"),
    (("#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 4\n#define TRT_PATCH_ENTERPRISE 0\n"
      "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n"
      "#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n"), "11.4.0"),
])
def test_find_tensorrt_reads_both_version_header_styles(tmp_path: Path, version_header: str, version: str):
    root = tmp_path / "TensorRT"
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "include" / "NvInfer.h").write_text("")
    (root / "include" / "NvInferVersion.h").write_text(version_header)
    (root / "lib" / "libnvinfer.so").write_bytes(b"")
    project = tmp_path / "project"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(FIND_TENSORRT_PROJECT.format(module_dir=CPP / "cmake"))
    result = _run(["cmake", "-S", project, "-B", tmp_path / "build", f"-DTensorRT_ROOT={root}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"found=TRUE version={version} include={root / 'include'}" in result.stdout


FAKE_CONFIG_PACKAGE = """# Stands in for the package config TensorRT's tar/zip packages ship since 11.2.1.
add_library(TensorRT-Enterprise::nvinfer SHARED IMPORTED)
set_target_properties(TensorRT-Enterprise::nvinfer PROPERTIES
  IMPORTED_LOCATION "${{CMAKE_CURRENT_LIST_DIR}}/../../libnvinfer.so.11"
  INTERFACE_INCLUDE_DIRECTORIES "{include}")
"""


def test_find_tensorrt_tries_the_package_config_first(tmp_path: Path):
    """A TensorRT 11.2.1+ tarball: find_package(TensorRT-Enterprise CONFIG) is what finds it; the
    headers sit where the NvInfer.h search would not look (only the config names them), and
    TensorRT::nvinfer links the config's target."""
    root = tmp_path / "TensorRT-11.4.0"
    config_dir = root / "lib" / "cmake" / "TensorRT-Enterprise"
    config_dir.mkdir(parents=True)
    include = tmp_path / "elsewhere" / "headers"
    include.mkdir(parents=True)
    (include / "NvInfer.h").write_text("")
    (include / "NvInferVersion.h").write_text(
        "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 4\n#define TRT_PATCH_ENTERPRISE 0\n")
    (root / "lib" / "libnvinfer.so.11").write_bytes(b"")
    (config_dir / "TensorRT-EnterpriseConfig.cmake").write_text(FAKE_CONFIG_PACKAGE.format(include=include))
    project = tmp_path / "project"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(FIND_TENSORRT_PROJECT.format(module_dir=CPP / "cmake") + (
        'get_target_property(linked TensorRT::nvinfer INTERFACE_LINK_LIBRARIES)\n'
        'message(STATUS "config=${TensorRT_CONFIG_TARGET} linked=${linked}")\n'))
    result = _run(["cmake", "-S", project, "-B", tmp_path / "build", f"-DTensorRT_ROOT={root}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "found=TRUE version=11.4.0" in result.stdout
    assert "config=TensorRT-Enterprise::nvinfer linked=TensorRT-Enterprise::nvinfer" in result.stdout
    skipped = _run(["cmake", "-S", project, "-B", tmp_path / "build-no-config", f"-DTensorRT_ROOT={root}",
                    "-DTensorRT_NO_CONFIG=ON"])
    assert "found=FALSE" in skipped.stdout  # without the config nothing says where those headers are


def test_cmake_asks_for_the_version_its_ctest_command_needs():
    """docs/cpp.md, scripts/gpu_check_cpp.sh and tests run `ctest --test-dir`, new in CMake 3.20."""
    minimum = re.search(r"cmake_minimum_required\(VERSION (\d+)\.(\d+)", (CPP / "CMakeLists.txt").read_text())
    assert minimum and (int(minimum.group(1)), int(minimum.group(2))) >= (3, 20)


FAKE_CLASSIFY = """#!{python}
# Stands in for the C++ classify (same arguments, same --tsv output), using rtk.runtime on an ONNX.
import os, sys
import numpy as np
import rtk.runtime
engine, images_file = sys.argv[1], sys.argv[2]
records = np.fromfile(images_file, dtype=np.uint8).reshape(-1, 3073)
images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
probs = rtk.runtime.load(engine).predict(images).probs
for i, row in enumerate(probs):
    top = list(np.argsort(-row, kind="stable")[:5])
    if os.environ.get("SWAP_TOP2") and i == 3:
        top[0], top[1] = top[1], top[0]
    print(f"{{images_file}}[{{i}}]\\t{{records[i, 0]}}\\t" + ",".join(map(str, top)) + "\\t"
          + ",".join(f"{{row[c]:.6f}}" for c in top))
"""


def tiny_rtk_onnx(path: Path, precision: str = "fp32", batch: int | str = "batch", rtk_metadata: bool = True) -> Path:
    """input [batch,3,32,32] -> mean over pixels -> 3x10 linear -> logits, with rtk metadata
    (`precision` only labels it: tests/test_build.py builds it with a stand-in TensorRT); an int
    `batch` fixes the batch size as `rtk export --fixed-batch` does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from rtk.onnx_meta import FORMAT, encode_metadata

    weight = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32) * 4
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weight"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in encode_metadata({"format": FORMAT, "depth": 20, "precision": precision,
                                       "normalization": normalization_metadata(),
                                       "classes": list(CLASSES)}).items():
        if rtk_metadata:
            model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, path)
    return path


@pytest.mark.parametrize("swap, exit_code, verdict", [(False, 0, "AGREE"), (True, 1, "DISAGREE")])
def test_gpu_check_comparison_of_top5(tmp_path: Path, cifar_dir: Path, swap: bool, exit_code: int,
                                      verdict: str):
    import os
    import sys

    fake = tmp_path / "classify"
    fake.write_text(FAKE_CLASSIFY.format(python=sys.executable))
    fake.chmod(0o755)
    env = {**os.environ, "RTK_DATA_DIR": str(cifar_dir), **({"SWAP_TOP2": "1"} if swap else {})}
    script = Path(__file__).resolve().parent.parent / "scripts" / "compare_cpp_top5.py"
    result = _run([sys.executable, script, "--model", tiny_rtk_onnx(tmp_path / "tiny.onnx"),
                   "--classify", fake, "--num-images", 40], env=env)
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == verdict
    assert "images=40" in result.stdout


# The OpenVINO backend on the shipped ResNet-20, against rtk.runtime's OpenVINO backend

THREADS = 2  # OpenVINO's CPU threads, the same on both sides


@pytest.fixture(scope="module")
def shipped_models(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> dict[str, Path]:
    """The shipped ResNet-20 as `rtk export --depth 20` and `rtk quantize --depth 20 --target cpu`
    write it into a temporary runs/ (with a copy of calib/, whose shipped manifest the quantize
    reuses), and the 10,000 test images as a CIFAR-10 binary file."""
    from rtk.data import load_test_set

    root = tmp_path_factory.mktemp("shipped")
    shutil.copytree(CPP.parent / "calib", root / "calib")
    common = ["--runs-dir", root / "runs", "--data-dir", cifar_dir]
    for command in (["export", "--depth", 20], ["quantize", "--depth", 20, "--target", "cpu",  # the shipped recipe:
                                                "--tune-steps", TUNE_STEPS, "--calib-dir", root / "calib"]):
        result = run(*command, *common)
        assert result.exit_code == 0, result.output
    assert "reusing the tuned scales and biases in the manifest" in result.stderr  # the shipped file, not re-tuned
    images, labels = load_test_set(cifar_dir)
    models = root / "runs" / "resnet20"
    record = json.loads((models / "model.int8.cpu.onnx.json").read_text())
    assert record["sha256"] == sha256_file(models / "model.int8.cpu.onnx")  # classify checks the file against it
    return {"fp32": models / "model.onnx", "int8": models / "model.int8.cpu.onnx",
            "test_set": write_cifar_binary(root / "test_batch.bin", images, labels)}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_classify_predicts_as_rtk_runtime_on_the_whole_test_set(cpp_build: CppBuild, shipped_models: dict,
                                                                 cifar10, capsys: pytest.CaptureFixture,
                                                                 precision: str):
    compare = import_script("compare_cpp_top5")
    model = shipped_models[precision]
    cpp_top, cpp_probs = compare.classify_tsv(cpp_build.tool("classify"), model, shipped_models["test_set"], THREADS)
    py_probs = compare.python_probs(model, cifar10.test_images, THREADS)
    labels = cifar10.test_labels
    assert len(cpp_top) == len(labels) == 10_000
    cpp_accuracy, py_accuracy = np.mean(cpp_top[:, 0] == labels), np.mean(py_probs.argmax(axis=1) == labels)
    equal = int(np.sum(cpp_top[:, 0] == py_probs.argmax(axis=1)))
    with capsys.disabled():  # in the test log, passed or not
        print(f"\n{model.name}: top-1 accuracy C++ {cpp_accuracy:.2%}, rtk.runtime (OpenVINO) {py_accuracy:.2%}; "
              f"{equal:,} of {len(labels):,} predictions equal")
    assert np.array_equal(cpp_top[:, 0], py_probs.argmax(axis=1))  # every prediction
    figures = compare.compare(cpp_top, cpp_probs, py_probs, tie=1e-4, atol=1e-5)
    assert figures["top5_disagreements"] == 0 and figures["max_prob_diff"] <= 1e-5, figures
    assert cpp_accuracy > 0.91  # the shipped model's, not a constant answer


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_classify_prints_the_top5_of_rtk_runtime_to_4_decimals(cpp_build: CppBuild, shipped_models: dict,
                                                                cifar10, precision: str):
    import rtk.runtime

    model, index = shipped_models[precision], 3  # test image 3: an airplane the model is unsure of
    result = _run([cpp_build.tool("classify"), model, shipped_models["test_set"], "--index", index])
    assert result.returncode == 0, result.stderr
    header, image, *ranks = result.stdout.splitlines()
    assert header == f"{model}: ResNet-20 {precision}{' (cpu flavour)' if precision == 'int8' else ''} on openvino " \
                     f"{importlib.metadata.version('openvino')}"
    assert image.endswith(f"[{index}]  label: airplane")
    with rtk.runtime.load(model, backend="openvino") as loaded:
        probs = loaded.predict(cifar10.test_images[index]).probs[0]
    expected = [f"  {rank + 1}. {CLASSES[c]:<12} {c:2d}  {probs[c]:.4f}"
                for rank, c in enumerate(np.argsort(-probs, kind="stable")[:5])]
    assert ranks == expected
    assert float(ranks[1].split()[-1]) > 0.001  # a second class with a probability worth comparing


def test_example_app_classifies_an_image_as_rtk_runtime(cpp_build: CppBuild, shipped_models: dict, cifar10,
                                                        tmp_path: Path):
    import rtk.runtime

    images = cifar10.test_images[:3]
    files = [write_ppm(tmp_path / f"test{i}.ppm", image) for i, image in enumerate(images)]
    result = _run([cpp_build.root / "examples" / "classify_image" / "classify_image", shipped_models["int8"], *files])
    assert result.returncode == 0, result.stderr
    with rtk.runtime.load(shipped_models["int8"], backend="openvino") as loaded:
        probs = loaded.predict(images).probs
    assert result.stdout.splitlines()[1:] == [f"{file}: {CLASSES[p.argmax()]} ({100 * p.max():.1f}%)"
                                              for file, p in zip(files, probs)]
    assert _run([cpp_build.root / "examples" / "classify_image" / "classify_image"]).returncode == 2


def test_a_fixed_batch_model_takes_any_number_of_images(cpp_build: CppBuild, tmp_path: Path):
    import rtk.runtime

    model = tiny_rtk_onnx(tmp_path / "fixed.onnx", batch=4)
    images = random_images(10)
    result = _run([cpp_build.tool("classify"), model, write_cifar_binary(tmp_path / "x.bin", images, np.zeros(10)),
                   "--tsv", "--top", 10])
    assert result.returncode == 0, result.stderr
    probs = np.array([[float(p) for p in line.split("\t")[3].split(",")] for line in result.stdout.splitlines()])
    with rtk.runtime.load(model, backend="openvino") as loaded:
        expected = -np.sort(-loaded.predict(images).probs, axis=1)
    assert probs.shape == (10, 10) and np.allclose(probs, expected, atol=2e-6)


@pytest.mark.parametrize("case, expected", [
    ("missing", "model file not found: "),
    ("not onnx", "OpenVINO cannot read "),
    ("no rtk metadata", "is not an rtk model: its ONNX metadata has no rtk.format"),
    ("fp16", "is an FP16 model; OpenVINO's CPU plugin runs the FP32 and INT8 files"),
    ("changed after validation", "does not match its validation record"),
    ("foreign validation record", ".json: format: 'x' is not 'rtk.validation/1'"),
    ("wrong image size", "is 16x16 pixels but the model takes 32x32 RGB images"),
    ("unknown file type", "unknown model file type (expected .onnx, .plan or .engine)"),
    ("too many threads", "--threads must be between 0 and 1024, not 5000"),
])
def test_openvino_backend_refuses_with_one_line(cpp_build: CppBuild, shipped_models: dict, tmp_path: Path,
                                                case: str, expected: str):
    model = tmp_path / "m.onnx"
    image = write_ppm(tmp_path / "x.ppm", random_images(1)[0])
    extra: list[object] = []
    if case == "missing":
        model = tmp_path / "none.onnx"
    elif case == "not onnx":
        model.write_bytes(b"not a model at all")
    elif case == "no rtk metadata":
        tiny_rtk_onnx(model, rtk_metadata=False)
    elif case == "fp16":
        tiny_rtk_onnx(model, precision="fp16")
    elif case in ("changed after validation", "foreign validation record"):
        shutil.copy(shipped_models["int8"], model)
        record = json.loads(Path(f"{shipped_models['int8']}.json").read_text())
        if case == "foreign validation record":
            record["format"] = "x"
        else:
            data = bytearray(model.read_bytes())
            data[len(data) // 2] ^= 1  # one bit of one weight
            model.write_bytes(bytes(data))
        Path(f"{model}.json").write_text(json.dumps(record))
    elif case == "wrong image size":
        tiny_rtk_onnx(model)
        image = write_ppm(tmp_path / "small.ppm", np.zeros((16, 16, 3), np.uint8))
    elif case == "unknown file type":
        model = tiny_rtk_onnx(tmp_path / "m.pt")
    elif case == "too many threads":
        tiny_rtk_onnx(model)
        extra = ["--threads", 5000]
    result = _run([cpp_build.tool("classify"), model, image, *extra])
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert expected in result.stderr
    assert result.stdout == ""
