"""Errors a user can cause, and the lazy import of optional heavy packages.

The CLI turns every RtkError into one line on stderr and its exit code; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from types import ModuleType

EXIT_ERROR = 1  # the command ran and failed: bad or damaged input, a failed check, a write that failed
EXIT_CANNOT_RUN = 2  # it cannot run as asked: a usage error (click's own code) or a missing package or device


class RtkError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""

    exit_code = EXIT_ERROR


class MissingDependency(RtkError):
    """An optional package (or a device) that the asked-for work needs is not there."""

    exit_code = EXIT_CANNOT_RUN


# Which extra of pyproject.toml brings each optional top-level module. "gpu" stands for the two
# TensorRT extras, one per CUDA major (pyproject.toml): pip cannot tell which driver a machine has;
# "rtx" for the two TensorRT-for-RTX extras, the same way.
_EXTRA_FOR = {
    "onnx": "cpu",
    "onnxruntime": "cpu",
    "onnxscript": "cpu",
    "openvino": "openvino",
    "tensorrt": "gpu",
    "tensorrt_rtx": "rtx",
    "polygraphy": "gpu",
    "cuda": "gpu",
    "pycuda": "pycuda",
    "matplotlib": "cpu",
}
GPU_INSTALL = "pip install 'rtk[gpu-cu13]' (CUDA 13 driver) or 'rtk[gpu-cu12]' (CUDA 12 driver)"
# TensorRT for RTX builds without a GPU; running its engines needs the driver of the wheel's CUDA major.
RTX_INSTALL = "pip install 'rtk[rtx-cu13]' (CUDA 13 driver) or 'rtk[rtx-cu12]' (CUDA 12 driver)"


def install_hint(extra: str) -> str:
    """The install command for an extra of pyproject.toml ("gpu" and "rtx": two CUDA-major extras each)."""
    return {"gpu": GPU_INSTALL, "rtx": RTX_INSTALL}.get(extra, f"pip install 'rtk[{extra}]'")


def _version_tuple(version: str) -> tuple[int, ...]:
    """(1, 20, 1) from "1.20.1", "1.20.1rc2" or "1.20.1+cu124"."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def require_installed(module: str, extra: str) -> None:
    """MissingDependency, as require() words it, unless `module` is installed; without importing it
    (for a package that another process imports)."""
    if importlib.util.find_spec(module) is None:
        raise MissingDependency(f"{module} is not installed; install it with: {install_hint(extra)}")


def require(module: str, extra: str | None = None, min_version: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependency naming the install command.

    With `min_version`, an older installed version (its `__version__`) is refused the same way.
    A package that is there but fails to import (a broken TensorRT install raises OSError or
    FileNotFoundError for a missing shared library on some platforms, not ImportError) is one
    MissingDependency too, naming the error.
    """
    top = module.split(".")[0]
    hint = install_hint(extra or _EXTRA_FOR.get(top, "cpu"))
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{top} is not installed ({exc}); install it with: {hint}") from exc
    except Exception as exc:  # any other failure of a third-party import is its install's
        raise MissingDependency(f"{top} is installed but cannot be imported ({type(exc).__name__}: {exc}); "
                                f"reinstall it with: {hint}") from exc
    found = getattr(mod, "__version__", "0")
    if min_version is not None and _version_tuple(found) < _version_tuple(min_version):
        raise MissingDependency(
            f"{top} {found} is too old: rtk needs {top}>={min_version}; "
            f"upgrade it with: {hint.replace('pip install', 'pip install -U')}"
        )
    return mod
