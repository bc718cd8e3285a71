"""rtk under hostile requests: outputs that are not regular files, sizes beyond rtk.limits' bounds,
ONNX weights outside the model's folder, a deleted working folder. Each fails before any work, with
one `error: ...` line (or click's usage error, exit 2) and no traceback, and leaves what was there.

Device nodes and FIFOs are made inside the test's temporary folder (the tests run as root: the
machine's own /dev is never touched).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import fails_cleanly, run
from faults_signals import RUN_ARGS

import rtk.runtime
from rtk import limits
from rtk.errors import RtkError

REPO = Path(__file__).resolve().parent.parent


def make_node(path: Path, kind: str) -> Path:
    """A FIFO, or a character device with /dev/null's numbers (1, 3), at `path` in a test folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


def still(path: Path, kind: str) -> bool:
    mode = os.lstat(path).st_mode
    return stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)


# ---------------------------------------------------------------------------------------------
# Outputs that are not regular files


@pytest.mark.parametrize("kind", ["fifo", "char device"])
@pytest.mark.parametrize("command", ["export", "quantize", "quantize fp16", "import --force"])
def test_an_output_that_is_a_device_or_fifo_is_refused_before_any_work(artifacts: dict[str, Path], tmp_path: Path,
                                                                       cifar_dir: Path, command: str, kind: str):
    """`rtk export --out /dev/null` exited 0 and, as root, put a regular file in place of /dev/null."""
    node = make_node(tmp_path / "out" / "model.bin", kind)
    args = {"export": ["export", "--checkpoint", artifacts["checkpoint"], "--no-verify"],
            "quantize": ["quantize", "--onnx", artifacts["onnx"], "--target", "cpu", "--no-verify",
                         "--num-images", 64, "--data-dir", cifar_dir, "--calib-dir", tmp_path / "calib"],
            "quantize fp16": ["quantize", "--onnx", artifacts["onnx"], "--fp16", "--no-verify"],
            "import --force": ["import", artifacts["checkpoint"], "--depth", 8, "--force"]}[command]
    what = "a FIFO" if kind == "fifo" else "a character device"
    fails_cleanly(run(*args, "--out", node), rf"cannot write {node}: it is {what}, not a regular file")
    assert still(node, kind) and sorted(p.name for p in node.parent.iterdir()) == ["model.bin"]
    assert not (tmp_path / "calib").exists()  # refused before calibrating


def test_every_other_writer_checks_its_outputs_first(artifacts: dict[str, Path], tmp_path: Path, cifar_dir: Path,
                                                     tiny_cifar: Any):
    """The files a command writes besides --out: train's metrics.jsonl (appended to: a FIFO blocked the
    run, and a new run unlinked whatever was there), bench's and compare's reports, deploy's config,
    the data folder a download renames into place."""
    cases = [
        (tmp_path / "run" / "metrics.jsonl", ["train", *RUN_ARGS, "--out-dir", tmp_path / "run"]),
        (tmp_path / "bench" / "bench.json", ["bench", "--depth", 8, "--checkpoint", artifacts["checkpoint"],
                                             "--runs-dir", tmp_path / "runs", "--out", tmp_path / "bench",
                                             "--data-dir", cifar_dir]),
        (tmp_path / "cmp" / "compare.png", ["compare", artifacts["onnx"], artifacts["onnx"], "--backend-b",
                                            "openvino", "--out", tmp_path / "cmp", "--data-dir", cifar_dir]),
        (tmp_path / "repo" / "resnet8_fp32_onnx" / "config.pbtxt", ["deploy", "triton", "--source",
                                                                    artifacts["onnx"], "--repo", tmp_path / "repo"]),
        (tmp_path / "dest" / "cifar-10-batches-py", ["data", "download", "--dest", tmp_path / "dest"]),
    ]
    for node, args in cases:
        make_node(node, "fifo")
        fails_cleanly(run(*args), rf"{node}.*(is a FIFO|not a folder)")
        assert still(node, "fifo") and sorted(p.name for p in node.parent.iterdir()) == [node.name], args
    assert not (tmp_path / "runs").exists()  # bench refused before exporting anything


