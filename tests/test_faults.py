"""rtk under faults: forged and truncated artifacts for every reader, full and read-only output
locations for every writing command, re-runs into existing outputs, interruptions, exit codes.

Injections, and why they are realistic:
- full disk: RLIMIT_FSIZE (soft limit 0, SIGXFSZ ignored) for the duration of one command, so
  every write(2) into a file fails in the kernel with EFBIG, exactly where ENOSPC would (a tmpfs of
  a few KiB needs mount rights the CI machine does not give).
- read-only location: os.open / os.mkdir / open() / os.replace raise OSError(EROFS) for paths
  under the location. Tests run as root, for whom chmod-ing a folder read-only changes nothing;
  the first call that fails on a real read-only mount is the same (creating the temporary).
- interruptions: SIGINT and SIGTERM sent by a test-only hook at a chosen training step, in a
  subprocess, so the real signal handling runs.
Every command is run in process through click's CliRunner (fast: torch is imported once); a
command fails "cleanly" when it exits with the documented code, prints exactly one `error: ...`
line and no traceback, and leaves nothing half-written.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from conftest import write_fake_engine

import rtk.runtime
from rtk import checkpoint
from rtk.cli import main
from rtk.errors import RtkError
from rtk.model import ResNet

REPO = Path(__file__).resolve().parent.parent


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def fails_cleanly(result: Result, match: str, code: int = 1) -> str:
    """The one `error:` line of a command that failed as rtk promises; returns it."""
    assert isinstance(result.exception, SystemExit), "".join(
        __import__("traceback").format_exception(result.exception)) if result.exception else result.output
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(match, errors[0]), result.stderr
    return errors[0]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------------------------------------
# Artifacts made once for the module (ResNet-8, untrained: fast)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rtk.export import export_onnx

    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    ckpt = checkpoint.save(root / "checkpoint.pt", ResNet(8), split={"seed": 0, "val_size": 5000},
                           recipe={}, metrics={})
    onnx_path = export_onnx(ckpt, root / "model.onnx", verify=False, log=lambda message: None)
    engine = root / "model.fp32.plan"
    write_fake_engine(engine)
    return {"root": root, "checkpoint": ckpt, "onnx": onnx_path, "engine": engine}


# ---------------------------------------------------------------------------------------------
# Forged and truncated artifacts, for every reader


class _Payload:
    """A pickle that would run a shell command when unpickled without the guard."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _forged_checkpoint(case: str, good: Path, path: Path) -> str:
    """Write the `case` variant of the checkpoint `good` to `path`; returns the message expected."""
    ckpt = torch.load(good, weights_only=True)
    if case == "truncated":
        path.write_bytes(good.read_bytes()[:1000])
        return "corrupt or truncated"
    if case == "empty":
        path.write_bytes(b"")
        return "corrupt or truncated"
    if case == "pickle payload":
        torch.save({"format": checkpoint.FORMAT, "model": _Payload(path.with_suffix(".ran"))}, path)
        return r"contains pickled code or Python objects \(posix.system\) that rtk does not load"
    if case == "format only":
        torch.save({"format": checkpoint.FORMAT}, path)
        return "not a complete rtk checkpoint: model is missing"
    if case == "no model":
        del ckpt["model"]
    elif case == "bad depth":
        ckpt["model"]["depth"] = 21
    elif case == "state_dict of lists":
        ckpt["state_dict"] = {name: t.tolist() for name, t in ckpt["state_dict"].items()}
    elif case == "classes missing":
        del ckpt["classes"]
    elif case == "NaN weights":
        ckpt["state_dict"]["fc.weight"][0, 0] = float("nan")
    torch.save(ckpt, path)
    return {"no model": "model is missing", "bad depth": r"model.depth must be 6n\+2",
            "state_dict of lists": "state_dict is missing or not a dict of tensors",
            "classes missing": "classes is missing", "NaN weights": "NaN or infinity"}[case]


