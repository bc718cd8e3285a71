"""scripts/gpu_payload.sh and scripts/gpu_session.sh, on the CPU: the payload's parts travel call by call and
join back; work waits for all of them; with SMOKE=1 every part of the GPU session runs at tiny sizes, and a
stopped training run comes back resumable and is resumed in a fresh session (slow)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD_SCRIPT = ROOT / "scripts" / "gpu_payload.sh"


def make_wheel(folder: Path, payload_bytes: int = 3000) -> Path:
    """A pure-Python wheel, rtk_smoke_wheel 0.1, with `payload_bytes` of random data stored uncompressed."""
    files = {
        "rtk_smoke_wheel/__init__.py": b"VALUE = 42\n",
        "rtk_smoke_wheel/payload.bin": os.urandom(payload_bytes),
        "rtk_smoke_wheel-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: rtk-smoke-wheel\nVersion: 0.1\n",
        "rtk_smoke_wheel-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               b"Tag: py3-none-any\n",
    }
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()]
    files["rtk_smoke_wheel-0.1.dist-info/RECORD"] = ("\n".join([*record, "rtk_smoke_wheel-0.1.dist-info/RECORD,,"])
                                                     + "\n").encode()
    wheel = folder / "rtk_smoke_wheel-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def payload_script(*args: object, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PAYLOAD_SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, check=False)


def session(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/gpu_session.sh", str(out)], capture_output=True, text=True,
                          env={**os.environ, "SMOKE": "1", **env}, cwd=ROOT, timeout=1500, check=False)


def split_payload(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A payload of the dummy wheel and 5 kB of random bytes in parts of 2 KiB: (the source, the part folders)."""
    src = tmp_path / "src"
    (src / "wheels").mkdir(parents=True)
    make_wheel(src / "wheels")
    (src / "extra").mkdir()
    (src / "extra" / "blob.bin").write_bytes(os.urandom(5000))
    parts = tmp_path / ".payload"
    packed = payload_script("pack", parts, src, PART_SIZE="2K")
    assert packed.returncode == 0, packed.stderr
    return src, sorted(parts.iterdir(), key=lambda p: int(p.name))


