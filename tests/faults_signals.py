"""Interruptions of training: SIGINT and SIGTERM at several points, each resumed to the same bits
as an uninterrupted run; a second signal; the options a resume takes; a damaged log.

Run by tests/test_faults.py::test_signals_in_a_process_of_their_own in a fresh interpreter (see
there why), and directly with `python -m pytest tests/faults_signals.py`. The signals are real:
sent to this process's main thread at a chosen call, so Python's own handler path runs.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import fails_cleanly, run

from rtk import checkpoint
from rtk.errors import RtkError

# 100 training images (500 held out) in batches of 16: 6 steps an epoch, 10 steps in all (epochs
# end at steps 6 and 10), so a run takes about a second on an idle 2-core CPU.
RUN = {"depth": 8, "batch_size": 16, "lr": 0.05, "val_size": 500, "iterations": 10, "device": "cpu"}
RUN_ARGS = ["--depth", 8, "--batch-size", 16, "--lr", 0.05, "--val-size", 500, "--iterations", 10,
            "--device", "cpu", "--no-progress"]


def _cfg(root: Path, **overrides: Any) -> Any:
    from rtk import train as train_stage

    return train_stage.TrainConfig(**{**RUN, "out_dir": str(root / "run"), **overrides})


def _send(sig: int) -> None:
    """`sig` to this process's main thread, where Python runs its handlers. (os.kill lets the kernel
    pick any thread; after the benchmark tests that may be one of OpenVINO's worker threads, and
    the process then crashed with SIGSEGV before the handler ran.)"""
    signal.pthread_kill(threading.main_thread().ident or 0, sig)


def _signal_at(target: Any, name: str, sig: int, call: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send `sig` to this process when `target.name` is called for the `call`-th time (1-based),
    just before that call runs: the real signal path, as a user or a scheduler would."""
    real, calls = getattr(target, name), {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            _send(sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


def _full_state(path: Path) -> dict[str, Any]:
    ckpt = checkpoint.read(path)
    return {"state_dict": ckpt["state_dict"], "optimizer": ckpt["train_state"]["optimizer"],
            "step": ckpt["train_state"]["step"]}


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal to the bit, tensors included, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


INTERRUPTIONS = {
    # point: (object, method, call, signal); both signals at two points each
    "inside a step (after the forward pass moved the BN statistics)": ("torch.optim.SGD", "step", 4, signal.SIGINT),
    "between steps": ("Trainer", "batch_indices", 3, signal.SIGTERM),
    "during the epoch-end validation": ("Trainer", "evaluate", 1, signal.SIGTERM),
    "while the epoch checkpoint is written": ("checkpoint", "save", 1, signal.SIGINT),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The state of one uninterrupted run, the reference every interrupted one must reach."""
    from conftest import make_tiny_cifar

    from rtk import data
    from rtk import train as train_stage

    root = tmp_path_factory.mktemp("whole")
    fake = make_tiny_cifar(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_cifar10", lambda data_dir=None: fake)
        return _full_state(train_stage.train(_cfg(root), show_progress=False))


@pytest.mark.parametrize("point", list(INTERRUPTIONS))
def test_an_interrupted_run_resumes_to_the_same_bits(tiny_cifar: Any, uninterrupted: dict[str, Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, point: str):
    """The whole state dict (weights and BN buffers), the optimizer state and the step equal those
    of an uninterrupted run; the log has each epoch once."""
    from rtk import train as train_stage
    from rtk.signals import Terminated

    owner, method, call, sig = INTERRUPTIONS[point]
    target = {"torch.optim.SGD": torch.optim.SGD, "Trainer": train_stage.Trainer, "checkpoint": checkpoint}[owner]
    with monkeypatch.context() as patch:
        _signal_at(target, method, sig, call, patch)
        with pytest.raises(Terminated if sig == signal.SIGTERM else KeyboardInterrupt):
            train_stage.train(_cfg(tmp_path), show_progress=False)
    saved = checkpoint.read(tmp_path / "run" / "checkpoint.pt")
    assert saved["metrics"]["interrupted"] and 0 < saved["train_state"]["step"] < 10
    resumed = _full_state(train_stage.train(_cfg(tmp_path), resume=True, show_progress=False))
    _assert_same(uninterrupted, resumed)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [6, 10, 10]  # two epochs and the final line, none twice


def test_resume_takes_the_runs_options_and_refuses_others(tiny_cifar: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    from rtk import train as train_stage

    with monkeypatch.context() as patch:
        _signal_at(train_stage.Trainer, "batch_indices", signal.SIGINT, 3, patch)
        with pytest.raises(KeyboardInterrupt):
            train_stage.train(_cfg(tmp_path, lr=0.02, iterations=8), show_progress=False)
    out = tmp_path / "run"
    for extra, message in ((["--iterations", 40], "--iterations 40 differs from the run's 8"),
                           (["--batch-size", 8], "--batch-size 8 differs from the run's 16"),
                           (["--lr", 0.1, "--seed", 3], "--lr 0.1 differs from the run's 0.02; --seed 3 differs")):
        fails_cleanly(run("train", "--depth", 8, "--out-dir", out, "--resume", "--no-progress", *extra), message)
    # nothing but --resume (and where to run): the run's own options, to its end
    result = run("train", "--depth", 8, "--out-dir", out, "--resume", "--no-progress", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert checkpoint.read(out / "checkpoint.pt")["metrics"]["step"] == 8


def test_a_damaged_metrics_log_is_one_error_on_resume(tiny_cifar: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    from rtk import train as train_stage

    with monkeypatch.context() as patch:
        _signal_at(train_stage.Trainer, "batch_indices", signal.SIGINT, 8, patch)
        with pytest.raises(KeyboardInterrupt):
            train_stage.train(_cfg(tmp_path), show_progress=False)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1, "step": 6}\n{"epoch": 2, "st')  # cut mid-line
    with pytest.raises(RtkError, match=r"metrics.jsonl line 2 is not JSON"):
        train_stage.train(_cfg(tmp_path), resume=True, show_progress=False)


def test_a_second_signal_stops_at_once_and_keeps_the_last_epochs_checkpoint(tiny_cifar: Any, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    from rtk import train as train_stage

    real, calls = torch.optim.SGD.step, {"n": 0}

    def twice(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 8:  # inside step 8 of 10; the epoch of steps 1-6 is saved
            _send(signal.SIGINT)
            _send(signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", twice)
    with pytest.raises(KeyboardInterrupt):
        train_stage.train(_cfg(tmp_path), show_progress=False)
    saved = checkpoint.read(tmp_path / "run" / "checkpoint.pt")
    assert saved["train_state"]["step"] == 6 and "interrupted" not in saved["metrics"]
