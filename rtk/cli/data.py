"""`rtk data download` and `rtk data verify`: get CIFAR-10 and check it."""

from __future__ import annotations

import json

import click

from rtk.cli import main
from rtk.cli.options import OutputPath, data_dir_option


@main.group()
def data() -> None:
    """CIFAR-10: download it into the rtk cache, or check a copy (--data-dir / RTK_DATA_DIR)."""


@data.command()
@click.option("--url", envvar="RTK_CIFAR_URL", default=None,
              help="Where to fetch cifar-10-python.tar.gz [env RTK_CIFAR_URL; default: the official "
                   "archive at www.cs.toronto.edu].")
@click.option("--md5", envvar="RTK_CIFAR_MD5", default=None,
              help="Expected md5 of the archive [env RTK_CIFAR_MD5; default: the official one].")
@click.option("--dest", type=OutputPath(file_okay=False), default=None,
              help="Folder to put cifar-10-batches-py in [default: $XDG_CACHE_HOME/rtk or ~/.cache/rtk].")
def download(url: str | None, md5: str | None, dest: str | None) -> None:
    """Download the CIFAR-10 python archive (progress bar, md5 check) and extract it.

    Prints the cifar-10-batches-py folder; a failed download leaves nothing behind."""
    from rtk.data import OFFICIAL_MD5, OFFICIAL_URL
    from rtk.data import download as download_cifar

    click.echo(download_cifar(url or OFFICIAL_URL, dest, md5 or OFFICIAL_MD5))


@data.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(data_dir: str | None, as_json: bool) -> None:
    """Load every batch with the safe loader and check shapes, labels and counts.

    Prints files, counts per class, train mean/std and the sha256 of the images and labels;
    exits non-zero on any problem."""
    from rich.console import Console
    from rich.table import Table

    from rtk.data import verify as verify_cifar
    from rtk.errors import RtkError
    from rtk.preprocess import CLASSES, MEAN, STD

    report = verify_cifar(data_dir)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        console = Console(soft_wrap=True)  # long paths and hashes stay on one line
        console.print(f"CIFAR-10 in [bold]{report['root']}[/]")
        console.print("files: " + ", ".join(f"{name} ({size:,} B)"
                                            for name, size in report["files"].items()))
        table = Table("class", "train", "test")
        for name, train, test in zip(CLASSES, report["train"]["class_counts"],
                                     report["test"]["class_counts"]):
            table.add_row(name, f"{train:,}", f"{test:,}")
        table.add_row("total", f"{report['train']['images']:,}", f"{report['test']['images']:,}", style="bold")
        console.print(table)
        console.print(f"labels: train {report['train']['label_range']}, test {report['test']['label_range']}")
        console.print(f"train mean {report['train_mean']}, std {report['train_std']} on [0, 1] "
                      f"(rtk.preprocess normalizes with mean {list(MEAN)}, std {list(STD)})")
        console.print(f"sha256 of images and labels: {report['sha256']}")
    if report["problems"]:
        raise RtkError("; ".join(report["problems"]))
    if not as_json:
        console.print("[green]ok[/]")
