"""The weights rtk ships (rtk/weights/) and what ships with them: each found by the stages without
--checkpoint and described as it is (rtk info: how long it trained, the paper's figure beside its
own); their calibration manifests and tuned values (calib/) found wherever rtk runs, from the
checkout or from the package, and left byte for byte by a plain `rtk quantize`; the package list
that carries calib/ into a wheel, and (slow) a wheel installed and run from another folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run

import rtk.quantize
from rtk import checkpoint, describe, names, pipeline
from rtk.fileio import sha256_file
from rtk.names import TUNE_STEPS, shipped_calib_dir
from rtk.onnx_meta import read_metadata

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (20, 32, 44, 56)


def test_every_shipped_checkpoint_is_found_loads_and_carries_its_metrics_log():
    for depth in SHIPPED:
        path = pipeline.ensure_checkpoint(pipeline.run_paths(depth, "/nonexistent/runs"), log=lambda _: None)
        assert path == ROOT / "rtk" / "weights" / f"resnet{depth}.pt"
        model, ckpt = checkpoint.load(path)
        assert model.depth == depth and ckpt["metrics"]["test_acc"] > 92.0
        final = json.loads(path.with_suffix(".metrics.jsonl").read_text().splitlines()[-1])
        assert final["final"] and final["test_acc"] == ckpt["metrics"]["test_acc"]


def test_rtk_info_shows_how_long_a_checkpoint_trained_and_the_paper_beside_its_test_accuracy():
    rows = {key: value for section in describe.describe(ROOT / "rtk" / "weights" / "resnet44.pt")
            if section.title == "checkpoint" for key, value in section.rows}
    assert rows["trained"] == "60 epochs (recipe fast)"
    assert rows["test accuracy"] == "92.49%: -0.34 points against the paper's 92.83% (He et al. 2016, Table 6)"
    rows = dict(describe.describe(ROOT / "rtk" / "weights" / "resnet32.pt")[0].rows)
    assert rows["trained"] == "100 epochs (recipe fast)" and rows["test accuracy"].startswith("92.98%: +0.49 points")


def test_the_shipped_manifests_are_the_checkouts_calib_or_else_the_packages(tmp_path, monkeypatch):
    assert shipped_calib_dir() == ROOT / "calib"
    # an installed rtk: site-packages/rtk/calib, never a calib/ some other distribution put beside rtk/
    installed = tmp_path / "site-packages" / "rtk"
    (installed / "calib").mkdir(parents=True)
    (installed.parent / "calib").mkdir()
    monkeypatch.setattr(names, "__file__", str(installed / "names.py"))
    assert names.shipped_calib_dir() == installed / "calib"
    (installed / "calib").rmdir()
    assert names.shipped_calib_dir() is None
    checkout = tmp_path / "checkout"
    (checkout / "rtk").mkdir(parents=True)
    (checkout / "calib").mkdir()
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(names, "__file__", str(checkout / "rtk" / "names.py"))
    assert names.shipped_calib_dir() == checkout / "calib"


def test_the_package_list_holds_every_package_and_maps_calib_into_rtk():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli, tomllib's origin
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "rtk").rglob("__init__.py")}
    assert set(config["packages"]) == found | {"rtk.calib"}
    assert config["package-dir"] == {"rtk.calib": "calib"} and config["package-data"]["rtk.calib"] == ["*.json"]


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.json"))}


@pytest.mark.parametrize("depth", SHIPPED)
def test_a_plain_quantize_outside_the_checkout_reuses_the_shipped_manifest_and_leaves_it_byte_for_byte(
        depth, tmp_path, cifar_dir, monkeypatch):
    """From any folder: the shipped calibration and tuned values are found (no recalibration, no
    minutes of tuning), nothing is written into ./calib, and calib/ keeps its bytes: the INT8 files
    are the ones its records describe, whatever folder the manifest was read from."""
    monkeypatch.setattr(rtk.quantize, "TUNE_STEPS", TUNE_STEPS)  # the recipe the shipped values were tuned with
    monkeypatch.delenv("RTK_CALIB_DIR", raising=False)
    monkeypatch.setenv("RTK_DATA_DIR", str(cifar_dir.resolve()))
    monkeypatch.chdir(tmp_path)
    before = digests(ROOT / "calib")
    result = run("quantize", "--depth", depth, "--no-verify")
    assert result.exit_code == 0, result.output
    (manifest_path,) = (ROOT / "calib").glob(f"resnet{depth}-*-percentile-n1024-s0.json")
    assert f"reusing the calibration in {manifest_path}" in result.stderr
    assert "recalibrating" not in result.stderr and "tuning " not in result.stderr
    assert not (tmp_path / "calib").exists()
    assert digests(ROOT / "calib") == before
    manifest = json.loads(manifest_path.read_text())
    for target in ("tensorrt", "cpu"):
        written = tmp_path / "runs" / f"resnet{depth}" / f"model.int8.{target}.onnx"
        assert read_metadata(written)["calibration"]["manifest"] == manifest_path.name
        assert manifest["quantized"][target]["sha256"] == sha256_file(written)


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_carries_the_weights_and_manifests_and_writes_nothing_beside_them(
        tmp_path, cifar_dir):
    """`pip install .` (not editable) into a fresh virtualenv that borrows this one's packages (torch
    is not fetched again), then `rtk quantize` in another folder: the installed manifest is reused."""
    source = tmp_path / "source"  # a copy, so the in-tree build writes nothing into the checkout
    anywhere = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=lambda folder, names: {  # runs/ and build/ at the top only: rtk/build is code
        *anywhere(folder, names), *({"runs", "build"} & set(names) if Path(folder) == ROOT else set())})
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-cache-dir", "--no-deps", "--no-build-isolation",
                    "--no-index", source],
                   check=True)
    installed = Path(subprocess.run([python, "-c", "import rtk.names; print(rtk.names.shipped_calib_dir())"],
                                    check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip())
    assert installed == purelib / "rtk" / "calib" and digests(installed) == digests(ROOT / "calib")
    assert sorted(p.name for p in (purelib / "rtk" / "weights").glob("*.pt")) == [f"resnet{d}.pt" for d in SHIPPED]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RTK_CALIB_DIR", "RTK_RUNS_DIR", "PYTHONPATH")}
    result = subprocess.run([venv / "bin" / "rtk", "quantize", "--depth", "20", "--target", "cpu", "--no-verify",
                             "--data-dir", cifar_dir.resolve()], cwd=work, env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert f"reusing the calibration in {installed}" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["runs"] and digests(installed) == digests(ROOT / "calib")
