"""Benchmark reports: the terminal table, bench.json, bench.md and bench.png, from one result dict.

Everything here reads the plain dict of rtk.bench.results.BenchResult.to_dict() (the content of bench.json),
so a report can be redrawn from a bench.json alone. The speed and accuracy targets are evaluated here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rtk.errors import require
from rtk.fileio import atomic_path, write_text_atomic
from rtk.stats import brief

REPORT_FILES = ("bench.json", "bench.md", "bench.png")
STAT_COLUMNS = ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms")
KIND_TITLES = {"wall": "wall clock", "compute": "compute only (CUDA events)",
               "end_to_end": "end to end (host in, host out)"}

# The targets (first set in issue 5). CPU: INT8 at batch 256 against torch eager FP32 and onnxruntime FP32,
# batch-1 p50, accuracy. CUDA (ResNet-20): TensorRT INT8 against torch.compile FP16.
CPU_BATCH, GPU_BATCH, LATENCY_BATCH = 256, 4096, 1
MAX_ACCURACY_DELTA = 0.3  # points of top-1, |INT8 - torch FP32|
MAX_LATENCY_RATIO = 0.2  # batch-1 p50 of the fastest INT8 row / torch eager FP32's
MAX_TRT_BATCH1_MS = 0.1
TABLE_WIDTH = 130  # terminal columns the tables need at least


# ---------------------------------------------------------------- lookups

def _stats(row: dict[str, Any], kind: str, batch_size: int) -> dict[str, Any] | None:
    return next((s for s in row["timings"].get(kind, []) if s["batch_size"] == batch_size), None)


def _find(rows: list[dict[str, Any]], backend: str, precision: str, name: str | None = None
          ) -> dict[str, Any] | None:
    return next((r for r in rows if r["backend"] == backend and r["precision"] == precision
                 and (name is None or r["name"] == name)), None)


def primary_kind(result: dict[str, Any]) -> str:
    """The timing the plots and targets use: compute-only on a GPU, wall clock on a CPU."""
    return "compute" if result["device"] == "cuda" else "wall"


# ---------------------------------------------------------------- targets

# What each target is for, by target name (the accuracy targets end in ACCURACY_TARGET).
PURPOSES = {
    "fastest INT8 CPU backend vs torch eager FP32": "CPU serving: INT8 worth shipping over plain PyTorch",
    "fastest INT8 CPU backend vs onnxruntime FP32": "CPU serving: INT8 worth it over the same model in FP32 ONNX",
    "onnxruntime INT8 vs torch eager FP32": "the portable CPU path (onnxruntime alone) beats PyTorch",
    "onnxruntime INT8 vs onnxruntime FP32": "quantization alone pays off in onnxruntime",
    "batch-1 p50 latency, fastest INT8 vs torch eager FP32": "interactive use: one image at a time on a CPU",
    "TensorRT INT8 vs torch.compile FP16": "GPU serving: TensorRT worth it over the best PyTorch",
    "TensorRT INT8 batch-1 p50 latency (compute)": "interactive use: one image at a time on a GPU",
}
ACCURACY_TARGET = " accuracy delta vs torch FP32"
ACCURACY_PURPOSE = "INT8 keeps the accuracy of the FP32 model"


def _target(name: str, required: str, value: float | None, met: bool, detail: str) -> dict[str, Any]:
    purpose = ACCURACY_PURPOSE if name.endswith(ACCURACY_TARGET) else PURPOSES[name]
    return {"target": name, "for": purpose, "required": required, "value": value, "met": met,
            "status": "met" if met else "missed", "detail": detail}


def _unreliable(target: dict[str, Any]) -> dict[str, Any]:
    """A speed target of a run on a busy machine: whatever its value, not evidence either way.
    (Other work slows torch's OpenMP baseline most, which inflated speed-ups to 195-489x once.)"""
    return {**target, "met": False, "status": "unreliable",
            "detail": f"{target['detail']}; the machine was busy while timing, so this is no measurement"}


def _throughput_ratio(name: str, row: dict | None, ref: dict | None, kind: str, batch: int,
                      need: float) -> dict[str, Any] | None:
    if row is None or ref is None:
        return None
    a, b = _stats(row, kind, batch), _stats(ref, kind, batch)
    if a is None or b is None:
        return None
    ratio = a["throughput"] / b["throughput"]
    return _target(name, f">= {need:g}x", ratio, ratio >= need,
                   f"{row['name']} {a['throughput']:,.0f} img/s vs {ref['name']} {b['throughput']:,.0f} img/s "
                   f"at batch {batch}")


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets that this run's rows can answer, each with its figures and a status: "met",
    "missed", or "unreliable" for a speed target of a run flagged busy (`met` is true only for "met")."""
    rows, kind = result["rows"], primary_kind(result)
    baseline = rows[0]
    targets: list[dict[str, Any] | None] = []
    if result["device"] == "cpu":
        int8 = [(r, s) for r in rows if r["precision"] == "int8" and (s := _stats(r, kind, CPU_BATCH))]
        fastest = max(int8, key=lambda pair: pair[1]["throughput"], default=(None, None))[0]
        ort32, ort8 = _find(rows, "onnxruntime", "fp32"), _find(rows, "onnxruntime", "int8")
        targets += [
            _throughput_ratio("fastest INT8 CPU backend vs torch eager FP32", fastest, baseline, kind, CPU_BATCH, 8),
            _throughput_ratio("fastest INT8 CPU backend vs onnxruntime FP32", fastest, ort32, kind, CPU_BATCH, 5),
            _throughput_ratio("onnxruntime INT8 vs torch eager FP32", ort8, baseline, kind, CPU_BATCH, 3),
            _throughput_ratio("onnxruntime INT8 vs onnxruntime FP32", ort8, ort32, kind, CPU_BATCH, 1.8),
        ]
        quick = [(r, s) for r in rows if r["precision"] == "int8" and (s := _stats(r, kind, LATENCY_BATCH))]
        base1 = _stats(baseline, kind, LATENCY_BATCH)
        if quick and base1:
            best, best1 = min(quick, key=lambda pair: pair[1]["p50_ms"])
            ratio = best1["p50_ms"] / base1["p50_ms"]
            targets.append(_target("batch-1 p50 latency, fastest INT8 vs torch eager FP32",
                                   f"<= {MAX_LATENCY_RATIO:g}x", ratio, ratio <= MAX_LATENCY_RATIO,
                                   f"{best['name']} {best1['p50_ms']:.3f} ms vs "
                                   f"{baseline['name']} {base1['p50_ms']:.3f} ms"))
    elif result["model"]["depth"] == 20:
        trt8 = _find(rows, "tensorrt", "int8")
        compiled = _find(rows, "torch", "fp16", name="torch compile fp16 channels_last")
        targets.append(_throughput_ratio("TensorRT INT8 vs torch.compile FP16", trt8, compiled, kind, GPU_BATCH, 2))
        trt1 = _stats(trt8, kind, LATENCY_BATCH) if trt8 else None
        if trt1:
            targets.append(_target("TensorRT INT8 batch-1 p50 latency (compute)", f"< {MAX_TRT_BATCH1_MS:g} ms",
                                   trt1["p50_ms"], trt1["p50_ms"] < MAX_TRT_BATCH1_MS,
                                   f"{trt1['p50_ms']:.4f} ms"))
    if result["environment"].get("busy"):
        targets = [t and _unreliable(t) for t in targets]
    for row in rows:  # accuracy does not depend on the load
        acc = row["accuracy"]
        if row["precision"] == "int8" and acc and acc["delta_vs_baseline"] is not None:
            delta = acc["delta_vs_baseline"]
            targets.append(_target(f"{row['name']}{ACCURACY_TARGET}", f"within {MAX_ACCURACY_DELTA:g} points",
                                   delta, abs(delta) <= MAX_ACCURACY_DELTA,
                                   f"top-1 {acc['top1']:.2f}% on {acc['images']} images"))
    return [t for t in targets if t is not None]


def with_targets(result: dict[str, Any]) -> dict[str, Any]:
    """The result with its evaluated targets under "targets", as bench.json stores it."""
    return {**result, "targets": evaluate_targets(result)}


def targets_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result["targets"] if "targets" in result else evaluate_targets(result)


# ---------------------------------------------------------------- text

def _fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _ms(value: float) -> str:
    """Milliseconds with about four significant digits: 0.2913, 26.52, 1196."""
    return f"{value:.{max(0, 3 - len(str(int(abs(value)))) + (value < 1))}f}"


LATENCY_HEADER = ["batch", "row", "mean ms", "p50 ms", "p90 ms", "p99 ms", "min ms", "img/s", "speed-up",
                  "calls"]
ACCURACY_HEADER = ["row", "top-1 %", "delta vs torch fp32", "fixed/broken, p", "agreement vs torch fp32"]
REFERENCE_HEADER = ["reference", "delta vs reference", "fixed/broken, p", "agreement vs reference"]
TARGET_HEADER = ["target", "for", "required", "value", "result", "figures"]


def latency_table_rows(result: dict[str, Any], kind: str) -> list[list[str]]:
    """One line per (batch size, row) of one timing kind."""
    lines = []
    for batch in result["batch_sizes"]:
        for row in result["rows"]:
            s = _stats(row, kind, batch)
            if s is None:
                continue
            speedup = row["speedup"].get(kind, {}).get(str(batch))
            lines.append([str(batch), row["name"] + (" (baseline)" if row["baseline"] else ""),
                          *(_ms(s[c]) for c in STAT_COLUMNS), f"{s['throughput']:,.0f}",
                          _fmt(speedup, ".2f", "x"), str(s["iterations"])])
    return lines


def accuracy_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and lines of the accuracy table; reference columns only where a row has a reference."""
    scored = [row for row in result["rows"] if row["accuracy"]]
    with_reference = any(row["accuracy"]["reference"] for row in scored)
    lines = []
    for row in scored:
        acc = row["accuracy"]
        line = [row["name"], f"{acc['top1']:.2f}", _fmt(acc["delta_vs_baseline"], "+.2f"),
                brief(acc.get("evidence_vs_baseline")), _fmt(acc["agreement_vs_baseline"], ".2f", "%")]
        if with_reference:
            line += [acc["reference"] or "-", _fmt(acc["delta_vs_reference"], "+.2f"),
                     brief(acc.get("evidence_vs_reference")), _fmt(acc["agreement_vs_reference"], ".2f", "%")]
        lines.append(line)
    return ACCURACY_HEADER + (REFERENCE_HEADER if with_reference else []), lines


# Half and INT8 precision exist to be faster; a row that is slower than the same runner in a wider
# precision is said in words, not left to a reader of the tables. The cause, where rtk knows it:
PRECISION_WIDTH = {"fp32": 2, "fp16": 1, "bf16": 1, "int8": 0}
SLOWER_BECAUSE = {
    ("onnxruntime", "cuda", "int8"): "onnxruntime's CUDA provider has no INT8 convolution kernels (onnxruntime runs "
    "INT8 on NVIDIA GPUs through its TensorRT provider), so the QDQ file's convolutions run in float with its "
    "quantize and dequantize steps added; INT8 speed on a GPU comes from a TensorRT engine (rtk build)",
}


def slower_in_lower_precision(result: dict[str, Any]) -> list[str]:
    """One sentence per pair of rows of one runner (same backend, device and name but for the precision)
    where the narrower precision has the lower throughput, at the batch sizes where it does."""
    kind, sentences = primary_kind(result), []
    for low in result["rows"]:
        for high in result["rows"]:
            same_runner = (low["backend"], low["device"]) == (high["backend"], high["device"]) and \
                low["name"].replace(low["precision"], "") == high["name"].replace(high["precision"], "")
            if not same_runner or PRECISION_WIDTH[low["precision"]] >= PRECISION_WIDTH[high["precision"]]:
                continue
            slower = [(batch, a["throughput"], b["throughput"]) for batch in result["batch_sizes"]
                      if (a := _stats(low, kind, batch)) and (b := _stats(high, kind, batch))
                      and a["throughput"] < b["throughput"]]
            if not slower:
                continue
            measured = [batch for batch in result["batch_sizes"] if _stats(low, kind, batch) and _stats(high, kind, batch)]
            where = "at every batch size measured" if len(slower) == len(measured) else "at batch " + ", ".join(
                str(batch) for batch, _, _ in slower)
            figures = "; ".join(f"batch {batch}: {a:,.0f} vs {b:,.0f} img/s ({a / b:.2f}x)" for batch, a, b in slower)
            because = SLOWER_BECAUSE.get((low["backend"], low["device"], low["precision"]))
            sentences.append(f"{low['name']} is slower than {high['name']} {where} ({KIND_TITLES[kind]}; {figures}): "
                             f"{low['precision'].upper()} buys no speed over {high['precision'].upper()} here"
                             + (f". Why: {because}." if because else "."))
    return sentences


def target_table_rows(targets: list[dict[str, Any]]) -> list[list[str]]:
    return [[t["target"], t.get("for", "-"), t["required"], _fmt(t["value"], ".3g"),
             "met" if t["met"] else t.get("status", "missed").upper(), t["detail"]] for t in targets]


def _markdown_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def _setup_lines(result: dict[str, Any]) -> list[str]:
    env, cfg = result["environment"], result["config"]
    versions = ", ".join([f"{k} {v}" for k, v in env["packages"].items() if v]
                         + ([f"TensorRT {env['tensorrt']}"] if env.get("tensorrt") else []))
    gpu = f"{env['gpu']} (driver {env['gpu_driver']}, CUDA {env.get('cuda')})" if env["gpu"] else "none"
    timing = (f"{cfg['iterations']} calls" if cfg["iterations"] else f"{cfg['duration_s']:g} s "
              f"(at least {cfg['min_iterations']} calls)") + (
        f" per point after {cfg['warmup_s']:g} s warm-up, in {cfg['rounds']} rounds interleaved across the rows")
    choice = result["backend_choice"]
    load = env.get("load_average_before")
    return [
        f"- backend: {choice['backend']} on {result['device']} ({choice['reason']})",
        (f"- CPU: {env['cpu']} ({' '.join(env.get('cpu_features', [])) or 'features unknown'}), "
         f"{env['cpu_cores']} cores ({env['usable_cores']} usable), {result['threads']} threads, "
         f"load average {_fmt(load, '.1f')} before timing"),
        f"- GPU: {gpu}",
        f"- timing: {timing}; {cfg['timing_input']}",
        f"- versions: {versions}; rtk {env['rtk']}, git {env['git']}, Python {env['python']}",
        f"- command: `{env['command']}`",
        f"- checkpoint: {result['model']['checkpoint']} (sha256 {result['model']['checkpoint_sha256'][:12]})",
        *_calibration_lines(result),
    ]


def _calibration_lines(result: dict[str, Any]) -> list[str]:
    """How each INT8 artifact measured was calibrated, as its own metadata records (a file reused
    from an earlier `rtk quantize --method entropy` says so)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in result["rows"]:
        if row.get("calibration"):
            seen.setdefault(Path(row["artifact"]).name, row["calibration"])
    return [f"- INT8 calibration of {name}: {c.get('method', '?')}, {c.get('num_images', '?')} images, "
            f"seed {c.get('seed', '?')}" for name, c in seen.items()]


def markdown(result: dict[str, Any]) -> str:
    depth = result["model"]["depth"]
    parts = [f"# rtk bench: ResNet-{depth}, {', '.join(result['config']['precisions'])}", "",
             *_setup_lines(result)]
    for kind, text in result["timing_kinds"].items():
        parts += ["", f"## Latency and throughput: {KIND_TITLES[kind]}", "", text, "",
                  _markdown_table(LATENCY_HEADER, latency_table_rows(result, kind))]
    header, accuracy = accuracy_table(result)
    if accuracy:
        images = next(r["accuracy"]["images"] for r in result["rows"] if r["accuracy"])
        parts += ["", f"## Accuracy ({images} CIFAR-10 test images)", "", _markdown_table(header, accuracy)]
    targets = targets_of(result)
    if targets:
        parts += ["", "## Targets", "", _markdown_table(TARGET_HEADER, target_table_rows(targets))]
    slower = slower_in_lower_precision(result)
    if slower:
        parts += ["", "## Slower in a lower precision", "", *(f"- {sentence}" for sentence in slower)]
    if result["notes"]:
        parts += ["", "## Notes", "", *(f"- {note}" for note in result["notes"])]
    return "\n".join(parts) + "\n"


def print_tables(result: dict[str, Any], console: Any = None) -> None:
    """The latency, accuracy and target tables on the terminal (stdout unless `console` says else)."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:  # numbers must not be cut: wider than a narrow terminal rather than truncated
        console = Console(width=max(Console().width, TABLE_WIDTH))
    depth = result["model"]["depth"]

    def table(title: str, header: list[str], lines: list[list[str]], text_columns: int,
              wrap: tuple[str, ...] = ()) -> Table:
        # Only the `wrap` columns may wrap: a figure or a verdict ("UNRELIABLE") is never cut.
        t = Table(title=title, box=box.SIMPLE_HEAD)
        for i, col in enumerate(header):
            width = max(len(cell) for cell in [col, *(line[i] for line in lines)])
            t.add_column(col, justify="left" if i < text_columns else "right", no_wrap=col not in wrap,
                         min_width=None if col in wrap else width)
        for line in lines:
            style = "bold red" if {"MISSED", "UNRELIABLE"} & set(line) else ("bold" if any("(baseline)" in c for c in line) else None)
            t.add_row(*line, style=style)
        return t

    for kind in result["timing_kinds"]:
        console.print(table(f"ResNet-{depth} on {result['device']}, {result['threads']} threads: "
                            f"{KIND_TITLES[kind]}", LATENCY_HEADER, latency_table_rows(result, kind), 2))
    header, accuracy = accuracy_table(result)
    if accuracy:
        console.print(table("Accuracy", header, accuracy, 1))
    targets = targets_of(result)
    if targets:
        console.print(table("Targets", TARGET_HEADER[:-1],
                            [line[:-1] for line in target_table_rows(targets)], 2, wrap=("for",)))
    for sentence in slower_in_lower_precision(result):
        console.print(f"[bold]slower:[/bold] {escape(sentence)}", highlight=False)
    for note in result["notes"]:
        console.print(f"note: {note}")


# ---------------------------------------------------------------- plot

def plot(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """bench.png: p50 latency against batch size per row | throughput at the largest batch | top-1."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    kind, rows = primary_kind(result), result["rows"]
    largest = max(result["batch_sizes"])
    has_accuracy = any(r["accuracy"] for r in rows)
    fig, axes = plt.subplots(1, 3 if has_accuracy else 2, figsize=(17 if has_accuracy else 12, 5))
    latency_ax, throughput_ax = axes[0], axes[1]
    for row in rows:
        stats = row["timings"].get(kind, [])
        if stats:
            latency_ax.plot([s["batch_size"] for s in stats], [s["p50_ms"] for s in stats], marker="o",
                            label=row["name"], linewidth=2.5 if row["baseline"] else 1.5)
    latency_ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (ms)",
                   title=f"Latency per batch ({KIND_TITLES[kind]})")
    latency_ax.grid(True, which="both", alpha=0.3)
    latency_ax.legend(fontsize=8)

    measured = [(r["name"], _stats(r, kind, largest)) for r in rows]
    measured = [(name, s["throughput"]) for name, s in measured if s]
    throughput_ax.barh([n for n, _ in measured], [v for _, v in measured], color="tab:blue")
    throughput_ax.invert_yaxis()
    throughput_ax.set(xlabel="images / s", title=f"Throughput at batch {largest}")
    for i, (_, value) in enumerate(measured):
        throughput_ax.text(value, i, f" {value:,.0f}", va="center", fontsize=8)

    if has_accuracy:
        scored = [(r["name"], r["accuracy"]["top1"]) for r in rows if r["accuracy"]]
        acc_ax = axes[2]
        acc_ax.barh([n for n, _ in scored], [v for _, v in scored], color="tab:green")
        acc_ax.invert_yaxis()
        low = min(v for _, v in scored)
        acc_ax.set(xlabel="top-1 %", title="Accuracy (CIFAR-10 test)", xlim=(max(0.0, low - 2), 100))
        for i, (_, value) in enumerate(scored):
            acc_ax.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    fig.suptitle(f"rtk bench: ResNet-{result['model']['depth']} on {result['device']} "
                 f"({result['environment']['gpu'] or result['environment']['cpu']}, {result['threads']} threads)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_reports(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """bench.json (everything, with the evaluated targets), bench.md and bench.png, each atomically."""
    out = Path(out_dir)
    result = with_targets(result) if "targets" not in result else result
    paths = {name: out / name for name in REPORT_FILES}
    write_text_atomic(paths["bench.json"], json.dumps(result, indent=2) + "\n")
    write_text_atomic(paths["bench.md"], markdown(result))
    plot(result, paths["bench.png"])
    return paths
