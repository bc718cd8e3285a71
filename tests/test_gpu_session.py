"""scripts/ort_gpu_wheel.sh and scripts/gpu_session.sh, on the CPU: the wheel's parts travel and join
back into an installable wheel; with SMOKE=1 every part of the GPU session runs at tiny sizes (slow)."""

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

ROOT = Path(__file__).resolve().parents[1]
WHEEL_SCRIPT = ROOT / "scripts" / "ort_gpu_wheel.sh"


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


def wheel_script(*args: object, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(WHEEL_SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, check=False)


def test_wheel_parts_are_stashed_call_by_call_then_joined_and_installed(tmp_path):
    wheel = make_wheel(tmp_path)
    parts = tmp_path / ".ort-parts"
    split = wheel_script("split", wheel, parts, PART_SIZE="1K")
    assert split.returncode == 0, split.stderr
    folders = sorted(parts.iterdir(), key=lambda p: int(p.name))
    assert len(folders) == -(-wheel.stat().st_size // 1024) >= 3  # one folder per 1 KiB part
    for i, folder in enumerate(folders, 1):
        (part,) = folder.glob("*.part*")
        assert part.name == f"{wheel.name}.part{i}" and part.stat().st_size <= 1024
        assert (folder / "manifest").read_text().splitlines()[2] == f"parts={len(folders)}"
    assert b"".join(p.read_bytes() for f in folders for p in f.glob("*.part*")) == wheel.read_bytes()

    store, target = tmp_path / "store", tmp_path / "site"
    for folder in folders[:-1]:  # one call per part: each carries its own folder alone
        call = tmp_path / f"call{folder.name}" / ".ort-parts"
        call.mkdir(parents=True)
        os.symlink(folder, call / folder.name)
        assert wheel_script("stash", call, store).returncode == 0
    missing = wheel_script("install", store, target)
    assert missing.returncode == 1
    assert f"holds {len(folders) - 1} of the {len(folders)} parts" in missing.stderr and not target.exists()
    assert wheel_script("stash", parts, store).returncode == 0  # the last call
    installed = wheel_script("install", store, target)
    assert installed.returncode == 0, installed.stderr
    check = subprocess.run([sys.executable, "-c", "import rtk_smoke_wheel; print(rtk_smoke_wheel.VALUE)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)},
                           check=False)
    assert check.stdout.strip() == "42"


def test_a_corrupted_part_or_a_busy_folder_is_refused(tmp_path):
    wheel = make_wheel(tmp_path)
    parts, store = tmp_path / "parts", tmp_path / "store"
    assert wheel_script("split", wheel, parts, PART_SIZE="1K").returncode == 0
    assert wheel_script("stash", parts, store).returncode == 0
    part = next(store.glob("*.part2"))
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    corrupted = wheel_script("install", store, tmp_path / "site")
    assert corrupted.returncode == 1 and "sha256 differs" in corrupted.stderr
    refused = wheel_script("split", wheel, tmp_path, PART_SIZE="1K")  # tmp_path holds the wheel itself
    assert refused.returncode == 1 and "holds other things than wheel parts" in refused.stderr
    assert wheel.is_file()


def test_an_unknown_part_is_refused_before_any_part_runs(tmp_path):
    env = {**os.environ, "SMOKE": "1", "PARTS": "train tarin", "STATE": str(tmp_path / "state"),
           "RTK_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run(["bash", "scripts/gpu_session.sh", str(tmp_path / "out")], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=False)
    assert run.returncode == 2 and "error: unknown part tarin" in run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()


@pytest.mark.slow
def test_gpu_session_smoke_runs_every_part_on_the_cpu(tmp_path, cifar_dir):
    """SMOKE=1 scripts/gpu_session.sh: every part at tiny sizes on the CPU (12 minutes on the shared 2-core CPU)."""
    parts = tmp_path / "ort-parts"
    assert wheel_script("split", make_wheel(tmp_path), parts, PART_SIZE="1K").returncode == 0
    out, state = tmp_path / "out", tmp_path / "state"
    calib = sorted((ROOT / "calib").iterdir())
    env = {**os.environ, "SMOKE": "1", "STATE": str(state), "ORT_PARTS": str(parts), "RTK_DATA_DIR": str(cifar_dir),
           "CIFAR_PARTS": str(tmp_path / "none"), "RTK_COMMIT": "smoke-test"}
    run = subprocess.run(["bash", "scripts/gpu_session.sh", str(out)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=1500, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted((ROOT / "calib").iterdir()) == calib  # the tiny models' calibration stays in STATE
    assert sorted(p.name for p in out.iterdir()) == [
        f"{name}.tar.gz" for name in ("ort", "session", "step", "tests", "torch20", "torch56", "train")]
    steps = {}
    for archive in out.iterdir():
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "back", filter="data")
    for line in (tmp_path / "back/session/steps.tsv").read_text().splitlines():
        name, _limit, rc, _seconds, _command = line.split("\t")
        steps[name] = int(rc)
    assert steps == {"train8": 0, "train14": 0, "train20": 0, "ort_install": 0, "ort_check": 0,
                     "bench20_ort": 0, "bench20": 0, "bench56": 0, "bench_train": 0, "gpu_tests": 0}
    back = tmp_path / "back"
    assert "commit smoke-test" in (back / "session/env.txt").read_text()
    for depth in (8, 14, 20):
        assert (back / f"train/resnet{depth}.pt").is_file() and (back / f"train/resnet{depth}.metrics.jsonl").is_file()
    for bench in ("ort/bench20_ort", "torch20/bench20", "torch56/bench56"):
        assert (back / bench / "bench.json").is_file(), bench
