"""rtk.fileio.atomic_dir: a folder appears whole or not at all, and a failure keeps the old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtk.errors import RtkError
from rtk.fileio import atomic_dir


def test_atomic_dir_writes_then_replaces(tmp_path: Path):
    target = tmp_path / "repo" / "model"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the old folder is gone, not merged
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path: Path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half-written")
        raise ValueError("failed midway")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_dir_refuses_a_file_in_the_way(tmp_path: Path):
    (tmp_path / "model").write_text("a file")
    with pytest.raises(RtkError, match="a file is in the way"), atomic_dir(tmp_path / "model"):
        pass
    assert (tmp_path / "model").read_text() == "a file"
