"""rtk.data and `rtk data`: safe loading, checks, download, split, calibration sample, augmentation."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FAKE_IMAGES_PER_BATCH, dump_py2, write_batch, write_fake_cifar

from rtk import augment, data
from rtk.cli import main
from rtk.errors import RtkError
from rtk.fileio import owned_temp_dir
from rtk.preprocess import normalization_metadata, normalize_uint8_nhwc

# ---------------------------------------------------------------------------------------------
# Loading the fake data set (same pickle format as the real one, 20 images per batch)


def test_fake_set_loads_as_written(fake_cifar_dir: Path) -> None:
    cifar = data.load_cifar10(fake_cifar_dir)
    n = FAKE_IMAGES_PER_BATCH
    assert cifar.train_images.shape == (5 * n, 32, 32, 3) and cifar.train_images.dtype == np.uint8
    assert cifar.train_labels.shape == (5 * n,) and cifar.train_labels.dtype == np.int64
    assert cifar.test_images.shape == (n, 32, 32, 3) and cifar.test_labels.shape == (n,)
    assert cifar.root == fake_cifar_dir
    # Rewriting batch 2 with known NHWC images must give those pixels back (planar <-> NHWC).
    images = np.arange(n * 3072, dtype=np.int64).reshape(n, 32, 32, 3).astype(np.uint8)
    labels = np.arange(n) % 10
    write_batch(fake_cifar_dir / "data_batch_2", images, labels)
    reloaded = data.load_cifar10(fake_cifar_dir)
    np.testing.assert_array_equal(reloaded.train_images[n:2 * n], images)
    np.testing.assert_array_equal(reloaded.train_labels[n:2 * n], labels)
    assert reloaded.checksum() != cifar.checksum()
    test_images, test_labels = data.load_test_set(fake_cifar_dir)
    np.testing.assert_array_equal(test_images, cifar.test_images)
    np.testing.assert_array_equal(test_labels, cifar.test_labels)


def test_real_counts_are_enforced_by_default(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path)  # 20 images per batch, IMAGES_PER_BATCH left at 10000
    with pytest.raises(RtkError, match=r"data_batch_1: 'data' is uint8 \(20, 3072\), expected uint8 \(10000, 3072\)"):
        data.load_cifar10(folder)


# ---------------------------------------------------------------------------------------------
# Finding the data


def test_resolve_accepts_folder_parent_env_and_cache(fake_cifar_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.resolve_data_dir(fake_cifar_dir) == fake_cifar_dir
    assert data.resolve_data_dir(str(fake_cifar_dir.parent)) == fake_cifar_dir
    monkeypatch.setenv("RTK_DATA_DIR", str(fake_cifar_dir.parent))
    assert data.resolve_data_dir(None) == fake_cifar_dir
    monkeypatch.delenv("RTK_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = write_fake_cifar(tmp_path / "cache" / "rtk")
    assert data.resolve_data_dir(None) == cached


def test_missing_data_says_where_it_looked_and_how_to_fix(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(RtkError) as info:
        data.resolve_data_dir(None)
    message = str(info.value)
    assert str(tmp_path / "cache" / "rtk") in message
    assert "rtk data download" in message and "RTK_DATA_DIR" in message
    with pytest.raises(RtkError, match="nowhere"):
        data.load_cifar10(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("not an archive")
    with pytest.raises(RtkError, match="notes.txt is a file but not a tar archive"):
        data.load_cifar10(tmp_path / "notes.txt")


def test_missing_batch_is_named(fake_cifar_dir: Path) -> None:
    (fake_cifar_dir / "data_batch_4").unlink()
    with pytest.raises(RtkError, match="data_batch_4 is missing"):
        data.load_cifar10(fake_cifar_dir)


def _tar_of(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A .tar.gz of `folder` as cifar-10-batches-py/..., plus `extra` members (name -> content)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=data.FOLDER_NAME)
        for name, content in (extra or {}).items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return archive


def test_tar_gz_is_extracted_into_the_cache_once(fake_cifar_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = _tar_of(fake_cifar_dir, tmp_path / "cifar-10-python.tar.gz",
                      extra={"../escaped": b"x", f"{data.FOLDER_NAME}/../../escaped2": b"x"})
    folder = data.resolve_data_dir(archive)
    assert folder.is_relative_to(tmp_path / "cache" / "rtk")
    np.testing.assert_array_equal(data.load_cifar10(archive).train_images,
                                  data.load_cifar10(fake_cifar_dir).train_images)
    first_mtime = (folder / "test_batch").stat().st_mtime_ns
    assert data.resolve_data_dir(archive) == folder
    assert (folder / "test_batch").stat().st_mtime_ns == first_mtime  # not extracted again
    # Members outside cifar-10-batches-py/<batch> are never written, and no temporary is left.
    assert not list(tmp_path.rglob("escaped*"))
    assert sorted(p.name for p in folder.parent.iterdir()) == [data.FOLDER_NAME]


def test_archive_with_a_link_instead_of_a_batch_is_refused(fake_cifar_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (fake_cifar_dir / "test_batch").unlink()
    (fake_cifar_dir / "test_batch").symlink_to("/etc/passwd")
    archive = _tar_of(fake_cifar_dir, tmp_path / "linked.tar.gz")
    with pytest.raises(RtkError, match="no regular file cifar-10-batches-py/test_batch"):
        data.resolve_data_dir(archive)
    assert not list((tmp_path / "cache").rglob("test_batch"))


def test_a_tar_bomb_is_refused_before_inflating_and_nothing_is_kept(fake_cifar_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A member declaring far more bytes than any CIFAR-10 file holds (a 154 MB archive's data_batch_1
    inflated to 3 GiB, kept in the cache): refused from its header, and the cache stays as it was."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (fake_cifar_dir / "data_batch_1").write_bytes(bytes(4 << 20))  # 4 MiB of zeros, a few KB deflated
    archive = _tar_of(fake_cifar_dir, tmp_path / "bomb.tar.gz")
    written: list[str] = []
    real_extract = tarfile.TarFile.extract
    monkeypatch.setattr(tarfile.TarFile, "extract", lambda self, member, *a, **k: written.append(
        getattr(member, "name", member)) or real_extract(self, member, *a, **k))
    result = CliRunner().invoke(main, ["data", "verify", "--data-dir", str(archive)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "declares 4,194,304 bytes, more than any CIFAR-10 file holds" in result.stderr, result.output
    assert f"{data.FOLDER_NAME}/data_batch_1" not in written
    assert not (tmp_path / "cache").exists()  # no extraction, no empty extracted/<key>/ folders


def test_an_extraction_that_does_not_load_is_not_kept(fake_cifar_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged batch inside the archive: refused at extraction, not kept for every later run to fail on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _truncate(fake_cifar_dir / "data_batch_2")
    archive = _tar_of(fake_cifar_dir, tmp_path / "damaged.tar.gz")
    for _ in range(2):  # the second run finds nothing kept and refuses again, with the reason
        with pytest.raises(RtkError, match="data_batch_2 is corrupt or truncated"):
            data.resolve_data_dir(archive)
        assert not (tmp_path / "cache").exists()


def test_members_under_dot_slash_are_taken(fake_cifar_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`tar czf x.tar.gz ./cifar-10-batches-py` (a common re-pack) names members ./cifar-10-batches-py/..."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = tmp_path / "repacked.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fake_cifar_dir, arcname=f"./{data.FOLDER_NAME}")
    assert data.load_cifar10(archive).checksum() == data.load_cifar10(fake_cifar_dir).checksum()


# ---------------------------------------------------------------------------------------------
# Refused and damaged files


class _Payload:
    """Pickles to `func(*args)`: what a malicious batch would run on load."""

    def __init__(self, func: object, *args: object):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


# Protocol 2 names builtins "__builtin__", as a Python 2 file would.
@pytest.mark.parametrize("make_payload, refused", [
    (lambda marker: _Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    (lambda marker: _Payload(exec, f"open({str(marker)!r}, 'w').close()"), "__builtin__.exec"),
])
def test_malicious_pickle_is_refused_before_it_runs(fake_cifar_dir: Path, tmp_path: Path,
                                                    make_payload, refused: str) -> None:
    marker = tmp_path / "pwned"
    # A plausible batch whose labels entry carries the payload, after valid pixel data.
    batch = {b"data": np.zeros((FAKE_IMAGES_PER_BATCH, 3072), np.uint8), b"labels": make_payload(marker)}
    path = dump_py2(batch, fake_cifar_dir / "data_batch_3")
    # Sanity: plain pickle runs the payload (so this test can fail); undo its effect.
    pickle.loads(path.read_bytes(), encoding="bytes")
    assert marker.exists()
    marker.unlink()

    with pytest.raises(RtkError) as info:
        data.load_cifar10(fake_cifar_dir)
    assert str(path) in str(info.value) and refused in str(info.value)
    assert not marker.exists()


def test_python3_pickle_needing_codecs_is_refused(fake_cifar_dir: Path) -> None:
    # Python 3 protocol 2 writes bytes through _codecs.encode: not part of the CIFAR format.
    path = fake_cifar_dir / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((FAKE_IMAGES_PER_BATCH, 3072), np.uint8),
                                   "labels": [0] * FAKE_IMAGES_PER_BATCH}, protocol=2))
    with pytest.raises(RtkError, match="_codecs.encode"):
        data.load_test_set(fake_cifar_dir)


def test_str_keys_and_protocol_4_arrays_load(fake_cifar_dir: Path) -> None:
    images = np.full((FAKE_IMAGES_PER_BATCH, 3072), 7, np.uint8)
    (fake_cifar_dir / "test_batch").write_bytes(
        pickle.dumps({"data": images, "labels": list(range(10)) * 2}, protocol=4))
    test_images, test_labels = data.load_test_set(fake_cifar_dir)
    assert (test_images == 7).all() and test_labels.tolist() == list(range(10)) * 2


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (_truncate, "corrupt or truncated"),
    (lambda path: path.write_bytes(b"\x80\x02garbage" * 100), "corrupt or truncated"),
    (lambda path: path.write_bytes(b""), "corrupt or truncated"),
    (lambda path: path.write_bytes(pickle.dumps([1, 2, 3], protocol=2)), "holds a list, not a dict"),
    (lambda path: path.write_bytes(pickle.dumps({"data": 1}, protocol=2)), "no 'data' and 'labels'"),
    (lambda path: dump_py2({b"data": 1, b"labels": [[1], [2, 3]]}, path), "'labels' is not a list of integers"),
    (lambda path: write_batch(path, np.zeros((10, 32, 32, 3), np.uint8), np.zeros(10)),
     r"'data' is uint8 \(10, 3072\), expected uint8 \(20, 3072\)"),
    (lambda path: write_batch(path, np.zeros((20, 32, 32, 3), np.uint8), np.full(20, 10)),
     r"labels range over 10..10, expected 0..9"),
    (lambda path: write_batch(path, np.zeros((20, 32, 32, 3), np.uint8), np.full(20, -1)),
     r"labels range over -1..-1"),
])
def test_damaged_batch_gives_a_clear_error(fake_cifar_dir: Path, damage, message: str) -> None:
    path = fake_cifar_dir / "data_batch_5"
    damage(path)
    with pytest.raises(RtkError, match=message) as info:
        data.load_cifar10(fake_cifar_dir)
    assert str(path) in str(info.value)


def test_non_uint8_data_is_refused(fake_cifar_dir: Path) -> None:
    path = fake_cifar_dir / "test_batch"
    with open(path, "wb") as f:
        pickle.Pickler(f, protocol=4).dump({"data": np.zeros((20, 3072), np.float32), "labels": [0] * 20})
    with pytest.raises(RtkError, match=r"'data' is float32 \(20, 3072\), expected uint8"):
        data.load_test_set(fake_cifar_dir)


# ---------------------------------------------------------------------------------------------
# Download from a local server


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` {path: bytes}; /short claims more bytes than it sends."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str] | None] = None  # paths asked for, where a test counts them

    def do_GET(self) -> None:
        if self.requests is not None:
            self.requests.append(self.path)
        content = self.files.get(self.path)
        if content is None:
            self.send_error(404)
            return
        self.send_response(200)
        claimed = len(content) * 2 if self.path == "/short" else len(content)
        self.send_header("Content-Length", str(claimed))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def _serve(files: dict[str, bytes], requests: list[str] | None = None) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"files": files, "requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def fake_archive(fake_cifar_dir: Path, tmp_path: Path) -> bytes:
    return _tar_of(fake_cifar_dir, tmp_path / "served.tar.gz").read_bytes()


def test_download_checks_md5_extracts_and_loads(fake_cifar_dir: Path, fake_archive: bytes,
                                                tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with _serve({"/cifar.tar.gz": fake_archive}) as base:
        folder = data.download(f"{base}/cifar.tar.gz", dest, hashlib.md5(fake_archive).hexdigest())
        assert folder == dest / data.FOLDER_NAME
        assert sorted(p.name for p in dest.iterdir()) == [data.FOLDER_NAME]  # no archive, no temporary
        assert data.load_cifar10(dest).checksum() == data.load_cifar10(fake_cifar_dir).checksum()
        # Present already: returned without fetching (this URL would fail).
        assert data.download(f"{base}/absent", dest) == folder


@pytest.mark.parametrize("path, md5, message", [
    ("/cifar.tar.gz", "0" * 32, "has md5 .*, expected 0{32}"),
    ("/absent", None, "HTTP 404"),
    ("/short", None, "stopped after|IncompleteRead"),
])
def test_failed_download_leaves_nothing(fake_archive: bytes, tmp_path: Path, path: str,
                                        md5: str | None, message: str) -> None:
    dest = tmp_path / "dest"
    with _serve({"/cifar.tar.gz": fake_archive, "/short": fake_archive}) as base, \
            pytest.raises(RtkError, match=message):
        data.download(base + path, dest, md5 or hashlib.md5(fake_archive).hexdigest())
    assert not dest.exists()  # not even the folder made for it (it was left empty)
    dest.mkdir()  # a folder that was there stays, empty
    with _serve({}) as base, pytest.raises(RtkError, match="HTTP 404"):
        data.download(base + "/absent", dest)
    assert list(dest.iterdir()) == []


def test_download_removes_the_temporary_folders_of_killed_processes(fake_archive: bytes, tmp_path: Path) -> None:
    """SIGKILL runs no clean-up: the next download removes the folders such processes left, and
    keeps the folder of a process still running (another DDP rank) and one with no lock file."""
    dest = tmp_path / "dest"
    dest.mkdir()
    for prefix in (".rtk-download-", ".rtk-extract-"):  # a download killed while fetching, one while extracting
        killed = subprocess.run([sys.executable, "-c", (
            "import os, signal, sys\n"
            "from rtk.fileio import owned_temp_dir\n"
            f"with owned_temp_dir({prefix!r}, sys.argv[1]) as tmp:\n"
            "    (tmp / 'cifar-10-python.tar.gz').write_bytes(b'half an archive')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(dest)], check=False)
        assert killed.returncode == -signal.SIGKILL
    (dest / ".rtk-download-no-lock").mkdir()
    assert len(list(dest.iterdir())) == 3
    with owned_temp_dir(".rtk-download-", dest) as running, _serve({"/cifar.tar.gz": fake_archive}) as base:
        data.download(f"{base}/cifar.tar.gz", dest, hashlib.md5(fake_archive).hexdigest())
        assert sorted(p.name for p in dest.iterdir()) == sorted([".rtk-download-no-lock", running.name, data.FOLDER_NAME])


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with _serve({}) as base:
        pass  # the port is closed again
    with pytest.raises(RtkError, match=f"cannot download {base}/x"):
        data.download(f"{base}/x", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_interrupted_download_leaves_nothing(fake_archive: bytes, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    class InterruptedResponse(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": str(len(fake_archive))}

        def read(self, size: int = -1) -> bytes:
            if self.tell():  # Ctrl-C after the first chunk has been written
                raise KeyboardInterrupt
            return super().read(size)

    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda url, timeout: InterruptedResponse(fake_archive))
    dest = tmp_path / "dest"
    with pytest.raises(KeyboardInterrupt):
        data.download("http://127.0.0.1:9/cifar.tar.gz", dest)
    assert not dest.exists()


def test_cli_download_with_url_from_env(fake_cifar_dir: Path, fake_archive: bytes, tmp_path: Path) -> None:
    with _serve({"/c.tar.gz": fake_archive}) as base:
        result = CliRunner().invoke(
            main, ["data", "download", "--md5", hashlib.md5(fake_archive).hexdigest(),
                   "--dest", str(tmp_path / "d")], env={"RTK_CIFAR_URL": f"{base}/c.tar.gz"})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "d" / data.FOLDER_NAME)
    result = CliRunner().invoke(main, ["data", "download", "--url", "http://127.0.0.1:9/x",
                                       "--dest", str(tmp_path / "e")])
    assert result.exit_code == 1 and "error: cannot download http://127.0.0.1:9/x" in result.output


# ---------------------------------------------------------------------------------------------
# Split and calibration sample


def test_split_is_seeded_disjoint_and_complete() -> None:
    train, val = data.split_indices()
    assert (len(train), len(val)) == (45_000, 5_000)
    assert train.dtype == val.dtype == np.int64
    assert not np.intersect1d(train, val).size
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(50_000))
    again_train, again_val = data.split_indices(50_000, 5_000, seed=0)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    assert not np.array_equal(val, data.split_indices(seed=1)[1])


def test_val_size_zero_trains_on_everything() -> None:
    train, val = data.split_indices(val_size=0)
    np.testing.assert_array_equal(train, np.arange(50_000))
    assert val.shape == (0,) and val.dtype == np.int64
    with pytest.raises(RtkError, match="validation size"):
        data.split_indices(val_size=50_000)


def test_calibration_sample_is_balanced_and_from_the_training_split() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 50_000)
    train, val = data.split_indices(seed=3)
    picked = data.calibration_indices(labels, train, num_images=1024, seed=0)
    assert picked.dtype == np.int64 and len(picked) == len(np.unique(picked)) == 1024
    assert np.isin(picked, train).all() and not np.isin(picked, val).any()
    counts = np.bincount(labels[picked], minlength=10)
    assert counts.min() == 102 and counts.max() == 103
    np.testing.assert_array_equal(picked, data.calibration_indices(labels, train, 1024, seed=0))
    assert not np.array_equal(picked, data.calibration_indices(labels, train, 1024, seed=1))
    with pytest.raises(RtkError, match="calibration images of class"):
        data.calibration_indices(labels, train[:100], num_images=500)


# ---------------------------------------------------------------------------------------------
# Augmentation and normalization


def _position_image() -> np.ndarray:
    """uint8 [3, 32, 32] whose every crop and flip differs: R = row + 1, G = column + 1 (0 is padding)."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32))
    return np.stack([rows + 1, cols + 1, noise]).astype(np.uint8)


