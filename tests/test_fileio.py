"""rtk.fileio.atomic_path: a file appears whole or not at all, with the mode open() would give it,
and temporaries of killed writers do not pile up."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtk.errors import RtkError
from rtk.fileio import atomic_path, sweep_stale_temporaries, write_text_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_new_files_get_the_umask_mode_and_existing_ones_keep_theirs(tmp_path: Path, umask_027: None):
    path = write_text_atomic(tmp_path / "a.txt", "one")
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # mkstemp alone would leave 0600
    os.chmod(path, 0o604)
    write_text_atomic(path, "two")
    assert oct(path.stat().st_mode & 0o777) == oct(0o604) and path.read_text() == "two"


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(ValueError), atomic_path(path) as tmp:
        tmp.write_text("half-written")
        raise ValueError("failed midway")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_an_os_error_while_writing_is_one_rtk_error(tmp_path: Path):
    with pytest.raises(RtkError, match=r"cannot write .*a\.txt: No space left on device"), \
            atomic_path(tmp_path / "a.txt"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def _killed_writer(target: Path) -> None:
    """A process killed by SIGKILL while it writes `target`: its temporary stays behind."""
    code = ("import os, sys\nfrom rtk.fileio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n    os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code, str(target)], check=False)


def test_temporaries_of_a_killed_writer_are_swept_by_the_next_write(tmp_path: Path):
    target = tmp_path / "model.onnx"
    _killed_writer(target)
    (first,) = tmp_path.iterdir()
    assert first.name.startswith(".model.onnx.") and first.suffix == ".tmp"
    _killed_writer(target)  # it sweeps the first one, and leaves its own
    (second,) = tmp_path.iterdir()
    assert second != first
    other = tmp_path / ".model.onnx.json.abc.tmp"  # model.onnx.json's, not model.onnx's
    other.write_text("")
    write_text_atomic(target, "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "model.onnx"]


def test_a_live_writers_temporary_is_not_swept(tmp_path: Path):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        tmp.write_text("in progress")
        # another writer of the same target (here in the same process) starts meanwhile
        assert sweep_stale_temporaries(target) == [] and tmp.read_text() == "in progress"
    assert target.read_text() == "in progress"
