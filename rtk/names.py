"""The names every layer shares: INT8 targets, backends, the precisions rtk bench measures, the
calibration methods, the key layouts rtk import reads, and where calibration manifests live by default.

Defined here, below the stages, the runtime, the pipeline and the CLI, so that any of them can
import them without importing each other (and the CLI without numpy or torch).
"""

from __future__ import annotations

import os
from pathlib import Path

INT8_TARGETS = ("tensorrt", "cpu")  # the two QDQ flavours rtk quantize writes
# Backends a model can run on ("auto" picks one) and the precisions rtk bench measures.
BACKENDS = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime", "openvino", "torch")
# What `rtk build --runtime` builds engines for: TensorRT (on its GPU) or TensorRT for RTX (anywhere)
ENGINE_RUNTIMES = ("tensorrt", "tensorrt-rtx")
BENCH_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CALIBRATION_METHODS = ("percentile", "entropy", "minmax")
# Adam steps of the TensorRT flavour's scale and bias tuning (rtk.quantize.tuning); ResNet-20: about
# 5 min on 2 CPU cores; the last 200 moved its validation MSE from 0.0072 to 0.0070 (docs/quantization.md)
TUNE_STEPS = 600
# Key layouts `rtk import` reads (rtk.importer); state-dict: any names, mapped by structure.
IMPORT_FORMATS = ("auto", "akamaster", "rtk", "state-dict")


def default_calib_dir() -> Path:
    """Where calibration manifests go: $RTK_CALIB_DIR, else ./calib."""
    return Path(os.environ.get("RTK_CALIB_DIR", "calib"))


def shipped_calib_dir() -> Path | None:
    """The calibration manifests shipped with rtk (those of the weights in rtk/weights/, with their
    tuned values): the top-level calib/ of a source checkout (rtk/ beside pyproject.toml: editable
    installs and PYTHONPATH), else the package's calib/, where pyproject.toml maps it in a wheel."""
    package = Path(__file__).resolve().parent
    if (package.parent / "calib").is_dir() and (package.parent / "pyproject.toml").is_file():
        return package.parent / "calib"
    return package / "calib" if (package / "calib").is_dir() else None


def with_article(word: str) -> str:
    """'an int8', 'an fp16', 'a bf16': the article as the word is read aloud (letters by name)."""
    return f"{'an' if word[:1].lower() in 'aefhilmnorsx' else 'a'} {word}"

# The deepest ResNet rtk builds: n = 1000 blocks per stage, 97M parameters (0.39 GB of FP32 weights,
# 8 s to construct on the 2-core CPU). Training it at batch 128 would hold ~30 GB of activations;
# the paper's deepest, ResNet-1202 (n = 200), is well inside. A depth like 600002 would otherwise
# build for minutes and end in a MemoryError.
MAX_DEPTH = 6002


def depth_problem(depth: object) -> str | None:
    """Why `depth` is not a CIFAR ResNet depth rtk builds (6n+2, 8..MAX_DEPTH); None when it is."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        return f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...), got {depth!r}"
    if depth > MAX_DEPTH:
        return (f"depth {depth} is beyond rtk's bound of {MAX_DEPTH} (n = {(MAX_DEPTH - 2) // 6} blocks per stage, "
                f"97M parameters): deeper nets do not fit in memory to train, and take minutes just to build")
    return None
