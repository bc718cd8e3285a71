import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rtk import checkpoint, data
from rtk import train as train_stage
from rtk.cli import main
from rtk.errors import RtkError
from rtk.train.trainer import seeded


def _cfg(tmp_path, **kw):
    base = {"depth": 8, "batch_size": 32, "lr": 0.05, "val_size": 100, "iterations": 24,
            "out_dir": str(tmp_path / "run"), "device": "cpu"}
    base.update(kw)
    return train_stage.TrainConfig(**base)


def test_lr_schedules():
    cfg = train_stage.TrainConfig(depth=20)
    assert [train_stage.lr_at(s, 64_000, cfg) for s in (0, 31_999, 32_000, 48_000)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001])
    deep = train_stage.TrainConfig(depth=110)
    assert train_stage.lr_at(399, 64_000, deep) == 0.01 and train_stage.lr_at(400, 64_000, deep) == 0.1
    cosine = train_stage.TrainConfig(schedule="cosine", lr=0.2)
    assert train_stage.lr_at(0, 100, cosine) == pytest.approx(0.2)
    assert train_stage.lr_at(50, 100, cosine) == pytest.approx(0.1)
    one = train_stage.TrainConfig(schedule="onecycle", lr=0.4)
    lrs = [train_stage.lr_at(s, 100, one) for s in range(100)]
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 20 and lrs[-1] < 0.01


def test_depth_110_holds_a_tenth_of_the_lr_for_the_papers_51200_images_in_every_recipe():
    fast = train_stage.recipe_defaults("fast")
    steps = 8700  # 100 epochs of batch 512
    deep = train_stage.TrainConfig(depth=110, **fast)
    shallow = train_stage.TrainConfig(depth=56, **fast)
    assert [train_stage.lr_at(s, steps, deep) for s in (0, 99)] == [0.04, 0.04]  # 100 steps x 512 = 400 x 128
    assert train_stage.lr_at(100, steps, deep) == train_stage.lr_at(100, steps, shallow) > 0.06
    assert train_stage.lr_at(50, steps, shallow) > 0.05  # shallower nets go on rising from the first step
    cosine = train_stage.TrainConfig(depth=1202, schedule="cosine", lr=0.2, batch_size=256)
    assert train_stage.lr_at(199, 1000, cosine) == pytest.approx(0.02) and train_stage.lr_at(200, 1000, cosine) > 0.18
    with pytest.raises(RtkError, match="unknown schedule"):
        train_stage.lr_at(0, 100, train_stage.TrainConfig(depth=110, schedule="linear"))


def test_run_writes_a_self_describing_checkpoint_log_and_plot(tiny_cifar, tmp_path):
    path = train_stage.train(_cfg(tmp_path), show_progress=False)
    model, ckpt = checkpoint.load(path)
    assert model.depth == 8
    assert ckpt["split"] == {"seed": 0, "val_size": 100}
    assert ckpt["recipe"]["batch_size"] == 32 and ckpt["recipe"]["schedule"] == "paper"
    metrics = ckpt["metrics"]
    assert metrics["step"] == 24 and 0 <= metrics["test_acc"] <= 100 and 0 <= metrics["val_acc"] <= 100
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if not r.get("final")] == [15, 24]  # 500 images / 32 = 15 steps per epoch
    assert records[-1]["final"] and records[-1]["test_acc"] == metrics["test_acc"]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_never_feeds_validation_images_to_training(tiny_cifar, tmp_path):
    trainer = train_stage.Trainer(_cfg(tmp_path))
    trainer.load_data()
    _, val_idx = data.split_indices(600, 100, 0)
    assert torch.equal(trainer.val_x, torch.from_numpy(tiny_cifar.train_images[val_idx]).permute(0, 3, 1, 2))
    assert len(trainer.train_y) == 500


def test_warm_up_leaves_weights_buffers_and_optimizer_state_as_they_were(tiny_cifar, tmp_path):
    trainer = train_stage.Trainer(_cfg(tmp_path))
    trainer.load_data()
    for step in range(2):  # momentum buffers exist, as after a resume
        trainer.train_step(trainer.train_x[:32], trainer.train_y[:32], 0.05, seeded(0, step))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    momentum = [trainer.optimizer.state[p]["momentum_buffer"].clone() for p in trainer.model.parameters()]
    rng = torch.get_rng_state()
    assert trainer.warm_up(steps=2) > 0
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats and counts included
    assert all(torch.equal(m, trainer.optimizer.state[p]["momentum_buffer"])
               for m, p in zip(momentum, trainer.model.parameters()))
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in trainer.model.parameters())


