"""`rtk compare A B`: two artifacts of one network, tensor by tensor, on validation images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rtk import limits
from rtk.cli import main
from rtk.cli.options import Finite, OutputPath, data_dir_option, images, threads_option

CPU_BACKENDS = ("onnxruntime", "openvino")


@main.command()
@click.argument("a", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("b", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--backend-a", type=click.Choice(CPU_BACKENDS), default="onnxruntime", show_default=True)
@click.option("--backend-b", type=click.Choice(CPU_BACKENDS), default="onnxruntime", show_default=True)
@click.option("--images", "num_images", type=images(limits.VALIDATION_IMAGES, "the validation split"), default=500,
              show_default=True,
              help="Images of the validation split (never the test set).")
@click.option("--threshold-db", type=Finite(), default=20.0, show_default=True,
              help="Name the first tensor whose SQNR is below this.")
@threads_option("Threads per backend")
@click.option("--out", type=OutputPath(file_okay=False, path_type=Path), default=None,
              help="Folder for compare.json and compare.png [default: beside B].")
@data_dir_option
def compare(a: Path, b: Path, backend_a: str, backend_b: str, num_images: int, threshold_db: float,
            threads: int | None, out: Path | None, data_dir: str | None) -> None:
    """SQNR, cosine and max error of every tensor A and B share (A the reference), in graph order;
    the first tensor under the threshold, the one that loses the most SQNR, and the images whose
    top-1 class flips with the tensor where their error grows.

    \b
    rtk compare runs/resnet20/model.onnx runs/resnet20/model.int8.tensorrt.onnx
    rtk compare runs/resnet20/model.onnx runs/resnet20/model.onnx --backend-b openvino
    """
    from rtk import compare as stage
    from rtk.fileio import check_output, write_text_atomic

    folder = out or b.parent
    for name in ("compare.json", "compare.png"):
        check_output(folder / name)
    result = stage.compare(a, b, backend_a=backend_a, backend_b=backend_b, num_images=num_images,
                           threshold_db=threshold_db, data_dir=data_dir, threads=threads)
    json_path = write_text_atomic(folder / "compare.json", json.dumps(result, indent=1) + "\n")
    png_path = stage.plot(result, folder / "compare.png")
    _print(result)
    click.echo(str(json_path))
    click.echo(str(png_path))


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from rtk.stats import Paired

    table = Table(title=f"{result['b']['file']} ({result['b']['backend']}) against {result['a']['file']} "
                        f"({result['a']['backend']}), {result['images']['count']} validation images")
    for column in ("#", "tensor", "op", "node", "SQNR dB", "cosine", "max abs err"):
        table.add_column(column, justify="left" if column in ("tensor", "op", "node") else "right", no_wrap=True)
    for i, row in enumerate(result["tensors"]):
        low = row["sqnr_db"] < result["threshold_db"]
        op = f"{row['op']} (folded in B)" if row.get("b_relu_applied") else row["op"]
        table.add_row(str(i), row["tensor"], op, row["node"], f"{row['sqnr_db']:.1f}", f"{row['cosine']:.5f}",
                      f"{row['max_abs_error']:.3g}", style="red" if low else None)
    console = Console()
    console.print(table)
    blamed, top1 = result["blamed"], result["top1"]
    console.print(f"first tensor under {result['threshold_db']:g} dB: {result['first_below_threshold'] or 'none'}")
    if blamed is None:
        console.print("most SQNR lost: none: no tensor of B is further from A than the one before it")
    else:
        console.print(f"most SQNR lost: {blamed['tensor']} ({blamed['op']} {blamed['node']}), "
                      f"{blamed['sqnr_lost_db']:.1f} dB below {blamed['after']}, at {blamed['sqnr_db']:.1f} dB")
    if result["left_out"]:
        console.print("left out, made by another op in B (not the same quantity): " + ", ".join(
            f"{t['tensor']} ({t['a_op']} in A, {t['b_op']} in B)" for t in result["left_out"]))
    console.print(f"top-1 agreement {top1['agreement_pct']:.2f}%; accuracy B - A: "
                  f"{Paired(**top1['evidence']).summary()}")
    grows: dict[str, int] = {}
    for flip in result["flips"]:
        grows[flip["grows_at"]] = grows.get(flip["grows_at"], 0) + 1
    if grows:
        where = ", ".join(f"{name} {count}" for name, count in sorted(grows.items(), key=lambda kv: -kv[1]))
        console.print(f"{len(result['flips'])} images flip top-1; their error grows most at: {where}")
