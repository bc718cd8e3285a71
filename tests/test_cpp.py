"""The C++ app in cpp/: built here with CMake into a temporary folder (rtk_core and its tools need
neither TensorRT nor CUDA), its unit tests run through ctest, and its preprocessing compared with
rtk.preprocess float for float. rtk_infer and classify build only where TensorRT is found;
scripts/gpu_check_cpp.sh runs them against the Python runtime on a GPU machine."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_engine

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


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory: pytest.TempPathFactory) -> CppBuild:
    root = tmp_path_factory.mktemp("cpp-build")
    configure = _run(["cmake", "-S", CPP, "-B", root, "-DCMAKE_BUILD_TYPE=Release"])
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
    assert "100% tests passed, 0 tests failed out of 7" in result.stdout


def test_tensorrt_part_builds_where_tensorrt_is_found(cpp_build: CppBuild):
    skipped = re.search(r"rtk_infer and classify skipped: (.*)", cpp_build.configure_log)
    if skipped and "TensorRT headers not found" in skipped.group(1):
        pytest.skip(f"{skipped.group(1)}: rtk_infer and classify not built")
    assert not skipped, f"TensorRT was found but the build skipped it: {skipped.group(1)}"
    classify = cpp_build.tool("classify")
    assert _run([classify, "--help"]).returncode == 0
    missing = _run([classify, cpp_build.root / "none.plan", cpp_build.root / "none.bin"])
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")


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


def tiny_rtk_onnx(path: Path, precision: str = "fp32") -> Path:
    """input [batch,3,32,32] -> mean over pixels -> 3x10 linear -> logits, with rtk metadata
    (`precision` only labels it: tests/test_build.py builds it with a stand-in TensorRT)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from rtk.onnx_meta import FORMAT, encode_metadata

    weight = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32) * 4
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weight"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in encode_metadata({"format": FORMAT, "depth": 20, "precision": precision,
                                       "normalization": normalization_metadata(),
                                       "classes": list(CLASSES)}).items():
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
    result = _run([sys.executable, script, "--engine", tiny_rtk_onnx(tmp_path / "tiny.onnx"),
                   "--classify", fake, "--num-images", 40], env=env)
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == verdict
    assert "images=40" in result.stdout