def test_payload_parts_are_stashed_call_by_call_then_joined_and_unpacked(tmp_path):
    src, folders = split_payload(tmp_path)
    assert len(folders) >= 4
    for i, folder in enumerate(folders, 1):
        assert sorted(f.name for f in folder.iterdir()) == ["manifest", f"payload.tar.part{i}"]
        assert (folder / f"payload.tar.part{i}").stat().st_size <= 2048
        assert (folder / "manifest").read_text().splitlines()[1] == f"parts={len(folders)}"

    store, target = tmp_path / "store", tmp_path / "payload"
    for folder in folders[:-1]:  # one call per part: each carries its own folder alone
        call = tmp_path / f"call{folder.name}" / ".payload"
        call.mkdir(parents=True)
        os.symlink(folder, call / folder.name)
        assert payload_script("stash", call, store).returncode == 0
    missing = payload_script("unpack", store, target)
    assert missing.returncode == 3 and f"holds {len(folders) - 1} of the {len(folders)} payload parts" in missing.stderr
    assert not target.exists()
    assert payload_script("stash", tmp_path / ".payload", store).returncode == 0  # the last call (and all again)
    unpacked = payload_script("unpack", store, target)
    assert unpacked.returncode == 0, unpacked.stderr
    for path in src.rglob("*"):
        if path.is_file():
            assert (target / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert (target / ".complete").is_file()
    assert "unpacked already" in payload_script("unpack", store, target).stdout  # the next call's start


def test_a_corrupted_part_or_a_busy_folder_is_refused(tmp_path):
    split_payload(tmp_path)
    store = tmp_path / "store"
    assert payload_script("stash", tmp_path / ".payload", store).returncode == 0
    part = store / "payload.tar.part2"
    part.write_bytes(part.read_bytes()[:-1] + bytes([part.read_bytes()[-1] ^ 1]))
    corrupted = payload_script("unpack", store, tmp_path / "payload")
    assert corrupted.returncode == 1 and "sha256 differs" in corrupted.stderr
    assert not (tmp_path / "payload").exists()
    refused = payload_script("pack", tmp_path, tmp_path / "src", PART_SIZE="2K")  # tmp_path holds other things
    assert refused.returncode == 1 and "holds other things than payload parts" in refused.stderr
    assert (tmp_path / "src" / "wheels").is_dir()


def test_parts_leave_room_in_a_call_for_the_working_tree(tmp_path):
    """The device tool moves 64 MiB a call, tree included: a part is 64 MiB less the tree and 2 MiB."""
    split_payload(tmp_path)
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.split(b"\0")
    tree = sum((ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).exists())
    packed = payload_script("pack", tmp_path / "default", tmp_path / "src")
    assert packed.returncode == 0, packed.stderr
    assert f"1 parts of at most {64 * 2**20 - tree - 2 * 2**20} bytes (working tree: {tree} bytes)" in packed.stdout


def test_an_unknown_part_is_refused_before_any_part_runs(tmp_path):
    run = session(tmp_path / "out", PARTS="train tarin", STATE=str(tmp_path / "state"))
    assert run.returncode == 2 and "error: unknown part tarin" in run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()


def test_work_waits_for_every_payload_part(tmp_path):
    _, folders = split_payload(tmp_path)
    first = tmp_path / "call1"
    first.mkdir()
    os.symlink(folders[0], first / "1")
    env = {"STATE": str(tmp_path / "state"), "PAYLOAD_PARTS": str(first)}
    carried = session(tmp_path / "out1", PARTS="none", **env)
    assert carried.returncode == 0 and f"holds 1 of the {len(folders)} payload parts" in carried.stderr
    early = session(tmp_path / "out2", PARTS="ort train", **{**env, "PAYLOAD_PARTS": str(tmp_path / "none")})
    assert early.returncode == 2 and "error: the payload is not all here" in early.stderr
    assert not (tmp_path / "state" / "ort-site").exists() and not (tmp_path / "out2" / "session" / "steps.tsv").exists()


@pytest.mark.slow
def test_gpu_session_smoke_runs_every_part_on_the_cpu(tmp_path, cifar_dir):
    """SMOKE=1 scripts/gpu_session.sh: every part at tiny sizes on the CPU, the payload carried in two calls
    (5 minutes on the shared 2-core CPU)."""
    _, folders = split_payload(tmp_path)
    calls = [tmp_path / "call1", tmp_path / "call2"]
    for call, carried in zip(calls, (folders[:-1], folders[-1:])):
        call.mkdir()
        for folder in carried:
            os.symlink(folder, call / folder.name)
    out, state = tmp_path / "out", tmp_path / "state"
    calib = sorted((ROOT / "calib").iterdir())
    env = {"STATE": str(state), "RTK_DATA_DIR": str(cifar_dir), "RTK_COMMIT": "smoke-test"}
    assert session(tmp_path / "out0", PARTS="none", PAYLOAD_PARTS=str(calls[0]), **env).returncode == 0
    run = session(out, PAYLOAD_PARTS=str(calls[1]), **env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted((ROOT / "calib").iterdir()) == calib  # the tiny models' calibration stays in STATE
    assert sorted(p.name for p in out.iterdir()) == [
        f"{name}.tar.gz" for name in ("compile", "ort", "session", "step", "tests", "torch20", "torch56", "train")]
    for archive in out.iterdir():
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "back", filter="data")
    back = tmp_path / "back"
    steps = {}
    for line in (back / "session/steps.tsv").read_text().splitlines():
        name, _limit, rc, _seconds, _command = line.split("\t")
        steps[name] = int(rc)
    assert steps == {"ort_install": 0, "ort_check": 0, "bench20_ort": 0, "train8": 0, "train14": 0,
                     "train8-compiled": 0, "bench20": 0, "bench56": 0, "bench_train": 0, "gpu_tests": 0}
    assert "commit smoke-test" in (back / "session/env.txt").read_text()
    for name in ("train/resnet8", "train/resnet14", "compile/resnet8-compiled"):
        ckpt = torch.load(back / f"{name}.pt", weights_only=True)
        assert "train_state" not in ckpt and "test_acc" in ckpt["metrics"]
        assert (back / f"{name}.metrics.jsonl").is_file()
    assert ckpt["metrics"]["compile_seconds"] > 0 and ckpt["recipe"]["compile"] == "reduce-overhead"
    assert "max |device - cpu|" in (back / "ort/ort_check.log").read_text()
    for bench in ("ort/bench20_ort", "torch20/bench20", "torch56/bench56"):
        assert (back / bench / "bench.json").is_file(), bench


STOP_AT_STEP_2 = """
import signal, sys
from rtk.cli import main
from rtk.train import Trainer
real, calls = Trainer.batch_indices, []
def stopping(self, step):
    calls.append(step)
    if len(calls) == 2:  # a SIGTERM (as `timeout` sends it) in step 1: saved after it, at step 2
        signal.raise_signal(signal.SIGTERM)
    return real(self, step)
Trainer.batch_indices = stopping
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_stopped_run_comes_back_resumable_and_a_later_lease_resumes_it(tmp_path, cifar_dir):
    """The train part's checkpoint of a stopped run comes back as OUT/resnet8.resume.pt; carried into a
    fresh machine (another STATE) it is resumed and finished; a finished run is not trained again."""
    args = ["train", "--depth", "8", "--recipe", "fast", "--device", "cpu", "--iterations", "3", "--batch-size",
            "32", "--out-dir", str(tmp_path / "state1/runs/resnet8"), "--no-progress"]
    env = {**os.environ, "RTK_DATA_DIR": str(cifar_dir), "PYTHONPATH": str(ROOT)}
    stopped = subprocess.run([sys.executable, "-c", STOP_AT_STEP_2, *args], env=env, capture_output=True,
                             text=True, check=False)
    assert stopped.returncode == 143, stopped.stderr
    common = {"PARTS": "train", "DEPTHS": "8", "ITERATIONS": "3", "RTK_DATA_DIR": str(cifar_dir)}
    # This machine, its state kept: another length is refused by rtk, so the run stays stopped and comes back
    refused = session(tmp_path / "out1", STATE=str(tmp_path / "state1"), **{**common, "ITERATIONS": "4"})
    assert refused.returncode == 0 and "stopped before its end" in refused.stdout
    with tarfile.open(tmp_path / "out1/train.tar.gz") as tar:
        assert b"--iterations 4 differs from the run's 3" in tar.extractfile("train/train8.log").read()
    resumable = tmp_path / "out1" / "resnet8.resume.pt"
    assert "train_state" in torch.load(resumable, weights_only=True)
    carried = tmp_path / ".resume"
    carried.mkdir()
    (carried / "resnet8.resume.pt").write_bytes(resumable.read_bytes())
    # A later lease: a fresh machine, the stopped run carried in
    later = {**common, "STATE": str(tmp_path / "state2"), "RESUME_DIR": str(carried)}
    resumed = session(tmp_path / "out2", **later)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with tarfile.open(tmp_path / "out2/train.tar.gz") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    assert "resuming at step 2" in (tmp_path / "back/train/train8.log").read_text()
    assert torch.load(tmp_path / "back/train/resnet8.pt", weights_only=True)["metrics"]["step"] == 3
    assert not (tmp_path / "out2" / "resnet8.resume.pt").exists()
    again = session(tmp_path / "out3", **later)
    assert "finished in an earlier call" in again.stdout and not (tmp_path / "out3/session/steps.tsv").exists()