def test_an_empty_output_path_is_a_usage_error(artifacts: dict[str, Path], tmp_path: Path):
    """`rtk quantize --out ''` ran the whole 10k-image verification, then "cannot write .: Device or
    resource busy"."""
    for args in (["quantize", "--onnx", artifacts["onnx"], "--target", "cpu"], ["export", "--no-verify"],
                 ["import", artifacts["checkpoint"], "--depth", 8]):
        result = run(*args, "--out", "")
        assert result.exit_code == 2 and "an empty path names nothing to write" in result.output, result.output


# ---------------------------------------------------------------------------------------------
# Sizes beyond rtk.limits


def test_threads_batch_sizes_and_image_counts_are_bounded_before_any_work(artifacts: dict[str, Path],
                                                                          tmp_path: Path):
    """`--threads 100000` segfaulted OpenVINO or started thousands of onnxruntime threads;
    `--batch-sizes 10000000` asked numpy for 28.6 GiB."""
    too_many = str(limits.max_threads() + 1)
    onnx_file = str(artifacts["onnx"])
    for args in (["bench", "--threads", "100000"], ["bench", "--threads", too_many],
                 ["compare", onnx_file, onnx_file, "--threads", too_many], ["bench", "--batch-sizes", "1,10000000"], ["export", "--fixed-batch", "1000000"],
                 ["build", "--precision", "fp32", "--max-batch", "100000"], ["deploy", "triton", "--max-batch", "100000"],
                 ["train", "--batch-size", "50000"], ["export", "--num-images", "20000"],
                 ["quantize", "--num-images", "50000"]):
        result = run(*args)
        assert result.exit_code == 2 and "Invalid value" in result.output and "Traceback" not in result.output, args
    with pytest.raises(RtkError, match=rf"threads must be an integer from 1 to {limits.max_threads()}"):
        rtk.runtime.load(artifacts["onnx"], threads=100_000)
    with rtk.runtime.load(artifacts["onnx"], backend="onnxruntime", threads=1) as model, \
            pytest.raises(RtkError, match="every batch size must be an integer from 1 to 16,384"):
        model.predict(np.zeros((2, 32, 32, 3), np.uint8), batch_sizes=(10_000_000,))
    for value in ("nan", "inf", "-1"):  # NaN compared false with every bound and passed it
        assert run("train", "--epochs", value).exit_code == 2
        assert run("bench", "--duration", value).exit_code == 2


def test_a_batch_larger_than_the_training_split_is_refused_before_the_run_folder(tiny_cifar: Any, tmp_path: Path):
    """600 tiny images, 500 held out: a batch of 200 cannot be drawn (a batch beyond the 45,000-image
    split was a ZeroDivisionError, and left an empty run folder)."""
    args = [arg if arg != 16 else 200 for arg in RUN_ARGS]
    fails_cleanly(run("train", *args, "--out-dir", tmp_path / "run"), r"--batch-size 200 is larger than the training "
                                                                      r"split \(100 images with --val-size 500\)")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Readers and the environment


def test_weights_outside_the_model_folder_are_one_error_line(artifacts: dict[str, Path], tmp_path: Path,
                                                             cifar_dir: Path):
    """onnx refuses external data outside the model's folder (never reading it) with a ValidationError,
    which came out of deploy, quantize and compare as a traceback."""
    import onnx

    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(onnx.load(artifacts["onnx"]), folder / "model.onnx", save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    onnx.save(model, folder / "model.onnx")
    message = "cannot read the weights of .*points outside the directory"
    fails_cleanly(run("deploy", "triton", "--source", folder / "model.onnx", "--repo", tmp_path / "repo"), message)
    fails_cleanly(run("quantize", "--onnx", folder / "model.onnx", "--target", "cpu", "--no-verify",
                      "--calib-dir", tmp_path / "calib", "--data-dir", cifar_dir), message)
    fails_cleanly(run("compare", artifacts["onnx"], folder / "model.onnx", "--images", 10, "--data-dir", cifar_dir,
                      "--out", tmp_path / "cmp"), message)
    assert not (tmp_path / "repo").exists() and not (tmp_path / "calib").exists()


def test_a_deleted_working_folder_is_one_line(tmp_path: Path):
    """From a deleted folder, torch's import ended in "Intel oneMKL FATAL ERROR: Cannot load
    libtorch_cpu.so" and exit 2."""
    script = f"mkdir gone && cd gone && rmdir ../gone && exec {sys.executable} -m rtk arch --depth 8"
    done = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr.strip() == ("error: the current folder no longer exists (it was deleted or moved away): "
                                   "cd into an existing folder and run rtk again")
