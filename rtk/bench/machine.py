"""The environment record of a bench run: CPU model and features, cores, load, GPU and driver,
package versions, git and the command; what a reader needs to judge the numbers."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from rtk.bench.rows import BackendChoice
from rtk.errors import require
from rtk.fileio import provenance
from rtk.runtime import installed

BUSY_LOAD = 0.5  # load average per usable core above which a CPU run is flagged as noisy
PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt",
            "tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "cuda-python", "cuda-bindings", "pycuda")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Instruction sets that decide CPU inference speed: INT8 dot products (VNNI, AMX) and bf16 units.
CPU_FEATURES = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo(key: str) -> str | None:
    """The first value of `key` in /proc/cpuinfo (Linux), else None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == key), None)


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    flags = set((_cpuinfo("flags") or "").split())
    return [feature for feature in CPU_FEATURES if feature in flags]


def gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def load_average() -> float | None:
    """The 1-minute load average, rounded to 0.1: other work on the machine skews CPU timings."""
    try:
        return round(os.getloadavg()[0], 1)
    except OSError:
        return None


def busy(choice: BackendChoice, load: float | None, own_threads: int = 0) -> bool:
    """Other work on the CPU: the load average beyond this process's own `own_threads` (the
    threads it was timing with, which the load average right after timing still counts)."""
    return choice.device == "cpu" and load is not None and load - own_threads > BUSY_LOAD * usable_cores()


def environment(gpu: str | None, threads: int, load_before: float | None,
                load_after: float | None) -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, load, GPU, driver, versions, git, command."""
    env = provenance(*PACKAGES)
    env.update({
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": threads,
        "load_average_before": load_before,
        "load_average_after": load_after,  # when timing ended
        "gpu": gpu,
        "gpu_driver": gpu_driver() if gpu else None,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    })
    if gpu:
        torch = require("torch")
        env["cuda"] = torch.version.cuda
        env["gpu_compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        # torch's FP32 convolutions may use TF32 (cuDNN's default), as TensorRT's FP32 layers do
        env["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    if installed("onnxruntime"):  # the module imported (onnxruntime-gpu from a --target folder shadows the CPU one)
        ort = require("onnxruntime")
        env["onnxruntime_module"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    if installed("tensorrt"):  # the wheel may be named tensorrt-cu12 / -cu13: ask the module itself
        env["tensorrt"] = require("tensorrt", "gpu").__version__
    return env
