"""Fixtures shared by the test files: the real CIFAR-10 and a tiny fake one in the same format.

    cifar_dir       the real data set from RTK_DATA_DIR (fails, with the fix, when it is unset)
    cifar10         rtk.data.load_cifar10(cifar_dir), loaded once per session
    tiny_cifar      a 600/100-image learnable stand-in patched into rtk.data.load_cifar10 (training tests)
    fake_cifar_dir  a cifar-10-batches-py folder of FAKE_IMAGES_PER_BATCH images per batch, with
                    rtk.data.IMAGES_PER_BATCH set to match for the test (this process only)
    write_fake_cifar(root, ...) / write_batch(path, ...) / dump_py2(obj, path) write such files
    artifacts       an untrained ResNet-8's checkpoint, ONNX and fake engine, once per test module
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pickle
import re
import shutil
import struct
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from rtk import data

# Tests write nothing outside the checkout and temporary folders, rtk processes they start included:
# matplotlib's font cache (MPLCONFIGDIR, else ~/.cache/matplotlib) and what follows XDG_CACHE_HOME
# (onnxruntime's device-id database, ~/.cache/Microsoft; rtk's data cache) go to a folder of this
# session's, removed at exit.
_HOME_CACHES = tempfile.mkdtemp(prefix="rtk-tests-caches-")
os.environ["MPLCONFIGDIR"] = os.path.join(_HOME_CACHES, "matplotlib")
os.environ["XDG_CACHE_HOME"] = os.path.join(_HOME_CACHES, "xdg")
atexit.register(shutil.rmtree, _HOME_CACHES, True)

FAKE_IMAGES_PER_BATCH = 20  # a multiple of 10, so every class appears equally often


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    """Writes bytes as Python 2 `str` opcodes (SHORT_BINSTRING / BINSTRING), as the official
    CIFAR-10 files do; Python 3's protocol 2 would call _codecs.encode, which the loader refuses."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(obj: object, path: Path) -> Path:
    """Pickle `obj` to `path` the way the official batches are written (protocol 2, py2 strings)."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)
    return path


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """One batch file in the official format: images uint8 [N, 32, 32, 3] NHWC, labels [N]."""
    planar = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))  # [N, 3072]
    batch = {
        b"batch_label": f"fake {path.name}".encode(),
        b"labels": [int(label) for label in labels],
        b"data": planar,
        b"filenames": [f"{path.name}_{i:04d}.png".encode() for i in range(len(images))],
    }
    return dump_py2(batch, path)


def write_fake_cifar(root: Path, images_per_batch: int = FAKE_IMAGES_PER_BATCH, seed: int = 0) -> Path:
    """root/cifar-10-batches-py with random images and class-balanced labels; returns the folder."""
    folder = Path(root) / data.FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in (*data.TRAIN_BATCHES, data.TEST_BATCH):
        images = rng.integers(0, 256, (images_per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.permutation(np.arange(images_per_batch) % data.NUM_CLASSES)
        write_batch(folder / name, images, labels)
    dump_py2({b"label_names": [c.encode() for c in data.CLASSES]}, folder / data.META_FILE)
    return folder


def make_tiny_cifar(root: Path) -> data.Cifar10:
    """A 600/100-image stand-in for CIFAR-10 with learnable labels (class = brightest channel band)."""
    rng = np.random.default_rng(0)

    def make(n):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 120, (n, 32, 32, 3), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, :, label * 3:label * 3 + 3, :] = 250
        return images, labels.astype(np.int64)

    train_images, train_labels = make(600)
    test_images, test_labels = make(100)
    return data.Cifar10(train_images, train_labels, test_images, test_labels, root)


@pytest.fixture
def tiny_cifar(monkeypatch, tmp_path):
    """make_tiny_cifar patched into rtk.data.load_cifar10, so training tests take seconds."""
    fake = make_tiny_cifar(tmp_path)
    monkeypatch.setattr(data, "load_cifar10", lambda data_dir=None: fake)
    return fake


@pytest.fixture
def fake_cifar_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(data, "IMAGES_PER_BATCH", FAKE_IMAGES_PER_BATCH)
    return write_fake_cifar(tmp_path / "fake")


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    # Not a skip: real-data checks are part of the suite (CI sets RTK_DATA_DIR), and a silently
    # skipped accuracy test would hide exactly the regressions it exists for.
    value = os.environ.get("RTK_DATA_DIR")
    if not value:
        pytest.fail("RTK_DATA_DIR is not set: the real-data tests need CIFAR-10 "
                    "(export RTK_DATA_DIR=/path/to/cifar-10-batches-py, see README)")
    return Path(value)


@pytest.fixture(scope="session")
def cifar10(cifar_dir: Path) -> data.Cifar10:
    return data.load_cifar10(cifar_dir)


def write_fake_engine(path: Path, *, precision: str = "fp32", profile: tuple[int, int, int] = (1, 64, 256),
                      **overrides: object) -> dict:
    """Random bytes at `path` and, at `path`.json, the sidecar `rtk build` writes (every key of the
    common format), with a matching engine_sha256. It cannot run: for tests of the files only."""
    import hashlib
    import json

    from rtk.preprocess import CLASSES, normalization_metadata

    blob = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    Path(path).write_bytes(blob)
    sidecar = {
        "format": "rtk.engine/1",
        "tensorrt_version": "10.13.0.35",
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
        "precision": precision,
        "depth": 20,
        "inputs": [{"name": "input", "shape": [-1, 3, 32, 32], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [-1, 10], "dtype": "float32"}],
        "profile": dict(zip(("min", "opt", "max"), profile)),
        "onnx_sha256": "0" * 64,
        "engine_sha256": hashlib.sha256(blob).hexdigest(),
        "normalization": normalization_metadata(),
        "classes": list(CLASSES),
        "tf32": True,
        "builder_optimization_level": 3,
        "layer_precisions": {precision: 21, "fp32": 1},
        **overrides,
    }
    Path(f"{path}.json").write_text(json.dumps(sidecar, indent=2))
    return sidecar



@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained ResNet-8 (fast) made once per test module: checkpoint, ONNX and a fake engine with
    its sidecar, for the fault tests."""
    import torch

    from rtk import checkpoint
    from rtk.export import export_onnx
    from rtk.model import ResNet

    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    ckpt = checkpoint.save(root / "checkpoint.pt", ResNet(8), split={"seed": 0, "val_size": 5000},
                           recipe={}, metrics={})
    onnx_path = export_onnx(ckpt, root / "model.onnx", verify=False, log=lambda message: None)
    engine = root / "model.fp32.plan"
    write_fake_engine(engine)
    return {"root": root, "checkpoint": ckpt, "onnx": onnx_path, "engine": engine}


