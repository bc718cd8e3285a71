"""rtk.report: targets against known figures, and the files' schema (JSON keys, Markdown tables, PNG)."""

from __future__ import annotations

import json

import pytest

from rtk import bench, report
from rtk.bench.results import FORMAT, Accuracy, BenchResult, Row
from rtk.bench.timing import MIN_ITERATIONS, ROUNDS, TIMING_KINDS, LatencyStats, latency_stats


def stats(batch_size: int, ms: float) -> LatencyStats:
    return latency_stats([ms / 1e3] * 5, batch_size)


def row(name: str, backend: str, precision: str, ms_by_batch: dict[int, float], *, device: str = "cpu",
        top1: float | None = None, baseline: bool = False) -> Row:
    kinds = ["wall"] if device == "cpu" else ["compute", "end_to_end"]
    return Row(
        name=name, backend=backend, precision=precision, device=device, artifact=f"{name}.file", baseline=baseline,
        timings={kind: [stats(b, ms) for b, ms in ms_by_batch.items()] for kind in kinds},
        accuracy=None if top1 is None else Accuracy(top1=top1, images=10000))


def result(rows: list[Row], *, device: str = "cpu", depth: int = 20) -> dict:
    base = rows[0]
    for r in rows:
        if r.accuracy and base.accuracy:
            r.accuracy.delta_vs_baseline = r.accuracy.top1 - base.accuracy.top1
            r.accuracy.agreement_vs_baseline = 99.0
    bench._speedups(rows)
    return BenchResult(
        format=FORMAT, model={"depth": depth, "checkpoint": "ckpt.pt", "checkpoint_sha256": "ab" * 32,
                                    "metrics": {}},
        config={"precisions": ["int8"], "backend": "auto", "warmup_s": 1.0, "duration_s": 3.0, "iterations": None,
                "min_iterations": MIN_ITERATIONS, "rounds": ROUNDS, "accuracy": True, "limit_images": None,
                "timing_input": "synthetic"},
        backend_choice={"backend": "openvino", "device": device, "reason": "auto: test"},
        device=device, threads=2, batch_sizes=[1, 256, 4096] if device == "cuda" else [1, 256],
        timing_kinds={k: v for k, v in TIMING_KINDS.items() if k in rows[0].timings},
        rows=rows, notes=["fp16: skipped"],
        environment={"cpu": "Test CPU", "cpu_cores": 2, "usable_cores": 2, "threads": 2, "gpu": None,
                     "gpu_driver": None, "load_average_before": 0.1, "packages": {"torch": "2.13.0"},
                     "rtk": "0.1.0", "git": "abc", "python": "3.11", "command": "rtk bench"},
    ).to_dict()


def cpu_result(openvino_ms: float = 10.0, int8_top1: float = 92.1) -> dict:
    # batch 256 latencies (ms): torch 128 -> 2,000 img/s; ort fp32 64; ort int8 32; openvino int8 `openvino_ms`
    return result([
        row("torch eager fp32", "torch", "fp32", {1: 2.0, 256: 128.0}, top1=92.3, baseline=True),
        row("onnxruntime fp32", "onnxruntime", "fp32", {1: 0.5, 256: 64.0}, top1=92.3),
        row("onnxruntime int8", "onnxruntime", "int8", {1: 0.3, 256: 32.0}, top1=92.25),
        row("openvino int8", "openvino", "int8", {1: 0.35, 256: openvino_ms}, top1=int8_top1),
    ])


def by_target(targets: list[dict]) -> dict[str, dict]:
    return {t["target"]: t for t in targets}


def test_cpu_targets_from_known_figures():
    targets = by_target(report.evaluate_targets(cpu_result()))
    fastest_vs_torch = targets["fastest INT8 CPU backend vs torch eager FP32"]
    assert fastest_vs_torch["value"] == pytest.approx(12.8) and fastest_vs_torch["met"]
    assert "openvino int8" in fastest_vs_torch["detail"]
    assert targets["fastest INT8 CPU backend vs onnxruntime FP32"]["value"] == pytest.approx(6.4)
    assert targets["onnxruntime INT8 vs torch eager FP32"]["value"] == pytest.approx(4.0)
    assert targets["onnxruntime INT8 vs onnxruntime FP32"]["value"] == pytest.approx(2.0)
    latency = targets["batch-1 p50 latency, fastest INT8 vs torch eager FP32"]
    assert latency["value"] == pytest.approx(0.15) and latency["met"]  # onnxruntime int8: 0.3 / 2.0
    assert targets["openvino int8 accuracy delta vs torch FP32"]["value"] == pytest.approx(-0.2)
    assert all(t["met"] for t in targets.values())