def _reference_crops(image: np.ndarray) -> dict[bytes, tuple[int, int, bool]]:
    """Every augmentation of `image`, one image at a time: bytes -> (dy, dx, flipped)."""
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
    crops = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            for flipped in (False, True):
                crops[np.ascontiguousarray(crop[:, :, ::-1] if flipped else crop).tobytes()] = (dy, dx, flipped)
    return crops


def test_augment_crops_and_flips_each_image_independently() -> None:
    image = _position_image()
    batch = torch.from_numpy(image).expand(2000, 3, 32, 32).contiguous()
    out = augment.augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == (2000, 3, 32, 32) and out.dtype == torch.uint8
    crops = _reference_crops(image)
    assert len(crops) == 162
    seen = [crops.get(np.ascontiguousarray(x).tobytes()) for x in out.numpy()]
    assert None not in seen  # every output is exactly one padded crop (flipped or not)
    dys, dxs, flips = zip(*seen)
    assert set(dys) == set(dxs) == set(range(9))
    assert 0.4 < np.mean(flips) < 0.6
    assert len(set(seen)) > 150  # offsets and flips are drawn per image, not per batch


def test_augment_is_deterministic_per_generator_seed() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    first = augment.augment(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment.augment(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augment.augment(images, torch.Generator().manual_seed(8)))
    assert augment.augment(images).shape == images.shape  # torch's default generator


def test_normalize_matches_the_runtime_preprocessing() -> None:
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    normalized = augment.normalize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    assert normalized.dtype == torch.float32 and normalized.shape == (16, 3, 32, 32)
    np.testing.assert_array_equal(normalized.numpy(), normalize_uint8_nhwc(images))
    other = normalization_metadata(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))  # weights trained elsewhere
    np.testing.assert_array_equal(augment.normalize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), other)
                                  .numpy(), normalize_uint8_nhwc(images, other))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_on_cuda_equals_cpu_for_a_cpu_generator() -> None:
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    on_cpu = augment.augment(images, torch.Generator().manual_seed(0))
    on_cuda = augment.augment(images.cuda(), torch.Generator().manual_seed(0))
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cuda.cpu(), on_cpu)
    assert torch.equal(augment.normalize(on_cuda).cpu(), augment.normalize(on_cpu))