def make_readout_checkpoint(path: Path, cifar: data.Cifar10, num_images: int = 512, seed: int = 0,
                            depth: int = 20) -> Path:
    """A ResNet-<depth> checkpoint in seconds whose predictions vary like a trained model's (~25% top-1):
    random convolutions, BN statistics measured on training images, and the FC layer fitted by least
    squares to one-hot labels on the pooled features. For tests of runtimes and benchmarks only."""
    import torch

    from rtk.checkpoint import save
    from rtk.model import ResNet
    from rtk.preprocess import normalize_uint8_nhwc

    torch.manual_seed(seed)
    model = ResNet(depth)
    x = torch.from_numpy(normalize_uint8_nhwc(cifar.train_images[:num_images]))  # [N, 3, 32, 32]
    labels = torch.from_numpy(cifar.train_labels[:num_images])
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None  # running statistics: the plain average over the batch below
    captured: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda mod, inputs, out: captured.append(inputs[0]))
    with torch.no_grad():
        model.train()
        model(x[:256])
        model.eval()
        model(x)
        features = torch.cat([captured[-1], torch.ones(len(x), 1)], dim=1)  # [N, 64 pooled + 1 for the bias]
        readout = torch.linalg.lstsq(features, torch.nn.functional.one_hot(labels, 10).float()).solution
        model.fc.weight.copy_(readout[:-1].T)
        model.fc.bias.copy_(readout[-1])
    hook.remove()
    return save(path, model, split={"seed": seed, "val_size": 5000}, recipe={"readout_images": num_images},
                metrics={"val_acc": None, "test_acc": None})


@pytest.fixture(scope="session")
def bench_runs_dir(tmp_path_factory: pytest.TempPathFactory, cifar10: data.Cifar10, cifar_dir: Path) -> Path:
    """runs/ holding resnet20/checkpoint.pt (make_readout_checkpoint), model.onnx and
    model.int8.cpu.onnx, made by the real export and quantize stages with test-sized options (16
    validation images, 256 calibration images, no test-set verification)."""
    from rtk import export, pipeline, quantize

    root = tmp_path_factory.mktemp("bench-runs")
    paths = pipeline.run_paths(20, root / "runs")
    paths.root.mkdir(parents=True)
    make_readout_checkpoint(paths.checkpoint, cifar10)
    export.export_onnx(paths.checkpoint, paths.onnx, num_images=16, log=lambda message: None)
    quantize.quantize_int8(paths.onnx, paths.int8_onnx("cpu"), target="cpu", data_dir=cifar_dir,
                           num_images=256, verify=False, calib_dir=root / "calib", log=lambda message: None)
    return root / "runs"


@pytest.fixture(scope="session")
def bench_run(bench_runs_dir: Path, cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short `rtk bench --precision int8` on the CPU (backend auto), accuracy on the full test set:
    {"result": click Result, "out": folder of the reports, "json": bench.json}."""
    import json

    from click.testing import CliRunner

    from rtk.cli import main

    out = tmp_path_factory.mktemp("bench-out")
    result = CliRunner().invoke(main, [
        "bench", "--precision", "int8", "--runs-dir", str(bench_runs_dir), "--data-dir", str(cifar_dir),
        "--batch-sizes", "1,8", "--warmup", "0", "--iterations", "3", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return {"result": result, "out": out, "json": json.loads((out / "bench.json").read_text())}


@pytest.fixture(autouse=True, scope="session")
def _short_tuning() -> Iterator[None]:
    """The INT8 flavours' default scale and bias tuning cut to 4 steps: their 600 take minutes a
    model on 2 cores. Session-wide, so that module fixtures that quantize (set up before any
    function's monkeypatch) are cut too. The tests of what tuning achieves ask for their own steps."""
    import rtk.quantize

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rtk.quantize, "TUNE_STEPS", 4)
        yield


@pytest.fixture(autouse=True)
def _no_download_from_the_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing downloads at test time: a test that reaches rtk.data.ensure_data's download without
    a local server of its own fails at once against a closed port on 127.0.0.1."""
    monkeypatch.setenv("RTK_CIFAR_URL", "http://127.0.0.1:9/no-downloads-in-tests")


def run(*args: object) -> Any:
    """`rtk ARGS` in this process through click's CliRunner (a click.testing.Result)."""
    from click.testing import CliRunner

    from rtk.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def fails_cleanly(result: Any, match: str, code: int = 1) -> str:
    """The one `error:` line of a command that failed as rtk promises (the documented exit code, no
    traceback); returns it."""
    assert isinstance(result.exception, SystemExit), "".join(
        traceback.format_exception(result.exception)) if result.exception else result.output
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(match, errors[0]), result.stderr
    return errors[0]


def import_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module, for testing its functions (scripts/ is not a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
