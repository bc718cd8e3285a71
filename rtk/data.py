"""CIFAR-10: find, download, verify and safely load it; the train/validation split; the calibration
sample. (Batched augmentation and normalization on the training device: rtk.augment.)

Layout (official python version, REFERENCE.md section 2): `cifar-10-batches-py/` holds
`data_batch_1..5` and `test_batch`, each a pickled dict with `data` (uint8 [10000, 3072],
channel-planar R, G, B planes of 32x32, row-major) and `labels` (10000 ints in 0..9).

Pickle is code execution, so batches are read with `_RestrictedUnpickler`: it admits only the three
numpy globals the format needs and refuses anything else before it can run.

Only numpy is imported: stages that only read images (quantize, bench) do not pay for torch.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import pickle
import posixpath
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rtk.errors import RtkError
from rtk.fileio import new_folder, owned_temp_dir
from rtk.limits import TRAIN_IMAGES, VALIDATION_IMAGES
from rtk.log import Log, info
from rtk.preprocess import CLASSES

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"  # class names; extracted with the batches, never needed to load them
IMAGES_PER_BATCH = 10_000  # the official count; read at call time so tests can use tiny fake batches
NUM_CLASSES = len(CLASSES)
PIXELS = 3 * 32 * 32  # one row of `data`: R plane, G plane, B plane
DOWNLOAD_TIMEOUT_S = 60  # per socket operation, not for the whole transfer
# Errors of the local file system while the archive is written (a full disk, a quota, read-only).
LOCAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})
DATA_HINT = ("get it with `rtk data download`, or point --data-dir / RTK_DATA_DIR at the "
             f"{FOLDER_NAME} folder, its parent, or cifar-10-python.tar.gz")

# (module, name) pairs the CIFAR python format refers to: an array is rebuilt by
# _reconstruct(ndarray, shape, dtype) + __setstate__. numpy >= 2 writes numpy._core.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only `_ALLOWED_GLOBALS`; any other global raises RtkError
    when the opcode naming it is read, so a payload built on it (os.system, eval, ...) never runs."""

    def __init__(self, file: BinaryIO, path: Path):
        # encoding="bytes": the batches are Python 2 pickles whose py2 `str`s (keys, the pixel
        # buffer) come back as bytes without a decode/encode round trip of 30 MB.
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise RtkError(f"{self.path}: refused to unpickle the global {module}.{name}; a CIFAR-10 "
                           "batch holds only numpy arrays and lists, so this file is not one (and "
                           "loading it could run code)")
        return super().find_class(module, name)


@dataclass(frozen=True)
class Cifar10:
    """The whole data set in memory, as the files hold it (no split, no normalization)."""

    train_images: np.ndarray  # uint8 [50000, 32, 32, 3] RGB
    train_labels: np.ndarray  # int64 [50000]
    test_images: np.ndarray  # uint8 [10000, 32, 32, 3] RGB
    test_labels: np.ndarray  # int64 [10000]
    root: Path  # the cifar-10-batches-py folder it was read from

    def checksum(self) -> str:
        """sha256 of train images, train labels, test images, test labels (labels as int64 LE).

        Identifies the pixels and labels independently of the pickle bytes (the shared copy's
        files differ from the official ones only in their placeholder filenames)."""
        digest = hashlib.sha256()
        for array in (self.train_images, self.train_labels.astype("<i8"),
                      self.test_images, self.test_labels.astype("<i8")):
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Where the data is


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/rtk, else ~/.cache/rtk: where `rtk data download` puts the data."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtk"


def _is_batches_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH))


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cifar-10-batches-py folder for `data_dir`, else $RTK_DATA_DIR, else the rtk cache.

    `data_dir` may be the folder itself, its parent, or the official .tar.gz (extracted once into
    the cache, all or nothing). RtkError saying where it looked and how to get the data otherwise.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("RTK_DATA_DIR") or None
    if data_dir is None:
        given, origin = default_cache_dir(), "the default cache"
    else:
        given, origin = Path(data_dir).expanduser(), "--data-dir / RTK_DATA_DIR"
    if given.is_file():
        if not tarfile.is_tarfile(given):
            raise RtkError(f"{given} is a file but not a tar archive; {DATA_HINT}")
        return _extract_cached(given)
    for candidate in (given, given / FOLDER_NAME):
        if candidate.is_dir() and _is_batches_folder(candidate):
            return candidate
    raise RtkError(f"CIFAR-10 not found: looked for {FOLDER_NAME} batches in {given} and "
                   f"{given / FOLDER_NAME} ({origin}); {DATA_HINT}")