# ---------------------------------------------------------------------------------------------
# The real data set and `rtk data verify`


def test_real_cifar10_has_the_documented_content(cifar10: data.Cifar10) -> None:
    assert cifar10.train_images.shape == (50_000, 32, 32, 3) and cifar10.train_images.dtype == np.uint8
    assert cifar10.test_images.shape == (10_000, 32, 32, 3) and cifar10.test_images.dtype == np.uint8
    assert cifar10.train_labels.shape == (50_000,) and cifar10.test_labels.shape == (10_000,)
    assert cifar10.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert cifar10.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.bincount(cifar10.train_labels[:10_000]).tolist() == [
        1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    mean = cifar10.train_images.reshape(-1, 3).sum(axis=0, dtype=np.uint64) / (50_000 * 1024 * 255)
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=1e-4)


def test_real_test_set_alone(cifar_dir: Path, cifar10: data.Cifar10) -> None:
    images, labels = data.load_test_set(cifar_dir)
    np.testing.assert_array_equal(images, cifar10.test_images)
    np.testing.assert_array_equal(labels, cifar10.test_labels)


def test_cli_verify_on_real_data(cifar_dir: Path, cifar10: data.Cifar10) -> None:
    result = CliRunner().invoke(main, ["data", "verify", "--json"], env={"RTK_DATA_DIR": str(cifar_dir)})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["train"] == {"images": 50_000, "label_range": [0, 9], "class_counts": [5000] * 10}
    assert report["test"]["class_counts"] == [1000] * 10
    assert report["train_mean"] == [0.4914, 0.4822, 0.4465]
    assert report["train_std"] == [0.247, 0.2435, 0.2616]
    assert report["sha256"] == cifar10.checksum() and report["problems"] == []


