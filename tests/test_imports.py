"""`import rtk`, the CLI and every --help stay light: no torch, onnx, onnxruntime, tensorrt(_rtx) or polygraphy
(nor do the modules that build and run TensorRT engines until they are asked to)."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import rtk

HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "tensorrt_rtx", "polygraphy", "openvino", "matplotlib", "cuda",
         "pycuda")


def _commands():
    from rtk.cli import main

    names = []
    for name, cmd in main.commands.items():
        names.append([name])
        names.extend([name, sub] for sub in getattr(cmd, "commands", {}))
    return names


def test_cli_and_every_help_import_nothing_heavy():
    script = f"""
import sys
from click.testing import CliRunner
import rtk, rtk.build, rtk.build.rtx_builder, rtk.build.tensorrt_builder, rtk.runtime.tensorrt_runner
from rtk.cli import main
runner = CliRunner()
for args in [[]] + {_commands()!r}:
    result = runner.invoke(main, args + ["--help"])
    assert result.exit_code == 0, (args, result.output)
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print("HEAVY:", heavy)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "HEAVY: []" in out, out


@pytest.mark.parametrize("command", [["arch"], ["train"], ["export"], ["quantize"], ["build"], ["bench"]])
def test_pipeline_commands_are_registered(command):
    from rtk.cli import main

    assert command[0] in main.commands


def test_every_module_imports():
    for mod in pkgutil.walk_packages(rtk.__path__, "rtk."):
        if mod.name != "rtk.__main__":
            importlib.import_module(mod.name)


def _modules_under_rtk():
    from pathlib import Path

    root = Path(rtk.__file__).parent
    return root, sorted(root.rglob("*.py"))


def _importers_of(target: str, parts: tuple[str, ...]) -> list[str]:
    """The modules under rtk/<part> (part: a subpackage or module name) that import `target` or
    anything inside it, at any depth of their code (imports inside functions count)."""
    import ast

    root, paths = _modules_under_rtk()
    offenders = []
    for path in paths:
        if path.relative_to(root).parts[0].removesuffix(".py") not in parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:  # from rtk import pipeline, from rtk.pipeline ...
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name == target or name.startswith(f"{target}.") for name in names):
                offenders.append(str(path.relative_to(root)))
    return offenders


def test_stages_and_runtime_never_import_the_pipeline():
    """rtk.pipeline chains the stages; a stage, data or the runtime importing it would close a circle."""
    below = ("train", "export", "quantize", "build", "deploy", "data", "augment", "runtime")
    assert _importers_of("rtk.pipeline", below) == []


def test_the_runtime_never_imports_the_build():
    """rtk.build builds engines with what rtk.runtime shares below it (rtk.runtime.cuda, .engines);
    the runners importing the build back would close a circle (they once did, for load_engine_checked)."""
    assert _importers_of("rtk.build", ("runtime",)) == []
    assert _importers_of("rtk.runtime.tensorrt_runner", ("build",)) == []


def test_every_module_fits_one_sitting_and_says_what_it_owns():
    import ast

    root, paths = _modules_under_rtk()
    long = {str(p.relative_to(root)): n for p in paths if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
    undocumented = [str(p.relative_to(root)) for p in paths
                    if p.name != "__main__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == []
