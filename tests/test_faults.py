"""rtk under faults: forged and truncated artifacts for every reader, full and read-only output
locations for every writing command, re-runs into existing outputs, interruptions, exit codes.

Injections, and why they are realistic:
- full disk: RLIMIT_FSIZE (soft limit 0, SIGXFSZ ignored) for the duration of one command, so
  every write(2) into a file fails in the kernel with EFBIG, exactly where ENOSPC would (a tmpfs of
  a few KiB needs mount rights the CI machine does not give).
- read-only location: os.open / os.mkdir / open() / os.replace raise OSError(EROFS) for paths
  under the location. Tests run as root, for whom chmod-ing a folder read-only changes nothing;
  the first call that fails on a real read-only mount is the same (creating the temporary).
- interruptions: real SIGINT and SIGTERM, sent at a chosen call of training (tests/faults_signals.py,
  run in an interpreter of its own) and to a real `rtk train` process.
Every command is run in process through click's CliRunner (fast: torch is imported once); a
command fails "cleanly" when it exits with the documented code, prints exactly one `error: ...`
line and no traceback, and leaves nothing half-written.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
import numpy as np
import pytest
import torch
from conftest import fails_cleanly, run, write_fake_engine
from faults_signals import RUN_ARGS, _cfg

import rtk.runtime
from rtk import checkpoint
from rtk.errors import RtkError

REPO = Path(__file__).resolve().parent.parent


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


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
    fails_cleanly(run("quantize", "--onnx", path, "--target", "cpu", "--calib-dir", tmp_path / "calib"),
                  "NaN or infinity")
    fails_cleanly(run("quantize", "--onnx", path, "--fp16"), "NaN or infinity")
    assert files_under(tmp_path) == ["model.onnx"]


def test_quantize_refuses_contradicting_flags_a_fixed_batch_and_a_damaged_manifest(
        artifacts: dict[str, Path], cifar_dir: Path, tmp_path: Path):
    from rtk.export import export_onnx

    contradiction = run("quantize", "--onnx", artifacts["onnx"], "--fp16", "--precision", "int8")
    assert contradiction.exit_code == 2 and "--fp16 and --precision int8 contradict" in contradiction.output
    fixed = export_onnx(artifacts["checkpoint"], tmp_path / "fixed" / "model.onnx", batch_size=4, verify=False,
                        log=lambda message: None)
    fails_cleanly(run("quantize", "--onnx", fixed, "--target", "cpu", "--no-verify", "--data-dir", cifar_dir,
                      "--calib-dir", tmp_path / "calib"), "has a fixed batch of 4")
    args = ["quantize", "--onnx", artifacts["onnx"], "--target", "cpu", "--no-verify", "--num-images", 64,
            "--data-dir", cifar_dir, "--calib-dir", tmp_path / "calib", "--out", tmp_path / "q" / "m.onnx"]
    assert run(*args).exit_code == 0
    (manifest,) = (tmp_path / "calib").iterdir()
    record = json.loads(manifest.read_text())
    del record["indices"]
    manifest.write_text(json.dumps(record))
    fails_cleanly(run(*args), r"calibration manifest .* is incomplete \(indices missing")


def test_a_reused_calibration_manifest_is_not_rewritten(artifacts: dict[str, Path], cifar_dir: Path, tmp_path: Path):
    """calib/*.json is tracked in git: a plain rtk quantize that reuses it leaves bytes, inode and
    mode alone (it rewrote it as 0600 with the model's new file name, and the checkout was dirty)."""
    source = tmp_path / "model.onnx"  # outputs go beside it
    source.write_bytes(artifacts["onnx"].read_bytes())
    common = ["--onnx", source, "--target", "cpu", "--no-verify", "--num-images", 64,
              "--data-dir", cifar_dir, "--calib-dir", tmp_path / "calib"]
    assert run("quantize", *common, "--out", tmp_path / "model.int8.cpu.percentile.onnx").exit_code == 0
    (manifest,) = (tmp_path / "calib").iterdir()
    os.chmod(manifest, 0o664)
    before = manifest.stat()
    result = run("quantize", *common)  # the default name this time, same model and ranges
    assert result.exit_code == 0, result.output
    after = manifest.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (before.st_ino, before.st_mtime_ns, before.st_mode)


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
        "train": ["train", "--depth", 8, "--iterations", 1, "--batch-size", 8, "--val-size", 0, "--device", "cpu",
                  "--out-dir", out / "run", "--data-dir", cifar_dir, "--no-progress"],
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


WRITERS = ["train", "export", "quantize", "quantize fp16", "deploy", "bench", "data download"]


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
    from rtk.errors import EXIT_CANNOT_RUN, MissingDependency

    assert click.UsageError.exit_code == MissingDependency.exit_code == EXIT_CANNOT_RUN  # one meaning of 2
    result = run(*args)
    assert isinstance(result.exception, SystemExit) and result.exit_code == code, result.output


def test_a_diverging_run_stops_with_one_error_and_keeps_the_last_good_checkpoint(tiny_cifar: Any, tmp_path: Path):
    """`--lr 1e8` drives the weights to NaN: no 'final model ... test 10.00%', no NaN checkpoint."""
    from rtk import train as train_stage

    good = train_stage.train(_cfg(tmp_path), show_progress=False)
    before = good.read_bytes()
    result = run("train", *RUN_ARGS, "--lr", "1e8", "--out-dir", tmp_path / "run", "--overwrite")
    fails_cleanly(result, r"training diverged by step \d+: the loss or the weights became NaN or infinity .*"
                          r"lower --lr")
    assert good.read_bytes() == before  # nothing saved over the good run
    assert "final model" not in result.output


def test_train_refuses_to_overwrite_a_run_without_resume_or_overwrite(tiny_cifar: Any, tmp_path: Path):
    from rtk import train as train_stage

    ckpt = train_stage.train(_cfg(tmp_path, iterations=3), show_progress=False)
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    before = ckpt.read_bytes()
    args = ["train", *RUN_ARGS, "--iterations", 3, "--out-dir", tmp_path / "run"]
    fails_cleanly(run(*args), r"holds a run .*--resume.*--overwrite")
    assert ckpt.read_bytes() == before and (tmp_path / "run" / "metrics.jsonl").read_text() == log
    assert run(*args, "--overwrite").exit_code == 0
    contradiction = run(*args, "--overwrite", "--resume")  # a usage error: click's format, exit 2
    assert contradiction.exit_code == 2 and "Error: --resume and --overwrite contradict" in contradiction.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present, so --device cuda is valid")
def test_a_missing_device_exits_2(tiny_cifar: Any, tmp_path: Path):
    fails_cleanly(run("train", "--depth", 8, "--device", "cuda", "--out-dir", tmp_path / "run"), "no CUDA device",
                  code=2)


def test_sigterm_stops_rtk_train_like_ctrl_c(cifar_dir: Path, tmp_path: Path):
    """A scheduler's SIGTERM to a real `rtk train`: checkpoint saved, one line, exit 143."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtk", "train", "--depth", "8", "--iterations", "100000", "--batch-size", "32",
         "--device", "cpu", "--out-dir", str(out), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "RTK_DATA_DIR": str(cifar_dir), "OMP_NUM_THREADS": "1"})
    assert proc.stderr is not None
    for line in proc.stderr:  # the first line says training has started
        if line.startswith("ResNet-8 on cpu"):
            break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "terminated (SIGTERM)"
    saved = checkpoint.read(out / "checkpoint.pt")
    assert saved["metrics"]["interrupted"] and saved["train_state"]["step"] >= 0


def test_a_busy_bench_reports_its_speed_targets_as_unreliable(bench_runs_dir: Path, cifar_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """A load average of 99 on this machine: the batch-1 latency target is unreliable, not met."""
    import rtk.bench

    monkeypatch.setattr(rtk.bench, "load_average", lambda: 99.0)
    result = run("bench", "--precision", "int8", "--runs-dir", bench_runs_dir, "--data-dir", cifar_dir,
                 "--batch-sizes", 1, "--warmup", 0, "--iterations", 3, "--threads", 1, "--no-accuracy",
                 "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["environment"]["busy"] is True and report["targets"]
    assert all(t["status"] == "unreliable" and not t["met"] for t in report["targets"])
    assert "UNRELIABLE" in result.stdout and "| met |" not in (tmp_path / "bench.md").read_text()


def test_signals_in_a_process_of_their_own(cifar_dir: Path):
    """tests/faults_signals.py (SIGINT and SIGTERM at four points of training, exact resume, a second
    signal, resume options, a damaged log) in a fresh interpreter: after the benchmark tests have
    run OpenVINO and onnxruntime in this process, a signal delivered to it crashed it (SIGSEGV)
    before Python's handler ran; a real `rtk train` process has none of those thread pools."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(Path(__file__).with_name("faults_signals.py"))],
                          capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO), "RTK_DATA_DIR": str(cifar_dir)})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