def test_missed_targets_are_reported_as_missed():
    res = cpu_result(openvino_ms=20.0, int8_top1=91.9)  # 6.4x torch, 3.2x onnxruntime; -0.4 points
    targets = by_target(report.evaluate_targets(res))
    assert targets["fastest INT8 CPU backend vs torch eager FP32"]["met"] is False
    assert targets["fastest INT8 CPU backend vs onnxruntime FP32"]["met"] is False
    assert targets["openvino int8 accuracy delta vs torch FP32"]["met"] is False
    md = report.markdown(report.with_targets(res))
    assert md.count("MISSED") == 3


def test_speed_targets_of_a_busy_run_are_unreliable_never_met():
    """The same figures that meet every target on an idle machine (test above), from a run flagged busy."""
    res = cpu_result()
    res["environment"]["busy"] = True
    targets = report.evaluate_targets(res)
    speed = [t for t in targets if "accuracy" not in t["target"]]
    assert len(speed) == 5 and all(t["status"] == "unreliable" and t["met"] is False for t in speed)
    assert all(t["met"] for t in targets if "accuracy" in t["target"])  # accuracy does not depend on load
    md = report.markdown(report.with_targets(res))
    accuracy_targets = len(targets) - len(speed)
    assert md.count("UNRELIABLE") == 5 and md.count("| met |") == accuracy_targets, md


def test_targets_only_where_rows_exist():
    res = result([row("torch eager fp32", "torch", "fp32", {1: 2.0, 256: 128.0}, baseline=True),
                  row("onnxruntime fp32", "onnxruntime", "fp32", {1: 0.5, 256: 64.0})])
    assert report.evaluate_targets(res) == []


def test_cuda_targets_use_compute_timings():
    res = result([
        row("torch eager fp32", "torch", "fp32", {1: 1.0, 4096: 16.0}, device="cuda", baseline=True),
        row("torch compile fp16 channels_last", "torch", "fp16", {1: 0.25, 4096: 5.0}, device="cuda"),
        row("tensorrt int8", "tensorrt", "int8", {1: 0.08, 4096: 2.0}, device="cuda"),
    ], device="cuda")
    targets = by_target(report.evaluate_targets(res))
    assert targets["TensorRT INT8 vs torch.compile FP16"]["value"] == pytest.approx(2.5)
    assert targets["TensorRT INT8 batch-1 p50 latency (compute)"]["met"]


