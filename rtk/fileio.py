"""Small helpers every stage shares: atomic writes, file hashes, provenance."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rtk import __version__
from rtk.errors import RtkError

# Temporaries are named ".<target name>.<random>.tmp" beside their target (the rename onto the target
# must stay on one file system). The writer holds an exclusive flock on each while it lives: the
# kernel drops the lock when the process dies, even by SIGKILL, so the next write to the same target
# removes a temporary nobody holds (a concurrent writer's stays).
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status), else by os.umask."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(target: Path) -> int:
    """The mode a plain open() would leave at `target`: an existing file keeps its own, a new one
    gets 0666 less the umask (mkstemp makes 0600, which the rename would keep)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _write_error(target: Path, exc: OSError) -> RtkError:
    return RtkError(f"cannot write {target}: {exc.strerror or exc}")


def _lock(fd: int) -> bool:
    """Take an exclusive flock on `fd` (released when it is closed, or when the process dies).
    False when another process holds it, or where the file system has no locks (then nothing
    is ever swept as stale)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _is_held(path: Path) -> bool:
    """Whether a live process holds the lock of the temporary `path` (or it cannot be checked)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        return not _lock(fd)
    finally:
        os.close(fd)


def sweep_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of `target` that an earlier, killed rtk process left beside it; returns them.

    A temporary is stale when no process holds its lock (see TEMP_SUFFIX).
    """
    target = Path(target)
    removed = []
    try:
        candidates = list(target.parent.glob(f".{glob.escape(target.name)}.*"))
    except OSError:
        return removed
    for path in candidates:
        middle = path.name[len(target.name) + 2:-len(TEMP_SUFFIX)]
        # ".model.onnx.json.X.tmp" is model.onnx.json's, not model.onnx's: mkstemp's X has no dot
        if path.suffix != TEMP_SUFFIX or "." in middle or not path.is_file() or _is_held(path):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


# What stat calls the kinds of file an output path must not be: atomic_path writes a temporary beside
# the target and renames it over it, which would put a regular file in place of a device node (as
# root, in place of /dev/null) or a FIFO.
_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def output_problem(path: str | os.PathLike[str]) -> str | None:
    """Why rtk cannot write an artifact at `path`; None when it can (absent, a regular file, or a
    symbolic link, which is replaced, never followed). Checked before any work by each stage for
    its outputs, and again by atomic_path."""
    if not os.fspath(path):
        return "the path is empty"
    target = Path(path)
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the folder check below says which
        mode = None
    except OSError as exc:
        return exc.strerror or str(exc)
    kind = next((name for test, name in _NOT_REGULAR if mode is not None and test(mode)), None)
    if kind is not None:
        return (f"it is {kind}, not a regular file (rtk would rename a file of its own over it); "
                "name a file to write")
    folder = next((parent for parent in target.parents if os.path.lexists(parent)), None)
    if folder is not None and not folder.is_dir():
        return f"{folder} is not a folder"
    return None


def check_output(path: str | os.PathLike[str]) -> Path:
    """`path`, or RtkError (`cannot write PATH: ...`) when output_problem finds one."""
    problem = output_problem(path)
    if problem:
        raise RtkError(f"cannot write {os.fspath(path) or repr('')}: {problem}")
    return Path(path)


@contextlib.contextmanager
def new_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Make the folder `path` and its missing parents; if the block fails, remove those it made that
    are still empty, so a failed write, download or extraction leaves no empty folders behind."""
    path = Path(path)
    made = [folder for folder in (path, *path.parents) if not os.path.lexists(folder)]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in made:  # deepest first; one that holds anything (another writer's) stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A failure (an exception, Ctrl-C, a failed validation raised inside the block) removes the
    temporary file (and the folders made for it), so no half-written artifact is ever left at
    `path`. An existing `path` that is not a regular file (a device, a FIFO, a folder) is refused
    before anything is written (output_problem). The file gets the mode a plain open() would give
    it (see _final_mode); temporaries of killed earlier runs are swept. An OSError while writing (a
    full or read-only disk) becomes one RtkError naming `path`.
    """
    target = check_output(path)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(new_folder(target.parent))
            sweep_stale_temporaries(target)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        except OSError as exc:
            raise _write_error(target, exc) from exc
        tmp = Path(tmp_name)
        try:
            _lock(fd)
            try:
                yield tmp
            except OSError as exc:  # ENOSPC, EROFS, EDQUOT, EFBIG, EIO from whatever wrote `tmp`
                raise _write_error(target, exc) from exc
            try:
                os.chmod(tmp, _final_mode(target))
                os.replace(tmp, target)
            except OSError as exc:  # e.g. `path` became a folder meanwhile
                raise _write_error(target, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
            os.close(fd)


LOCK_NAME = ".lock"  # in an owned_temp_dir: the file its process holds the flock of


@contextlib.contextmanager
def owned_temp_dir(prefix: str, parent: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder `<prefix><random>` in `parent`, removed on exit, that holds a locked file
    while its process lives (the flock of TEMP_SUFFIX's temporaries). SIGKILL or a power cut runs no
    clean-up, so each call first removes the folders of its prefix in `parent` whose lock nobody
    holds; a live process's folder (another DDP rank's) is kept, and so is one with no lock file
    (being created, or not rtk's)."""
    parent = Path(parent)
    for folder in parent.glob(f"{glob.escape(prefix)}*"):
        lock = folder / LOCK_NAME
        if folder.is_dir() and lock.is_file() and not _is_held(lock):
            shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as tmp:
        # locked under another name first: a sweep never sees LOCK_NAME unheld in a live folder
        fd, locked = tempfile.mkstemp(dir=tmp)
        try:
            _lock(fd)
            os.replace(locked, Path(tmp) / LOCK_NAME)
            yield Path(tmp)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_revision() -> str | None:
    """The commit of the rtk checkout this code runs from, with '-dirty' if it has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def package_versions(*names: str) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(*packages: str) -> dict[str, Any]:
    """rtk version, git revision, Python, platform and the versions of `packages`."""
    return {
        "rtk": __version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(*packages),
    }
