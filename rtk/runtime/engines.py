"""TensorRT and TensorRT-for-RTX engines: what each runtime is, and the checks before an engine loads.

Shared by rtk.build (which builds both kinds) and rtk.runtime.tensorrt_runner (which runs both),
so that neither imports the other. An engine's sidecar names its runtime (rtk.engine_meta):

    "tensorrt"      TensorRT 10/11 (PyPI tensorrt-cu12/-cu13); a plan loads only in the
                    major.minor.patch that built it, on a GPU of the compute capability it was built on
    "tensorrt-rtx"  TensorRT for RTX (PyPI tensorrt-rtx-cu12/-cu13, module tensorrt_rtx); built ahead
                    of time for a list of compute capabilities, on any machine; a plan loads only in
                    the major.minor.patch that built it ("you must build a new engine for each new
                    TensorRT-RTX version", NVIDIA/TensorRT-RTX samples/helloWorld/python/hello_world.py),
                    on a GPU of one of those compute capabilities

rtk refuses a mismatch with one line before the runtime is asked (TensorRT for RTX's own refusal of
a compute capability is a failed deserialization with its reason in the log).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rtk.engine_meta import read_engine
from rtk.errors import RtkError, require
from rtk.runtime.cuda import cuda_binding


@dataclass(frozen=True)
class EngineRuntime:
    name: str  # the sidecar's "runtime", `rtk build --runtime`, the runner's backend name
    module: str  # the Python module that builds and runs its engines
    product: str  # how messages name it
    extra: str  # which install hint a missing module names (rtk.errors.install_hint)
    version_key: str  # the sidecar field holding the version that built the engine


TENSORRT = EngineRuntime("tensorrt", "tensorrt", "TensorRT", "gpu", "tensorrt_version")
TENSORRT_RTX = EngineRuntime("tensorrt-rtx", "tensorrt_rtx", "TensorRT for RTX", "rtx", "tensorrt_rtx_version")
RUNTIMES = {runtime.name: runtime for runtime in (TENSORRT, TENSORRT_RTX)}


def engine_runtime(name: str) -> EngineRuntime:
    if name not in RUNTIMES:
        raise RtkError(f"unknown engine runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def runtime_of(sidecar: Mapping[str, Any]) -> EngineRuntime:
    """The runtime an engine's sidecar names (TensorRT's where it names none: sidecars written before
    rtk built TensorRT-for-RTX engines)."""
    name = sidecar.get("runtime", TENSORRT.name)
    if name not in RUNTIMES:
        raise RtkError(f"the sidecar names runtime {name!r}, which this rtk does not know ({', '.join(RUNTIMES)})")
    return RUNTIMES[name]


def cuda_device(extra: str = "gpu") -> dict[str, str]:
    """{"name", "compute_capability"} of CUDA device 0, asked through the binding the runner uses
    (cuda-python, else pycuda); MissingDependency without either or without a device."""
    return cuda_binding(extra).device()


def running_environment(runtime: EngineRuntime) -> tuple[str, dict[str, str]]:
    """(version of `runtime`, GPU) of this machine; MissingDependency (exit 2) where either is missing."""
    module = require(runtime.module, runtime.extra)  # one line with the install hint where it is missing
    return str(module.__version__), cuda_device(runtime.extra)


def version_triple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def compatibility_problems(sidecar: Mapping[str, Any], version: str, gpu: Mapping[str, str]) -> list[str]:
    """Why the engine described by `sidecar` cannot run under this `version` of its runtime on `gpu`
    (empty: it can). TensorRT's rules are cpp/src/compat.cpp's too."""
    runtime = runtime_of(sidecar)
    problems = []
    built = str(sidecar.get(runtime.version_key, "?"))
    if version_triple(built) != version_triple(version):
        problems.append(f"it was built with {runtime.product} {built} but this is {runtime.product} {version}")
    here = f"{gpu['name']} (compute capability {gpu['compute_capability']})"
    if runtime is TENSORRT:
        built_gpu = sidecar.get("gpu", {})
        if str(built_gpu.get("compute_capability")) != str(gpu["compute_capability"]):
            problems.append(f"it was built for {built_gpu.get('name', '?')} (compute capability "
                            f"{built_gpu.get('compute_capability', '?')}) but this GPU is {here}")
    else:
        targets = [str(target) for target in sidecar.get("compute_capabilities", [])]
        if str(gpu["compute_capability"]) not in targets:
            problems.append(f"it was built for compute capabilities {', '.join(targets) or '(none recorded)'} "
                            f"but this GPU is {here}")
    return problems


def rebuild_command(sidecar: Mapping[str, Any], gpu: Mapping[str, str] | None = None) -> str:
    """The `rtk build` that makes this engine again (for `gpu`'s compute capability, for TensorRT for RTX)."""
    command = f"rtk build --precision {sidecar.get('precision', 'fp32')}"
    if runtime_of(sidecar) is TENSORRT_RTX:
        command += " --runtime tensorrt-rtx"
        if gpu is not None:
            command += f" --compute-capability {gpu['compute_capability']}"
    return command


def load_engine_checked(plan_path: str | os.PathLike[str]) -> tuple[bytes, dict[str, Any]]:
    """(plan bytes, sidecar) of an engine that matches its sidecar and can run here: RtkError for a
    changed plan, or one built by another version of its runtime or for another GPU."""
    plan, sidecar = read_engine(plan_path)
    version, gpu = running_environment(runtime_of(sidecar))
    problems = compatibility_problems(sidecar, version, gpu)
    if problems:
        raise RtkError(f"{plan_path} cannot run here: {'; '.join(problems)}. Rebuild it on this machine "
                       f"with `{rebuild_command(sidecar, gpu)}`")
    return plan, sidecar
