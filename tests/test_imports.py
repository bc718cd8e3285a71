"""`import rtk`, the CLI and every --help stay light: no torch, onnx, onnxruntime or tensorrt."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import rtk

HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "openvino", "matplotlib")


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
