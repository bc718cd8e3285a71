"""`rtk info PATH`: what an .onnx, .plan or .pt file holds."""

from __future__ import annotations

from pathlib import Path

import click

from rtk.cli import main


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def info(path: Path) -> None:
    """Describe an artifact.

    \b
    .onnx  inputs and outputs (shapes, dtypes), opset, operator histogram, rtk metadata
    .plan  a TensorRT engine, from the <engine>.json sidecar `rtk build` writes (no TensorRT needed)
    .pt    a checkpoint: depth, parameters, metrics, split, recipe, provenance
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from rtk.describe import describe

    console = Console()
    for section in describe(path):
        table = Table(title=section.title, title_justify="left")
        for column in section.columns:
            table.add_column(column, overflow="fold")
        for row in section.rows:
            table.add_row(*map(Text, row))  # Text: a shape like [batch, 3] is not markup
        console.print(table)