@pytest.mark.parametrize("device", [
    # Slow: inductor compiles the step for 45 s on the quiet 2-core CPU, over 3 minutes when it is shared.
    pytest.param("cpu", marks=pytest.mark.slow),
    # On CUDA the CUDA graphs replay on the weights the warm-up put back in place (scripts/gpu_session.sh part tests)
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="needs a CUDA GPU")])])
def test_compiled_training_follows_the_eager_loss_curve_and_states_its_compile_time(tiny_cifar, tmp_path,
                                                                                      monkeypatch, device):
    """--compile reduce-overhead (on the CPU inductor's C++ kernels, on CUDA its kernels in CUDA graphs): the same
    loss curve as eager within float noise, with the compile paid before the timed run and recorded apart."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold compile, kept in tmp
    runs = {}
    for mode in ("off", "reduce-overhead"):  # fp32 on both: bf16 autocast would make the noise its own
        train_stage.train(_cfg(tmp_path, compile=mode, iterations=30, out_dir=str(tmp_path / mode), device=device,
                               precision="fp32"), show_progress=False)
        runs[mode] = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    eager, compiled = runs["off"], runs["reduce-overhead"]
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == [15, 30, 30]
    for e, c in zip(eager[:-1], compiled[:-1]):
        # Inductor's sums in another order; measured: train loss within 3e-4, validation loss (BN running
        # statistics, eval mode) within 0.9% after 15 and 30 steps
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-3)
        assert c["val_loss"] == pytest.approx(e["val_loss"], rel=2e-2)
    assert eager[-1]["compile_seconds"] is None and compiled[-1]["compile_seconds"] > 0


# Interruptions (SIGINT, SIGTERM at several points) and exact resume: tests/test_faults.py.


def test_resume_errors(tiny_cifar, tmp_path):
    with pytest.raises(RtkError, match="no checkpoint to resume"):
        train_stage.train(_cfg(tmp_path), resume=True, show_progress=False)
    train_stage.train(_cfg(tmp_path), show_progress=False)
    with pytest.raises(RtkError, match="already finished"):
        train_stage.train(_cfg(tmp_path), resume=True, show_progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present, so --device cuda is valid")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(RtkError, match="no CUDA device"):
        train_stage.Trainer(_cfg(tmp_path, device="cuda"))


def test_unknown_recipe_and_indivisible_batch(tmp_path):
    with pytest.raises(RtkError, match="unknown recipe"):
        train_stage.recipe_defaults("slow")
    with pytest.raises(RtkError, match="must divide"):
        train_stage.Trainer(_cfg(tmp_path, batch_size=33), train_stage.Dist(rank=0, world=2))


def test_cli_train_help_and_recipe_override(tiny_cifar, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["train", "--help"]).exit_code == 0
    result = runner.invoke(main, ["train", "--depth", "8", "--recipe", "fast", "--iterations", "3",
                                  "--batch-size", "50", "--precision", "fp32", "--val-size", "100",
                                  "--out-dir", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    ckpt = checkpoint.read(tmp_path / "r" / "checkpoint.pt")
    # fast recipe's lr/schedule/weight decay, with the batch size and length overridden
    assert ckpt["recipe"]["schedule"] == "onecycle" and ckpt["recipe"]["weight_decay"] == 5e-4
    assert ckpt["recipe"]["batch_size"] == 50 and ckpt["metrics"]["step"] == 3


def test_real_data_training_loss_falls(cifar_dir, tmp_path):
    torch.manual_seed(0)
    trainer = train_stage.Trainer(_cfg(tmp_path, batch_size=64, data_dir=str(cifar_dir)))
    trainer.load_data()
    losses = []
    for step in range(40):
        idx = trainer.batch_indices(step)
        loss_sum, _ = trainer.train_step(trainer.train_x[idx], trainer.train_y[idx], 0.05,
                                         seeded(0, step))
        losses.append(loss_sum.item() / len(idx))
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.1, losses


def test_two_process_gloo_ddp_run(cifar_dir, tmp_path):
    """torchrun with 2 CPU processes: finishes, replicas stay identical, checkpoint loads."""
    env = {**os.environ, "RTK_DATA_DIR": str(cifar_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rtk", "train", "--nproc", "2", "--device", "cpu", "--depth", "8",
           "--iterations", "4", "--batch-size", "32", "--out-dir", str(tmp_path / "ddp"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(tmp_path / "ddp" / "checkpoint.pt")]  # rank 0 alone prints
    _, ckpt = checkpoint.load(Path(tmp_path / "ddp" / "checkpoint.pt"))
    sums = ckpt["metrics"]["param_checksums"]
    assert ckpt["metrics"]["processes"] == 2 and len(sums) == 2 and sums[0] == sums[1]
    assert not list((tmp_path / "ddp").glob(".*.tmp"))
