"""rtk.fileio.atomic_path: a file appears whole or not at all, with the mode open() would give it,
and temporaries of killed writers do not pile up."""

from __future__ import annotations

import errno
import os
import stat
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


def test_a_target_that_is_not_a_regular_file_is_refused_and_a_link_is_replaced(tmp_path: Path):
    """The rename onto a device node or FIFO put a regular file in its place (as root: /dev/null's)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, kind in ((fifo, "a FIFO"), (tmp_path, "a folder")):
        with pytest.raises(RtkError, match=f"cannot write {target}: it is {kind}, not a regular file"):
            write_text_atomic(target, "x")
    with pytest.raises(RtkError, match="cannot write '': the path is empty"):
        write_text_atomic("", "x")
    with pytest.raises(RtkError, match=f"{fifo} is not a folder"):
        write_text_atomic(fifo / "inside.txt", "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "link"
    link.symlink_to(fifo)  # replaced, never followed
    write_text_atomic(link, "x")
    assert link.read_text() == "x" and not link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_failed_write_leaves_no_folders_it_made(tmp_path: Path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError), atomic_path(tmp_path / "kept" / "new" / "deeper" / "a.txt") as tmp:
        tmp.write_text("half")
        raise ValueError("failed midway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not list((tmp_path / "kept").iterdir())