def ensure_data(data_dir: str | os.PathLike[str] | None = None, *, log: Log = info) -> Path:
    """resolve_data_dir, downloading into the cache when no folder was named anywhere.

    Only the default location is filled automatically: a --data-dir or RTK_DATA_DIR that holds no
    CIFAR-10 stays an error (a typo must not start a 170 MB download). The URL and md5 are
    $RTK_CIFAR_URL / $RTK_CIFAR_MD5, else the official ones (as for `rtk data download`)."""
    try:
        return resolve_data_dir(data_dir)
    except RtkError:
        if data_dir or os.environ.get("RTK_DATA_DIR"):
            raise
    url = os.environ.get("RTK_CIFAR_URL") or OFFICIAL_URL
    log(f"CIFAR-10 is not in {default_cache_dir()}: downloading it from {url}")
    return download(url, md5=os.environ.get("RTK_CIFAR_MD5") or OFFICIAL_MD5, log=log)


def _extract_cached(archive: Path) -> Path:
    """Extract `archive` under the cache once; the folder name is keyed by the archive's path,
    size and mtime, so a different archive never reuses another's files."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    folder = default_cache_dir() / "extracted" / key[:16] / FOLDER_NAME
    if not _is_batches_folder(folder):
        info(f"extracting {archive} into {folder}")
        _extract(archive, folder)
    return folder


def _member_limit() -> int:
    """The most bytes a file of the CIFAR-10 archive can hold: a batch's IMAGES_PER_BATCH rows of pixels,
    with 256 bytes an image for its label, file name and the pickle's framing (the official batches are
    31,035,704 bytes, the shared copy's 31,079,582), and 64 KiB more. Read at call time (tests shrink it)."""
    return IMAGES_PER_BATCH * (PIXELS + 256) + (1 << 16)


def _extract(archive: Path, folder: Path) -> Path:
    """Extract the CIFAR-10 files of `archive` into `folder`, all or nothing.

    The archive is read as a stream, each member's declared size checked before a byte of it is
    inflated (a 154 MB archive that inflated to 3 GiB was kept whole in the cache). Only regular files
    named cifar-10-batches-py/<batch> (or ./cifar-10-batches-py/<batch>, as re-packing writes them) are
    taken, through tarfile's "data" filter (no absolute paths, no "..", no links out of the target),
    into a temporary folder; every batch is loaded and checked there, and only then is the folder
    renamed onto `folder`. A failure leaves nothing, not even the empty folders made for it.
    """
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META_FILE}
    limit, found = _member_limit(), set()
    try:
        with new_folder(folder.parent), owned_temp_dir(".rtk-extract-", folder.parent) as tmp:
            with tarfile.open(archive, "r|*") as tar:
                for member in tar:
                    if member.size > limit:
                        raise RtkError(f"{archive} is not the CIFAR-10 python archive: its {member.name} declares "
                                       f"{member.size:,} bytes, more than any CIFAR-10 file holds ({limit:,}); "
                                       "refused before inflating it")
                    parent, _, name = posixpath.normpath(member.name).rpartition("/")
                    if parent == FOLDER_NAME and name in wanted and member.isfile():
                        member.name = f"{FOLDER_NAME}/{name}"
                        tar.extract(member, tmp, filter="data")
                        found.add(name)
                    if found == wanted:
                        break
            missing = [f"{FOLDER_NAME}/{name}" for name in (*TRAIN_BATCHES, TEST_BATCH) if name not in found]
            if missing:
                raise RtkError(f"{archive} is not the CIFAR-10 python archive: it has no regular "
                               f"file {', '.join(missing)}")
            for name in (*TRAIN_BATCHES, TEST_BATCH):  # never keep what does not load
                _read_batch(tmp / FOLDER_NAME / name)
            try:
                os.replace(tmp / FOLDER_NAME, folder)
            except OSError:
                # Another process (a DDP rank) finished the same extraction first.
                if not _is_batches_folder(folder):
                    raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise RtkError(f"cannot extract {archive} into {folder}: {exc}") from exc
    return folder


