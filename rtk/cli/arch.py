"""`rtk arch`: the network's structure as the paper's table describes it."""

from __future__ import annotations

from rtk.cli import main
from rtk.cli.options import depth_option


@main.command()
@depth_option()
def arch(depth: int) -> None:
    """Print ResNet-DEPTH stage by stage: output map, filters, blocks, parameters, MACs."""
    from rich.console import Console
    from rich.table import Table

    from rtk.model import describe

    rows = describe(depth)
    table = Table(title=f"ResNet-{depth} (CIFAR-10, option-A shortcuts, n={(depth - 2) // 6})")
    for col in ("layer", "output", "filters", "blocks", "params", "MACs / image"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r.name, f"{r.output_size}x{r.output_size}", str(r.filters), str(r.blocks),
                      f"{r.params:,}", f"{r.macs / 1e6:.2f}M")
    table.add_row("total", "", "", "", f"{sum(r.params for r in rows):,}",
                  f"{sum(r.macs for r in rows) / 1e6:.2f}M", style="bold")
    Console().print(table)
