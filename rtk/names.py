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
BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")
BENCH_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CALIBRATION_METHODS = ("percentile", "entropy", "minmax")
# Key layouts `rtk import` reads (rtk.importer); state-dict: any names, mapped by structure.
IMPORT_FORMATS = ("auto", "akamaster", "rtk", "state-dict")


def default_calib_dir() -> Path:
    """Where calibration manifests go: $RTK_CALIB_DIR, else ./calib."""
    return Path(os.environ.get("RTK_CALIB_DIR", "calib"))


def with_article(word: str) -> str:
    """'an int8', 'an fp16', 'a bf16': the article as the word is read aloud (letters by name)."""
    return f"{'an' if word[:1].lower() in 'aefhilmnorsx' else 'a'} {word}"
