"""The one interface every backend runner implements (Polygraphy style).

A runner holds resources (a session, a compiled model, an engine and its context) and runs
inference; it never builds artifacts. Feed and result are dicts of name -> numpy array:

    with OnnxRuntimeRunner("model.onnx") as runner:          # activate() on enter
        logits = runner.infer({"input": x})["logits"]       # x: float32 [N, 3, 32, 32]

Preprocessing (uint8 images -> normalized NCHW) is not a runner's job: rtk.runtime.Model wraps a
runner and applies the normalization from the artifact's metadata.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rtk.errors import RtkError
from rtk.preprocess import IMAGE_SHAPE

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

INPUT_NAME = "input"  # float32 [N, 3, 32, 32], normalized
OUTPUT_NAME = "logits"  # float32 [N, 10]
DEVICES = ("cpu", "cuda")  # where a runner can run inference
MAX_REASON_CHARS = 400  # of a backend's own message, in the RtkError that reports it


@dataclass(frozen=True)
class DeviceWork:
    """One batch's inference with input and output already on the GPU, for compute-only timing.

    enqueue() queues the work on `stream` (a cudaStream_t as int) and returns without waiting;
    rtk.bench brackets it with CUDA events on that stream.
    """

    enqueue: Callable[[], None]
    stream: int


def device_work_input(batch_size: int) -> np.ndarray:
    """The batch compute-only timing runs on: float32 [batch, 3, 32, 32] from N(0, 1), the spread of
    normalized images, the same every time. Not zeros: on a GPU zeros can run faster than real data
    (less switching power; 13% on an H200's bf16 matrix product)."""
    return np.random.default_rng(0).standard_normal((batch_size, *IMAGE_SHAPE), dtype=np.float32)


class Runner(ABC):
    backend: str = ""  # "torch", "onnxruntime", "openvino", "tensorrt"
    # What the backend raises when it cannot load or run a model (set by each runner, some once
    # their module is imported); activate() and infer() turn these into one RtkError.
    backend_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, path: str, precision: str = "fp32"):
        self.path = str(path)
        self.precision = precision
        self.is_active = False

    @property
    def name(self) -> str:
        """How reports name this runner, e.g. 'onnxruntime int8'."""
        return f"{self.backend} {self.precision}"

    @property
    def device(self) -> str:
        """Where inference runs: "cpu" or "cuda"."""
        return "cpu"

    @property
    def max_batch(self) -> int | None:
        """Largest batch one infer() call accepts (a TensorRT profile's max); None: no limit."""
        return None

    @property
    def fixed_batch(self) -> int | None:
        """The only batch size infer() accepts, for a model exported with a fixed batch; else None."""
        return None

    def device_work(self, batch_size: int) -> DeviceWork | None:
        """Compute-only work for a batch of `batch_size` on a CUDA device; None for CPU runners."""
        return None

    @property
    def metadata(self) -> dict[str, Any]:
        """The artifact's rtk metadata: depth, normalization, classes, ... (decoded JSON values)."""
        return {}

    def _backend_failure(self, doing: str, exc: BaseException) -> RtkError:
        # One line: OpenVINO puts the reason on the third line of its message, after source locations.
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        return RtkError(f"{self.backend} cannot {doing} {self.path}: {text[:MAX_REASON_CHARS]}")

    def require_active(self) -> None:
        if not self.is_active:
            raise RtkError(f"the {self.name} runner of {self.path} is closed (or was never activated)")

    def activate(self) -> None:
        try:
            self._activate()
        except RtkError:
            raise
        except self.backend_errors as exc:
            raise self._backend_failure("load", exc) from exc
        self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        return None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{"logits": float32 [N, 10], and any other output the graph has (rtk.compare's copies)} for
        {"input": float32 [N, 3, 32, 32]}; RtkError when the runner is not active (closed) or the
        backend fails."""
        self.require_active()
        try:
            result = self._infer(feed)
        except RtkError:
            raise
        except self.backend_errors as exc:
            raise self._backend_failure("run", exc) from exc
        # OpenVINO was seen to return an empty result for input of the wrong shape instead of failing.
        batch, logits = len(feed[INPUT_NAME]), result[OUTPUT_NAME]
        if logits.ndim != 2 or len(logits) != batch:
            raise RtkError(f"{self.backend} cannot run {self.path}: it returned logits of shape "
                           f"{list(logits.shape)} for a batch of {batch}")
        return result

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
