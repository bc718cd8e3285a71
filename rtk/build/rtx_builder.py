"""TensorRT for RTX's build: ahead of time, on any machine (no GPU needed), in a process of its own.

Polygraphy (0.53.6) drives TensorRT for RTX when POLYGRAPHY_USE_TENSORRT_RTX=1 is set before it is
imported: polygraphy/config.py reads the variable once, and every Polygraphy module binds its `trt` to
`tensorrt_rtx` or `tensorrt` when it is imported (polygraphy/mod/trt_importer.py). One process can
therefore not build with both, and rtk's TensorRT build runs in rtk's own process: so the RTX build runs
here, as `python -m rtk.build.rtx_builder REQUEST RESULT`, with the variable set in that process's
environment alone. Nothing of it reaches the calling process, which may import tensorrt before or after.

A process of its own also gives the build a TensorRT logger of its own. TensorRT keeps the first logger
a process gives it (a later builder's logger is ignored, with a warning saying so), and Polygraphy's
loaders log through polygraphy.backend.trt.util.get_trt_logger(), which returns util.TRT_LOGGER once
set: the worker sets it to a logger that records every message at warning level or above. The caller
shows them and records them in the sidecar; tests/test_rtx_build.py fails on any that
docs/quantization.md does not list and explain.

The build is the one both runtimes share (rtk.build.network: parse, check the Convs' precisions,
build), with CreateConfigRTX (polygraphy/backend/tensorrt_rtx/config.py) for the config: the compute
capabilities the engine is built for (`rtk build --compute-capability`), by default every one of
Ampere and later that this release names (8.0, 8.6, 8.9, 12.0, 12.1 in 1.7.1: what its documentation
calls the default, "8.0, 8.6, 8.9, 12.0, and later", docs.nvidia.com/deeplearning/tensorrt-rtx,
inference-library/cpu-engines), set explicitly so the sidecar names them. No timing cache: TensorRT
for RTX ignores it, and asking for one makes the build query a GPU (its 1.1 release notes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rtk.build.network import Built, NetworkCheck, build_through_polygraphy, check_profile, config_options
from rtk.errors import RtkError
from rtk.log import Log

PRODUCT = "TensorRT for RTX"
# The oldest architecture rtk builds for by default: Ampere (NVIDIA/TensorRT-RTX samples/apiUsage:
# "The default behavior is to support all RTX compute capabilities, Ampere and later")
DEFAULT_MIN_MAJOR = 8
_CAPABILITY = re.compile(r"^(\d{1,2})\.(\d)$")


def parse_compute_capability(text: str) -> tuple[int, int]:
    """(8, 6) from "8.6"; RtkError for anything else."""
    match = _CAPABILITY.match(text.strip())
    if not match:
        raise RtkError(f"a compute capability is major.minor, such as 8.6, 8.9 or 12.0; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def build(onnx_path: Path, *, precision: str, float_convs: list[str], compute_capabilities: list[str],
          batches: tuple[int, int, int], workspace_mb: int, optimization_level: int, tf32: bool, log: Log) -> Built:
    """A TensorRT-for-RTX engine of `onnx_path`, built by `python -m rtk.build.rtx_builder`."""
    for capability in compute_capabilities:
        parse_compute_capability(capability)  # a malformed one fails before the build process starts
    with tempfile.TemporaryDirectory(prefix="rtk-rtx-build-") as work:
        request, result_path, plan_path = Path(work, "request.json"), Path(work, "result.json"), Path(work, "plan")
        request.write_text(json.dumps({
            "onnx": os.fspath(onnx_path), "plan": os.fspath(plan_path), "precision": precision,
            "float_convs": float_convs, "batches": list(batches),
            "workspace_mb": workspace_mb, "optimization_level": optimization_level, "tf32": tf32,
            "compute_capabilities": compute_capabilities}))
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the rtk package
        env = {**os.environ, "POLYGRAPHY_USE_TENSORRT_RTX": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        done = subprocess.run([sys.executable, "-m", "rtk.build.rtx_builder", str(request), str(result_path)],
                              env=env, capture_output=True, text=True, check=False)
        result = json.loads(result_path.read_text()) if result_path.is_file() else {"messages": []}
        for message in result["messages"]:
            log(f"{PRODUCT} {message['severity']}: {message['message']}")
        output = (done.stdout + done.stderr).strip()
        for line in output.splitlines():  # Polygraphy's messages (the ONNX parser's errors among them)
            log(line)
        if "version" not in result:
            raise RtkError(f"the {PRODUCT} build process ended with exit code {done.returncode} and no result"
                           + (f": {output.splitlines()[-1]}" if output else ""))
        if result.get("error"):
            raise RtkError(result["error"])
        plan = plan_path.read_bytes()
    fields = {"tensorrt_rtx_version": result["version"], "compute_capabilities": result["compute_capabilities"],
              "builder_messages": result["messages"]}
    return Built(plan=plan, product=f"{PRODUCT} {result['version']}", seconds=result["seconds"],
                 conv_precisions=result["conv_precisions"], tensors=result["tensors"], fields=fields,
                 packages=("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "polygraphy", "onnx"))


# ---------------------------------------------------------------------------------------------
# The build process (POLYGRAPHY_USE_TENSORRT_RTX=1)


def _targets(trt: Any, asked: list[str]) -> list[tuple[int, int]]:
    """The compute capabilities to build for: `asked`, each one this release can build for, or by
    default every one of Ampere and later that its ComputeCapability enum names (SM80, SM86, ...)."""
    named = sorted((int(m.group(1)[:-1]), int(m.group(1)[-1])) for m in
                   map(re.compile(r"^SM(\d+)$").match, trt.ComputeCapability.__members__) if m)
    if not asked:
        return [capability for capability in named if capability[0] >= DEFAULT_MIN_MAJOR]
    targets = [parse_compute_capability(text) for text in asked]
    unknown = [f"{major}.{minor}" for major, minor in targets if (major, minor) not in named]
    if unknown:
        raise RtkError(f"{PRODUCT} {trt.__version__} does not build for compute capability {', '.join(unknown)}: "
                       f"it builds for {', '.join(f'{a}.{b}' for a, b in named)} (RTX GPUs; H100/H200 are 9.0, "
                       "which needs TensorRT: --runtime tensorrt)")
    return sorted(set(targets))


def _work(request: dict[str, Any]) -> dict[str, Any]:
    import tensorrt_rtx as trt
    from polygraphy import config as polygraphy_config
    from polygraphy.backend.tensorrt_rtx import CreateConfigRTX
    from polygraphy.backend.trt import PostprocessConfig
    from polygraphy.backend.trt import util as trt_util
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # plain text for the log the caller relays (no warning about `colored` either)
    messages: list[dict[str, str]] = []

    class RecordingLogger(trt.ILogger):
        """What TensorRT for RTX logs at warning level or above, in order (logging must not raise)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, message: str) -> None:
            if severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR, trt.Logger.WARNING):
                messages.append({"severity": severity.name.lower().replace("_", " "), "message": message})

    trt_util.TRT_LOGGER = RecordingLogger()  # before any Polygraphy loader asks get_trt_logger() for it
    result: dict[str, Any] = {"version": trt.__version__, "messages": messages}
    try:
        if not polygraphy_config.USE_TENSORRT_RTX:
            raise RtkError("the TensorRT for RTX build process runs with POLYGRAPHY_USE_TENSORRT_RTX=1")
        targets = _targets(trt, request["compute_capabilities"])
        result["compute_capabilities"] = [f"{major}.{minor}" for major, minor in targets]
        check = NetworkCheck(trt, request["precision"], request["float_convs"], Path(request["onnx"]).name)
        options = config_options(trt, batches=tuple(request["batches"]), workspace_mb=request["workspace_mb"],
                                 optimization_level=request["optimization_level"])

        def finish_config(builder: Any, network: Any, config: Any) -> None:
            # CreateConfigRTX (Polygraphy 0.53.6) takes no tf32 and leaves the flag as the builder
            # makes it: on, TensorRT's default; rtk clears it for --no-tf32
            check_profile(builder, network, config)
            if not request["tf32"]:
                config.clear_flag(trt.BuilderFlag.TF32)

        started = time.perf_counter()
        plan = build_through_polygraphy(
            trt, Path(request["onnx"]),
            lambda: PostprocessConfig(CreateConfigRTX(**options, compute_capabilities=targets), finish_config),
            check, product=PRODUCT)
        result["seconds"] = round(time.perf_counter() - started, 2)
        Path(request["plan"]).write_bytes(plan)
        result.update(conv_precisions=check.counts, tensors=check.tensors)
    except RtkError as exc:
        errors = [m["message"] for m in messages if m["severity"] != "warning"]
        # Polygraphy's last word is often generic ("Invalid Engine"): the builder's first error says why
        result["error"] = str(exc) + (f"; {PRODUCT} said: {errors[0][:300]}" if errors else "")
    return result


def main(argv: list[str]) -> int:
    request_path, result_path = argv
    result = _work(json.loads(Path(request_path).read_text()))
    Path(result_path).write_text(json.dumps(result))
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