# ---------------------------------------------------------------------------------------------
# Reading and checking batches


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [N, 3072] planar rows, int64 [N]), N = IMAGES_PER_BATCH, checked."""
    if not path.is_file():
        raise RtkError(f"{path} is missing: the CIFAR-10 folder is incomplete; {DATA_HINT}")
    try:
        with open(path, "rb") as f:
            batch = _RestrictedUnpickler(f, path).load()
    except RtkError:
        raise
    except Exception as exc:  # any decoding failure of the pickle stream means a damaged file
        raise RtkError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); {DATA_HINT}") from exc
    if not isinstance(batch, dict):
        raise RtkError(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, not a dict")
    # py2 pickles read with encoding="bytes" have bytes keys; ones written by Python 3 have str keys.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise RtkError(f"{path} is not a CIFAR-10 batch: it has no 'data' and 'labels' entries")
    data = batch["data"]
    try:
        labels = np.asarray(batch["labels"])
    except (ValueError, TypeError) as exc:  # ragged or otherwise not an array of numbers
        raise RtkError(f"{path}: 'labels' is not a list of integers ({exc})") from exc
    expected = (IMAGES_PER_BATCH, PIXELS)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != expected:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise RtkError(f"{path}: 'data' is {described}, expected uint8 {expected}")
    if labels.shape != (IMAGES_PER_BATCH,) or labels.dtype.kind not in "iu":
        raise RtkError(f"{path}: 'labels' has shape {labels.shape} and dtype {labels.dtype}, "
                       f"expected {IMAGES_PER_BATCH} integers")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise RtkError(f"{path}: labels range over {labels.min()}..{labels.max()}, "
                       f"expected 0..{NUM_CLASSES - 1}")
    return data, labels.astype(np.int64)


def _read_batches(root: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The batches `names` of `root`, concatenated: (uint8 [B*N, 32, 32, 3] NHWC, int64 [B*N])."""
    n = IMAGES_PER_BATCH
    images = np.empty((len(names) * n, 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(names) * n, dtype=np.int64)
    for i, name in enumerate(names):
        data, labels[i * n:(i + 1) * n] = _read_batch(root / name)
        # planar [N, 3072] -> [N, 3, 32, 32] -> NHWC, written straight into the result (one copy)
        images[i * n:(i + 1) * n] = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def load_cifar10(data_dir: str | os.PathLike[str] | None = None) -> Cifar10:
    """All six batches, checked (50000 train and 10000 test images); see `resolve_data_dir`."""
    root = resolve_data_dir(data_dir)
    train_images, train_labels = _read_batches(root, TRAIN_BATCHES)
    test_images, test_labels = _read_batches(root, (TEST_BATCH,))
    return Cifar10(train_images, train_labels, test_images, test_labels, root)


def load_test_set(data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [10000, 32, 32, 3], int64 [10000]) from test_batch alone."""
    return _read_batches(resolve_data_dir(data_dir), (TEST_BATCH,))


def test_set_if_present(data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """load_test_set, or None when no copy was named (no data_dir, no RTK_DATA_DIR) and the cache
    holds none: for checks that run when the data is there. A named place without CIFAR-10 is an error."""
    try:
        return load_test_set(data_dir)
    except RtkError:
        if data_dir is not None or os.environ.get("RTK_DATA_DIR"):
            raise
        return None


# ---------------------------------------------------------------------------------------------
# Download and verify


def download(url: str = OFFICIAL_URL, dest: str | os.PathLike[str] | None = None,
             md5: str = OFFICIAL_MD5, *, log: Log = info) -> Path:
    """Fetch the CIFAR-10 python archive from `url`, check its md5, extract it into
    `dest`/cifar-10-batches-py (default: the rtk cache) and return that folder.

    The archive goes to a temporary folder inside `dest` that is removed whatever happens (network
    error, md5 mismatch, Ctrl-C), so a failed download leaves nothing behind (what a killed one left,
    the next removes); the extracted folder appears only when complete. An existing folder is kept
    and returned.
    """
    dest = Path(dest).expanduser() if dest is not None else default_cache_dir()
    folder = dest / FOLDER_NAME
    if _is_batches_folder(folder):
        log(f"CIFAR-10 is already in {folder}")
        return folder
    if os.path.lexists(folder) and not folder.is_dir():  # found after 170 MB, by the rename onto it
        raise RtkError(f"cannot download CIFAR-10 into {dest}: {folder} is in the way and is not a folder")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(new_folder(dest))  # removed again, if it was made and stays empty
        except OSError as exc:
            raise RtkError(f"cannot create {dest}: {exc.strerror or exc}") from exc
        tmp = stack.enter_context(owned_temp_dir(".rtk-download-", dest))
        archive = tmp / "cifar-10-python.tar.gz"
        digest = _fetch(url, archive)
        if digest != md5.lower():
            raise RtkError(f"download from {url} has md5 {digest}, expected {md5}; the file is "
                           "damaged or not the CIFAR-10 python archive (nothing was kept)")
        log(f"md5 ok ({digest}); extracting into {folder}")
        _extract(archive, folder)
    return folder


def _fetch(url: str, path: Path) -> str:
    """Stream `url` into `path` with a progress bar on stderr; returns the md5 of the bytes."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    md5 = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(TextColumn("CIFAR-10"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=Console(stderr=True)) as progress:
                task = progress.add_task("download", total=total)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    progress.advance(task, len(chunk))
    except urllib.error.HTTPError as exc:
        raise RtkError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise RtkError(f"cannot download {url}: {exc.reason}") from exc
    except OSError as exc:
        if exc.errno in LOCAL_WRITE_ERRNOS:  # the disk, not the network: say so
            raise RtkError(f"cannot write {path}: {exc.strerror}") from exc
        raise RtkError(f"cannot download {url}: {type(exc).__name__}: {exc}") from exc
    except (ValueError, http.client.HTTPException) as exc:
        raise RtkError(f"cannot download {url}: {type(exc).__name__}: {exc}") from exc
    if total is not None and received != total:
        raise RtkError(f"download from {url} stopped after {received} of {total} bytes")
    return md5.hexdigest()


def _pixel_stats(images: np.ndarray, chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on [0, 1] of uint8 [N, 32, 32, 3], exactly, from a histogram of the
    256 values per channel (chunked: no float copy of the whole set)."""
    channel_offset = np.array([0, 256, 512], dtype=np.uint16)  # one bin range per channel
    histogram = np.zeros(3 * 256, dtype=np.int64)
    for start in range(0, len(images), chunk):
        values = images[start:start + chunk].reshape(-1, 3) + channel_offset  # [n*1024, 3]
        histogram += np.bincount(values.ravel(), minlength=3 * 256)
    counts = histogram.reshape(3, 256)  # [channel, value]
    levels = np.arange(256) / 255.0
    mean = counts @ levels / counts.sum(axis=1)
    std = np.sqrt(counts @ levels**2 / counts.sum(axis=1) - mean**2)
    return mean.round(4).tolist(), std.round(4).tolist()


def verify(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Load and check the data set; a report for `rtk data verify`.

    Loading raises RtkError for a missing, refused, corrupt or wrongly shaped batch. The report
    lists what loads but is wrong under "problems" (class counts that are not 5000 / 1000 each):

        root, files {name: bytes}, train / test {images, label_range, class_counts},
        train_mean, train_std (per RGB channel on [0, 1]), sha256 (Cifar10.checksum), problems
    """
    cifar = load_cifar10(data_dir)
    problems = []
    splits = {}
    for split, labels in (("train", cifar.train_labels), ("test", cifar.test_labels)):
        counts = np.bincount(labels, minlength=NUM_CLASSES)
        splits[split] = {"images": len(labels), "label_range": [int(labels.min()), int(labels.max())],
                         "class_counts": counts.tolist()}
        if (counts != len(labels) // NUM_CLASSES).any():
            problems.append(f"{split} classes are not balanced: {counts.tolist()}")
    mean, std = _pixel_stats(cifar.train_images)
    return {
        "root": str(cifar.root),
        "files": {p.name: p.stat().st_size for p in sorted(cifar.root.iterdir()) if p.is_file()},
        **splits,
        "train_mean": mean,
        "train_std": std,
        "sha256": cifar.checksum(),
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------
# Split and calibration sample


def split_indices(num_train: int = TRAIN_IMAGES, val_size: int = VALIDATION_IMAGES,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): disjoint sorted int64 indices into the training set, chosen by a
    permutation from numpy's Generator seeded with `seed` (the paper's 45k/5k by default).
    val_size=0 gives all `num_train` indices and an empty validation set."""
    if not 0 <= val_size < num_train:
        raise RtkError(f"validation size must be in 0..{num_train - 1}, got {val_size}")
    order = np.random.default_rng(seed).permutation(num_train)
    return np.sort(order[val_size:]).astype(np.int64), np.sort(order[:val_size]).astype(np.int64)


def calibration_indices(train_labels: np.ndarray, train_idx: np.ndarray, num_images: int = 1024,
                        seed: int = 0) -> np.ndarray:
    """`num_images` sorted int64 indices from `train_idx` (never validation or test images),
    class-balanced: every class gets num_images // 10, and a seeded choice of classes one more."""
    labels = np.asarray(train_labels)[train_idx]
    rng = np.random.default_rng(seed)
    per_class = np.full(NUM_CLASSES, num_images // NUM_CLASSES)
    per_class[rng.permutation(NUM_CLASSES)[:num_images % NUM_CLASSES]] += 1
    chosen = []
    for label, count in enumerate(per_class):
        pool = np.asarray(train_idx)[labels == label]
        if count > len(pool):
            raise RtkError(f"cannot pick {count} calibration images of class {CLASSES[label]}: the "
                           f"training split has {len(pool)}")
        chosen.append(rng.choice(pool, size=count, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)
