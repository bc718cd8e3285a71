"""What a training run writes and shows: metrics.jsonl (cut back on resume), the progress bar or one
line per epoch, and curves.png."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rtk.errors import RtkError
from rtk.fileio import atomic_path
from rtk.log import Progress, progress


class MetricsLog:
    """metrics.jsonl: one JSON line per epoch (and a final line); on resume, later lines are cut."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None or not path.is_file():  # a new run: the file appears with its first line
            path.unlink(missing_ok=True)
            return
        lines = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and _record(path, number, line).get("step", 0) <= resume_step:
                lines.append(line)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in lines))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    """One line of metrics.jsonl as a dict; RtkError naming the line where it is damaged."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise RtkError(f"{path} line {number} is not JSON ({exc}): the log is damaged; remove its broken "
                       "lines to resume") from exc
    if not isinstance(record, dict):
        raise RtkError(f"{path} line {number} is not JSON object: the log is damaged; remove its broken "
                       "lines to resume")
    return record


@contextlib.contextmanager
def progress_display(is_main: bool, bar_wanted: bool, total: int, start: int) -> Iterator[Progress | None]:
    """None on DDP ranks other than 0 (they print nothing)."""
    if not is_main:
        yield None
        return
    with progress("train", total, start=start, wanted=bar_wanted) as shown:
        yield shown


def plot_curves(records: list[dict[str, Any]], path: Path, depth: int) -> None:
    """Error (%) of train and validation, loss and lr against iterations, like the paper's Figure 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if "epoch" in r and not r.get("final")]
    if not epochs:
        return
    steps = [r["step"] for r in epochs]
    fig, (ax_err, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_err.plot(steps, [100 - r["train_acc"] for r in epochs], label="train error (augmented)")
    ax_err.plot(steps, [100 - r["val_acc"] for r in epochs], label="validation error", linewidth=2)
    ax_err.set(xlabel="iterations", ylabel="error (%)", title=f"ResNet-{depth}", ylim=(0, 40))
    ax_err.legend()
    ax_err.grid(alpha=0.3)
    ax_loss.plot(steps, [r["train_loss"] for r in epochs], label="train")
    ax_loss.plot(steps, [r["val_loss"] for r in epochs], label="validation")
    ax_loss.set(xlabel="iterations", ylabel="cross-entropy", yscale="log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in epochs])
    ax_lr.set(xlabel="iterations", ylabel="learning rate", yscale="log")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