CHECKPOINT_CASES = ["truncated", "empty", "pickle payload", "format only", "no model", "bad depth",
                    "state_dict of lists", "classes missing", "NaN weights"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_forged_checkpoints_are_refused_by_every_reader(artifacts: dict[str, Path], tmp_path: Path, case: str):
    path = tmp_path / "checkpoint.pt"
    message = _forged_checkpoint(case, artifacts["checkpoint"], path)
    out = tmp_path / "out"
    line = fails_cleanly(run("export", "--checkpoint", path, "--no-verify", "--out", out / "m.onnx"), message)
    assert "weights_only" not in line  # never the advice to switch the guard off
    assert files_under(out) == []
    if case != "NaN weights":  # rtk info describes those, saying so (below)
        fails_cleanly(run("info", path), message)
    with pytest.raises(RtkError, match=message):
        rtk.runtime.load(path)
    assert not path.with_suffix(".ran").exists()  # the payload never ran


def test_info_says_when_weights_are_not_finite(artifacts: dict[str, Path], tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    _forged_checkpoint("NaN weights", artifacts["checkpoint"], path)
    result = run("info", path)
    assert result.exit_code == 0 and "NO: NaN or infinity in 1 tensors" in result.output


def _forged_onnx(case: str, good: Path, path: Path) -> str:
    if case == "empty":
        path.write_bytes(b"")
        return "is not an ONNX model: it has no IR version, opset or graph nodes"
    if case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return "not a readable ONNX file|not an ONNX model"
    if case == "junk":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return "not a readable ONNX file|not an ONNX model"
    import onnx

    model = onnx.load(good)
    del model.metadata_props[:]
    onnx.save(model, path)
    return "no rtk metadata|carries no rtk metadata"


ONNX_CASES = ["empty", "truncated", "junk", "no rtk metadata"]


@pytest.mark.parametrize("case", ONNX_CASES)
def test_forged_onnx_files_are_refused_by_every_reader(artifacts: dict[str, Path], tmp_path: Path, case: str):
    path = tmp_path / "model.onnx"
    message = _forged_onnx(case, artifacts["onnx"], path)
    if case != "no rtk metadata":  # rtk info describes a plain ONNX file
        fails_cleanly(run("info", path), message)
    fails_cleanly(run("quantize", "--onnx", path, "--target", "cpu", "--calib-dir", tmp_path / "calib"), message)
    fails_cleanly(run("deploy", "triton", "--source", path, "--repo", tmp_path / "repo"), message)
    for backend in ("auto", "onnxruntime", "openvino"):
        with pytest.raises(RtkError, match=message if backend == "auto" else "."):
            rtk.runtime.load(path, backend=backend)
    assert files_under(tmp_path) == ["model.onnx"]


def test_info_on_an_engine_whose_sidecar_does_not_match(artifacts: dict[str, Path], tmp_path: Path):
    engine = tmp_path / "model.fp32.plan"
    write_fake_engine(engine)
    assert "matches its sidecar" in run("info", engine).output and "yes" in run("info", engine).output
    engine.write_bytes(b"another engine")
    result = run("info", engine)
    assert result.exit_code == 0 and "NO: the engine's sha256 is" in result.output
    fails_cleanly(run("deploy", "triton", "--source", engine, "--repo", tmp_path / "repo"),
                  "does not match its sidecar")
    Path(f"{engine}.json").write_text("{not json")
    fails_cleanly(run("info", engine), "not readable JSON")


def _nan_onnx(good: Path, path: Path) -> Path:
    """`good` with one weight tensor set to NaN, as an export of a diverged run's weights would be."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(good)
    weight = next(t for t in model.graph.initializer if t.name == "fc.weight")  # ReLU would zero a conv's NaN
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, path)
    return path


def test_nan_weights_are_refused_by_every_consumer(artifacts: dict[str, Path], tmp_path: Path):
    """A diverged run's weights: argmax of NaN logits is class 0 for every image, silently."""
    from rtk import build

    path = _nan_onnx(artifacts["onnx"], tmp_path / "model.onnx")
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(RtkError, match="NaN or infinite logits for 4 of 4 images"):
            rtk.runtime.load(path, backend=backend).predict(np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(RtkError, match="holds NaN or infinity in 1 weight tensors"):
        build.build_engine(path, tmp_path / "model.fp32.plan", precision="fp32")
    fails_cleanly(run("deploy", "triton", "--source", path, "--repo", tmp_path / "repo"), "NaN or infinity")
    assert files_under(tmp_path) == ["model.onnx"]


# ---------------------------------------------------------------------------------------------
# Full and read-only output locations


@contextlib.contextmanager
def full_disk() -> Iterator[None]:
    """Every write into a file fails (EFBIG) until the block ends, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[None]:
    """Creating, opening for writing or renaming anything under `root` fails with EROFS."""
    root = root.resolve()
    real = {"open": builtins.open, "os.open": os.open, "mkdir": os.mkdir, "replace": os.replace,
            "rename": os.rename}

    def refuse(path: Any) -> None:
        try:
            inside = Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except (TypeError, ValueError):
            return
        if inside:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int) and set(mode) & set("wax+"):
            refuse(file)
        return real["open"](file, mode, *args, **kwargs)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real["os.open"](path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        refuse(path)
        real["mkdir"](path, *args, **kwargs)

    def fake_move(name: str) -> Any:
        def move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            refuse(src)
            refuse(dst)
            real[name](src, dst, *args, **kwargs)
        return move

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", fake_open)
        patch.setattr(io, "open", fake_open)
        patch.setattr(os, "open", fake_os_open)
        patch.setattr(os, "mkdir", fake_mkdir)
        patch.setattr(os, "replace", fake_move("replace"))
        patch.setattr(os, "rename", fake_move("rename"))
        yield


def _writing_commands(artifacts: dict[str, Path], out: Path, cifar_dir: Path) -> dict[str, list[object]]:
    """Every command that writes files, each told to write under `out`."""
    return {
        "export": ["export", "--checkpoint", artifacts["checkpoint"], "--no-verify", "--out", out / "model.onnx"],
        "quantize": ["quantize", "--onnx", artifacts["onnx"], "--target", "cpu", "--no-verify", "--num-images", 64,
                     "--out", out / "model.int8.cpu.onnx", "--calib-dir", out / "calib", "--data-dir", cifar_dir],
        "quantize fp16": ["quantize", "--onnx", artifacts["onnx"], "--fp16", "--no-verify",
                          "--out", out / "model.fp16.onnx"],
        "deploy": ["deploy", "triton", "--source", artifacts["onnx"], "--repo", out / "repo"],
        "bench": ["bench", "--precision", "fp32", "--depth", 8, "--checkpoint", artifacts["checkpoint"],
                  "--runs-dir", out / "runs", "--out", out / "report", "--batch-sizes", 1, "--warmup", 0,
                  "--iterations", 1, "--no-accuracy", "--backend", "onnxruntime", "--data-dir", cifar_dir],
        "data download": ["data", "download", "--dest", out / "cache"],
    }


class _Response(io.BytesIO):
    headers: ClassVar[dict[str, str]] = {}


WRITERS = ["export", "quantize", "quantize fp16", "deploy", "bench", "data download"]


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("fault", ["full disk", "read-only"])
def test_every_writing_command_fails_cleanly_on_a_full_or_read_only_disk(
        artifacts: dict[str, Path], cifar_dir: Path, tmp_path: Path, command: str, fault: str,
        monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    out.mkdir()
    args = _writing_commands(artifacts, out, cifar_dir)[command]
    if command == "data download":  # a server that answers, so the download reaches the disk
        from rtk import data

        monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _Response(b"x" * 4096))
    with full_disk() if fault == "full disk" else read_only(out):
        result = run(*args)
    reason = "File too large" if fault == "full disk" else "Read-only file system"
    fails_cleanly(result, rf"cannot write .*{reason}|{reason}")
    assert [name for name in files_under(out) if not (out / name).is_dir()] == []  # nothing half-written


def test_results_to_a_full_device_or_a_closed_pipe(tmp_path: Path):
    """`rtk arch > /dev/full`: one error line; `rtk arch | head -0`: quiet, exit 1 (click's and rich's
    choice for a closed pipe); neither a traceback."""
    cmd = [sys.executable, "-m", "rtk", "arch", "--depth", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open("/dev/full", "w") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, env=env, check=False)
    assert done.returncode == 1 and done.stderr.strip() == "error: No space left on device", done.stderr
    reader = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert reader.stdout is not None
    reader.stdout.close()  # the reader is gone before anything is written
    _, stderr = reader.communicate()
    assert reader.returncode == 1 and b"Traceback" not in stderr and b"Exception ignored" not in stderr


# ---------------------------------------------------------------------------------------------
# Exit codes: one scheme (README, "What rtk promises")


@pytest.mark.parametrize("args, code", [
    (["arch", "--depth", "21"], 2),  # a usage error
    (["export", "--no-such-option"], 2),
    (["build", "--precision", "int8"], 2),  # no TensorRT here: a missing package
    (["info", "/nonexistent/model.onnx"], 1),  # an error of the input
])
def test_exit_codes(args: list[str], code: int):
    result = run(*args)
    assert isinstance(result.exception, SystemExit) and result.exit_code == code, result.output
