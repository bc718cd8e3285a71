"""Errors a user can cause, and the lazy import of optional heavy packages.

The CLI turns every RtkError into one line on stderr and its exit code; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class RtkError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""

    exit_code = 1


class MissingDependency(RtkError):
    """An optional package (or a device) that the asked-for work needs is not there."""

    exit_code = 2


# Which extra of pyproject.toml brings each optional top-level module.
_EXTRA_FOR = {
    "onnx": "cpu",
    "onnxruntime": "cpu",
    "onnxscript": "cpu",
    "openvino": "openvino",
    "tensorrt": "gpu",
    "cuda": "gpu",
    "pycuda": "gpu",
    "matplotlib": "cpu",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependency naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = extra or _EXTRA_FOR.get(top, "cpu")
        raise MissingDependency(
            f"{top} is not installed ({exc}); install it with: pip install 'rtk[{extra}]'"
        ) from exc