def test_write_reports_schema(tmp_path):
    paths = report.write_reports(cpu_result(), tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == sorted(report.REPORT_FILES)

    data = json.loads(paths["bench.json"].read_text())
    assert {"format", "model", "config", "backend_choice", "device", "threads", "batch_sizes", "timing_kinds",
            "rows", "notes", "environment", "targets"} <= set(data)
    assert data["format"] == FORMAT
    first = data["rows"][0]
    assert first["baseline"] and first["name"] == "torch eager fp32"
    assert set(first["timings"]["wall"][0]) == {"batch_size", "iterations", "mean_ms", "p50_ms", "p90_ms",
                                                 "p99_ms", "min_ms", "throughput"}
    assert data["rows"][3]["speedup"]["wall"]["256"] == pytest.approx(12.8)
    assert {"top1", "delta_vs_baseline", "agreement_vs_baseline"} <= set(first["accuracy"])

    md = paths["bench.md"].read_text()
    assert "| batch | row | mean ms | p50 ms | p90 ms | p99 ms | min ms | img/s | speed-up | calls |" in md
    assert "| 256 | openvino int8 | 10.0 | 10.0 | 10.0 | 10.0 | 10.0 | 25,600 | 12.80x | 5 |" in md
    assert "## Accuracy (10000 CIFAR-10 test images)" in md and "## Targets" in md and "issue" not in md
    assert "| target | for | required | value | result | figures |" in md
    assert all(target["for"] for target in data["targets"])  # each says what it is for
    assert "- fp16: skipped" in md

    assert paths["bench.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary files


def test_terminal_tables_show_every_row_uncut(capsys):
    from rich.console import Console

    report.print_tables(report.with_targets(cpu_result()), Console(width=report.TABLE_WIDTH, force_terminal=False))
    out = capsys.readouterr().out
    for name in ("torch eager fp32 (baseline)", "onnxruntime fp32", "onnxruntime int8", "openvino int8"):
        assert name in out
    assert "25,600" in out and "12.80x" in out and "note: fp16: skipped" in out


def test_ms_format_keeps_four_significant_digits():
    assert [report._ms(v) for v in (0.2913, 1.5, 26.52, 199.9, 1195.6)] == ["0.291", "1.50", "26.5", "200", "1196"]


def test_reference_columns_only_for_a_row_with_a_reference():
    res = cpu_result()
    header, _ = report.accuracy_table(res)
    assert "reference" not in header
    res["rows"][3]["accuracy"] = {**res["rows"][3]["accuracy"], "reference": "onnxruntime on model.int8.tensorrt.onnx",
                                  "delta_vs_reference": 0.01, "agreement_vs_reference": 99.9,
                                  "evidence_vs_reference": {"fixed": 3, "broken": 2, "p_value": 1.0}}
    header, lines = report.accuracy_table(res)
    assert header[-4:] == report.REFERENCE_HEADER
    assert lines[3][-4:] == ["onnxruntime on model.int8.tensorrt.onnx", "+0.01", "+3/-2, p=1.00", "99.90%"]
    assert lines[2][3] == "-"  # a row measured without its evidence says so


def test_report_redraws_from_bench_json_alone(tmp_path):
    first = report.write_reports(cpu_result(), tmp_path / "a")
    data = json.loads(first["bench.json"].read_text())
    again = report.write_reports(data, tmp_path / "b")
    assert again["bench.md"].read_text() == first["bench.md"].read_text()


def test_row_without_stats_at_a_batch_is_left_out_of_the_table():
    res = cpu_result()
    res["rows"][3] = {**res["rows"][3], "timings": {"wall": [res["rows"][3]["timings"]["wall"][0]]}}
    lines = report.latency_table_rows(res, "wall")
    assert [line[:2] for line in lines if line[0] == "256"] == [
        ["256", "torch eager fp32 (baseline)"], ["256", "onnxruntime fp32"], ["256", "onnxruntime int8"]]



def test_markdown_names_the_calibration_of_each_int8_artifact():
    res = cpu_result()
    res["rows"][2]["calibration"] = {"method": "entropy", "num_images": 1024, "seed": 3, "manifest": "calib/x.json"}
    res["rows"][3]["calibration"] = dict(res["rows"][2]["calibration"])
    md = report.markdown(res)
    artifact = res["rows"][2]["artifact"]
    assert f"- INT8 calibration of {artifact}: entropy, 1024 images, seed 3" in md
    assert md.count("- INT8 calibration of") == 1 + (res["rows"][3]["artifact"] != artifact)


def ort_cuda_result(int8_ms: dict[int, float]) -> dict:
    """onnxruntime CUDA rows beside torch's; compute-only latencies (ms) at batch 1, 256 and 4096."""
    return result([
        row("torch eager fp32", "torch", "fp32", {1: 1.0, 256: 4.0, 4096: 16.0}, device="cuda", baseline=True),
        row("torch cuda-graph fp32", "torch", "fp32", {1: 0.1, 256: 3.0, 4096: 15.0}, device="cuda"),
        row("torch eager bf16 channels_last", "torch", "bf16", {1: 0.9, 256: 3.5, 4096: 15.5}, device="cuda"),
        row("onnxruntime cuda fp32", "onnxruntime", "fp32", {1: 0.5, 256: 4.0, 4096: 16.0}, device="cuda"),
        row("onnxruntime cuda fp16", "onnxruntime", "fp16", {1: 0.5, 256: 2.0, 4096: 8.0}, device="cuda"),
        row("onnxruntime cuda int8", "onnxruntime", "int8", int8_ms, device="cuda"),
    ], device="cuda")


def test_int8_slower_than_fp16_is_said_in_words(tmp_path, capsys):
    from rich.console import Console

    res = ort_cuda_result({1: 0.4, 256: 3.0, 4096: 12.0})  # faster than FP16 at batch 1 only
    (sentence,) = report.slower_in_lower_precision(res)
    assert sentence.startswith("onnxruntime cuda int8 is slower than onnxruntime cuda fp16 at batch 256, 4096 "
                               "(compute only (CUDA events); batch 256: 85,333 vs 128,000 img/s (0.67x); "
                               "batch 4096: 341,333 vs 512,000 img/s (0.67x)): INT8 buys no speed over FP16 here")
    assert "no INT8 convolution kernels" in sentence  # the known cause of onnxruntime's CUDA provider
    md = report.write_reports(res, tmp_path)["bench.md"].read_text()
    assert f"## Slower in a lower precision\n\n- {sentence}\n" in md
    report.print_tables(res, Console(width=1000, force_terminal=False))
    assert f"slower: {sentence}" in capsys.readouterr().out
    # slower than FP32 as well at every batch size: a second sentence says that too
    everywhere = report.slower_in_lower_precision(ort_cuda_result({1: 0.6, 256: 5.0, 4096: 20.0}))
    assert [s.split(" (")[0] for s in everywhere] == [
        "onnxruntime cuda int8 is slower than onnxruntime cuda fp32 at every batch size measured",
        "onnxruntime cuda int8 is slower than onnxruntime cuda fp16 at every batch size measured"]


def test_faster_lower_precisions_and_other_runners_are_not_flagged():
    # torch bf16 eager is slower than torch's FP32 CUDA graph, but that is another way of running, not precision
    assert report.slower_in_lower_precision(ort_cuda_result({1: 0.3, 256: 1.5, 4096: 6.0})) == []
    assert report.slower_in_lower_precision(cpu_result()) == []
    assert "Slower in a lower precision" not in report.markdown(cpu_result())