def test_cli_verify_fails_on_unbalanced_classes_and_bad_files(fake_cifar_dir: Path) -> None:
    result = CliRunner().invoke(main, ["data", "verify", "--data-dir", str(fake_cifar_dir)])
    assert result.exit_code == 0, result.output
    checksum = data.load_cifar10(fake_cifar_dir).checksum()
    assert str(fake_cifar_dir) in result.stdout and checksum in result.stdout and "ok" in result.stdout
    assert "airplane" in result.stdout and "100" in result.stdout  # class table and train total
    write_batch(fake_cifar_dir / "test_batch", np.zeros((20, 32, 32, 3), np.uint8), np.zeros(20))
    result = CliRunner().invoke(main, ["data", "verify", "--data-dir", str(fake_cifar_dir)])
    assert result.exit_code == 1
    assert "error: test classes are not balanced: [20, 0, 0" in result.output
    _truncate(fake_cifar_dir / "data_batch_1")
    result = CliRunner().invoke(main, ["data", "verify", "--data-dir", str(fake_cifar_dir)])
    assert result.exit_code == 1 and "corrupt or truncated" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["data"], ["data", "download"], ["data", "verify"]])
def test_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"], prog_name="rtk")
    assert result.exit_code == 0 and "Usage: rtk " + " ".join(command) in result.output


def test_ensure_data_downloads_only_into_the_default_cache(fake_archive: bytes, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The main job fetches CIFAR-10 on a fresh machine, but a named folder that lacks it is an
    error, never a download."""
    requests: list[str] = []
    with _serve({"/c.tar.gz": fake_archive}, requests) as base:
        monkeypatch.delenv("RTK_DATA_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.setenv("RTK_CIFAR_URL", f"{base}/c.tar.gz")
        monkeypatch.setenv("RTK_CIFAR_MD5", hashlib.md5(fake_archive).hexdigest())
        with pytest.raises(RtkError, match="CIFAR-10 not found"):
            data.ensure_data(tmp_path / "typo")
        assert requests == []
        folder = data.ensure_data(None)
        assert folder == tmp_path / "cache" / "rtk" / data.FOLDER_NAME and requests == ["/c.tar.gz"]
        assert data.ensure_data(None) == folder and requests == ["/c.tar.gz"]  # cached: no second fetch
