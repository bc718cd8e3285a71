"""rtk.bench: statistics against known inputs, timing loops, backend selection and its messages,
and a short end-to-end `rtk bench` on the CPU."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from rtk import bench, pipeline
from rtk.bench import machine as bench_machine
from rtk.bench import rows as bench_rows
from rtk.bench.accuracy import top1_accuracy
from rtk.bench.machine import busy
from rtk.bench.results import Row
from rtk.bench.rows import ENGINE_MAX_BATCH, BackendChoice, BenchConfig, choose_backend, plan_rows
from rtk.bench.timing import MIN_ITERATIONS, ROUNDS, TimingPlan, latency_stats, measure_interleaved
from rtk.cli import main
from rtk.errors import MissingDependency, RtkError
from rtk.names import BENCH_PRECISIONS

# ---------------------------------------------------------------- statistics


def test_latency_stats_of_known_latencies():
    seconds = [i / 1e3 for i in range(100, 0, -1)]  # 100 ms .. 1 ms, unsorted on purpose
    s = latency_stats(seconds, batch_size=10)
    assert s.iterations == 100
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)  # linear interpolation between the 90th and 91st values
    assert s.p99_ms == pytest.approx(99.01)
    assert s.min_ms == pytest.approx(1.0)
    assert s.throughput == pytest.approx(10 / 0.0505)


def test_latency_stats_of_one_call_and_of_none():
    s = latency_stats([0.002], batch_size=256)
    assert (s.mean_ms, s.p50_ms, s.p99_ms, s.min_ms) == pytest.approx((2.0, 2.0, 2.0, 2.0))
    assert s.throughput == pytest.approx(128_000)
    with pytest.raises(ValueError):
        latency_stats([], batch_size=1)


def test_top1_accuracy_and_speedups():
    assert top1_accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == pytest.approx(75.0)
    rows = [Row("torch eager fp32", "torch", "fp32", "cpu", "c.pt", baseline=True,
                      timings={"wall": [latency_stats([0.1], 256)]}),
            Row("openvino int8", "openvino", "int8", "cpu", "m.onnx",
                      timings={"wall": [latency_stats([0.01], 256)]})]
    bench._speedups(rows)
    assert rows[0].speedup == {"wall": {"256": pytest.approx(1.0)}}
    assert rows[1].speedup == {"wall": {"256": pytest.approx(10.0)}}


# ---------------------------------------------------------------- timing loops


def recording_calls(*names: str):
    """Timed calls that record their order in `log` and each take 1 ms."""
    log: list[str] = []

    def make(name: str):
        def call() -> float:
            log.append(name)
            return 0.001
        return call

    return [make(name) for name in names], log


def test_fixed_iterations_are_split_over_interleaved_rounds_after_the_warmup():
    calls, log = recording_calls("a", "b")
    latencies = measure_interleaved(calls, TimingPlan(warmup_s=0, duration_s=None, iterations=7))
    assert [len(taken) for taken in latencies] == [7, 7]
    assert ROUNDS == 3
    # one warm-up call each, then rounds of 3, 2, 2 calls alternating between the rows
    assert "".join(log) == "ab" + "aaabbb" + "aabb" + "aabb"


def test_the_first_call_of_each_row_is_recorded_with_its_compile_time():
    calls, _ = recording_calls("a")
    compiled: list[bool] = []

    def compiling() -> float:  # a torch.compile row: its first call compiles for 50 ms
        if not compiled:
            compiled.append(True)
            time.sleep(0.05)
        return 0.001

    first_calls: list[float] = []
    measure_interleaved([calls[0], compiling], TimingPlan(warmup_s=0, duration_s=None, iterations=3), first_calls)
    assert len(first_calls) == 2 and first_calls[1] >= 0.05 > first_calls[0]


def test_duration_mode_makes_at_least_the_minimum_calls():
    calls, _ = recording_calls("a")
    latencies = measure_interleaved(calls, TimingPlan(warmup_s=0, duration_s=1e-9))
    assert len(latencies[0]) >= MIN_ITERATIONS


def test_timing_plan_needs_exactly_one_of_duration_and_iterations():
    with pytest.raises(RtkError):
        TimingPlan(duration_s=1.0, iterations=3)
    with pytest.raises(RtkError):
        TimingPlan(duration_s=None, iterations=None)


# ---------------------------------------------------------------- backend selection


def have(*modules: str):
    return lambda module: module in modules


def test_auto_on_a_cpu_picks_openvino_and_says_why():
    choice = choose_backend("auto", None, have("openvino", "onnxruntime"))
    assert (choice.backend, choice.device) == ("openvino", "cpu")
    assert "no CUDA device" in choice.reason and "fastest CPU backend" in choice.reason
    assert "onnxruntime also measured" in choice.reason


def test_auto_on_a_cpu_without_openvino_picks_onnxruntime():
    choice = choose_backend("auto", None, have("onnxruntime", "tensorrt"))
    assert (choice.backend, choice.device) == ("onnxruntime", "cpu")


def test_auto_on_a_gpu():
    gpu_package, cpu_package = (lambda: True), (lambda: False)  # onnxruntime lists CUDAExecutionProvider
    choice = choose_backend("auto", "NVIDIA H100", have("tensorrt", "onnxruntime"), gpu_package)
    assert (choice.backend, choice.device) == ("tensorrt", "cuda") and "NVIDIA H100" in choice.reason
    choice = choose_backend("auto", "NVIDIA H100", have("onnxruntime"), gpu_package)
    assert (choice.backend, choice.device) == ("onnxruntime", "cuda") and "onnxruntime-gpu is" in choice.reason
    choice = choose_backend("auto", "NVIDIA H100", have("onnxruntime", "tensorrt_rtx"), cpu_package)
    assert (choice.backend, choice.device) == ("torch", "cuda")  # TensorRT for RTX only when asked for
    assert "TensorRT is not installed" in choice.reason
    choice = choose_backend("tensorrt-rtx", "NVIDIA GeForce RTX 4090", have("tensorrt_rtx"), cpu_package)
    assert (choice.backend, choice.device) == ("tensorrt-rtx", "cuda")


def test_onnxruntime_asked_for_on_a_gpu_runs_on_cuda_only_with_the_gpu_package():
    choice = choose_backend("onnxruntime", "NVIDIA H200", have("onnxruntime"), lambda: True)
    assert (choice.backend, choice.device) == ("onnxruntime", "cuda") and "CUDAExecutionProvider" in choice.reason
    choice = choose_backend("onnxruntime", "NVIDIA H200", have("onnxruntime"), lambda: False)
    assert (choice.backend, choice.device) == ("onnxruntime", "cpu")
    assert "no CUDAExecutionProvider (pip install onnxruntime-gpu)" in choice.reason
    assert choose_backend("onnxruntime", None, have("onnxruntime"), lambda: True).device == "cpu"


@pytest.mark.parametrize("asked, gpu, modules, message", [
    ("tensorrt", None, (), "TensorRT is not installed"),
    ("tensorrt", "NVIDIA H100", (), "TensorRT is not installed"),
    ("tensorrt", None, ("tensorrt",), "no CUDA device"),
    ("tensorrt-rtx", "NVIDIA GeForce RTX 4090", ("tensorrt",), r"TensorRT for RTX is not installed.*rtk\[rtx-cu13\]"),
    ("tensorrt-rtx", None, ("tensorrt_rtx",), "no CUDA device"),
    ("openvino", None, ("onnxruntime",), "openvino is not installed"),
    ("auto", None, (), "no CPU backend installed"),
])
def test_unavailable_backends_are_refused(asked, gpu, modules, message):
    with pytest.raises(MissingDependency, match=message) as info:
        choose_backend(asked, gpu, have(*modules))
    assert info.value.exit_code == 2


def test_cli_tensorrt_without_tensorrt_exits_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "installed", lambda module: module != "tensorrt")
    result = CliRunner().invoke(main, ["bench", "--backend", "tensorrt", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        ("error: --backend tensorrt: TensorRT is not installed; install it with: pip install 'rtk[gpu-cu13]' "
         "(CUDA 13 driver) or 'rtk[gpu-cu12]' (CUDA 12 driver) (needs a CUDA GPU)")]
    assert not list(tmp_path.iterdir())  # nothing made before the refusal


@pytest.mark.parametrize("args, message", [
    (["--duration", "1", "--iterations", "3"], "not both"),
    (["--batch-sizes", "1,a"], "comma-separated integers"),
    (["--batch-sizes", "0,8"], "every batch size must be an integer from 1 to 16,384"),
    (["--batch-sizes", "1,10000000"], "every batch size must be an integer from 1 to 16,384"),
])
def test_cli_refuses_bad_options(args, message, tmp_path):
    result = CliRunner().invoke(main, ["bench", "--runs-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


def test_cli_help():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for option in ("--precision", "--backend", "--batch-sizes", "--warmup", "--duration", "--iterations",
                   "--threads", "--out", "--accuracy / --no-accuracy"):
        assert option in result.output
    assert "--limit-images" not in result.output  # hidden testing aid


def test_cli_without_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "shipped_checkpoint", lambda depth: None)
    result = CliRunner().invoke(main, ["bench", "--backend", "onnxruntime", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "rtk train --depth 20" in result.stderr and "Traceback" not in result.output


# ---------------------------------------------------------------- planning rows (nothing runs)


def test_plan_on_a_gpu_has_the_torch_variants_and_engines_for_every_batch(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(pipeline, "ensure_engine",
                        lambda paths, precision, *args, runtime, **options: built.append((precision, options))
                        or paths.engine(precision, runtime))
    paths = pipeline.run_paths(20, tmp_path)
    choice = BackendChoice("tensorrt", "cuda", "test")
    rows, notes = plan_rows(choice, BenchConfig(precisions=("bf16", "int8")), paths,
                                  tmp_path / "checkpoint.pt", (1, 256, 4096), lambda message: None)
    assert [row.key for row in rows] == [
        "torch eager fp32 False", "torch eager fp16 True", "torch cuda_graph fp32 False",
        "torch compile fp16 True", "tensorrt int8"]
    assert built == [("int8", {"max_batch": 4096})]  # the engine's profile reaches the largest batch
    assert notes and notes[0].startswith("bf16:")
    config = BenchConfig(precisions=("fp32",), torch_compile=False)
    rows, _ = plan_rows(choice, config, paths, tmp_path / "c.pt", (1, 8), lambda message: None)
    assert "torch compile fp16 True" not in [row.key for row in rows]
    assert built[-1] == ("fp32", {"max_batch": ENGINE_MAX_BATCH})
    # TensorRT for RTX: its own engine file, beside TensorRT's
    rows, _ = plan_rows(BackendChoice("tensorrt-rtx", "cuda", "test"), config, paths, tmp_path / "c.pt", (1, 8),
                        lambda message: None)
    assert rows[-1].key == "tensorrt-rtx fp32" and rows[-1].artifact == paths.root / "model.fp32.rtx.plan"


def test_plan_for_onnxruntime_on_a_gpu_has_its_cuda_rows_next_to_the_torch_ones(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(pipeline, "ensure_onnx_for", lambda paths, precision, *args:
                        made.append(precision) or (paths.fp16_onnx if precision == "fp16" else paths.onnx))
    monkeypatch.setattr(pipeline, "ensure_int8_onnx", lambda paths, target, **options:
                        made.append(f"int8 {target}") or paths.int8_onnx(target))
    monkeypatch.setattr(bench_rows, "cuda_stream", lambda: 7)  # torch.cuda.Stream() needs a GPU
    paths = pipeline.run_paths(20, tmp_path)
    config = BenchConfig(precisions=BENCH_PRECISIONS, torch_compile=False)
    rows, notes = plan_rows(BackendChoice("onnxruntime", "cuda", "test"), config, paths,
                            tmp_path / "checkpoint.pt", (1, 256, 4096), lambda message: None)
    assert [row.key for row in rows] == [
        "torch eager fp32 False", "torch eager fp16 True", "torch cuda_graph fp32 False",
        "onnxruntime cuda fp32", "onnxruntime cuda fp16", "torch eager bf16 True", "onnxruntime cuda int8"]
    assert made == ["fp32", "fp16", "int8 tensorrt"]  # INT8: the GPU flavour of the QDQ file
    assert rows[-1].artifact == paths.int8_onnx("tensorrt")
    runner = rows[-1].make()  # not activated: nothing runs
    assert (runner.backend, runner.device, runner.compute_stream) == ("onnxruntime", "cuda", 7)
    assert notes == ["bf16: onnxruntime has no bf16 ONNX file in rtk; the torch bf16 row stands for it"]


def test_plan_for_torch_alone_notes_that_int8_has_no_torch_path(tmp_path):
    paths = pipeline.run_paths(20, tmp_path)
    rows, notes = plan_rows(BackendChoice("torch", "cpu", "test"),
                                  BenchConfig(precisions=("fp32", "bf16", "int8")), paths,
                                  tmp_path / "checkpoint.pt", (1,), lambda message: None)
    assert [row.key for row in rows] == ["torch eager fp32 False", "torch eager bf16 False"]
    assert notes == ["int8: torch has no INT8 path in rtk; use an ONNX or TensorRT backend"]


# ---------------------------------------------------------------- end to end on the CPU


def test_bench_int8_on_cpu_end_to_end(bench_run):
    data, out = bench_run["json"], bench_run["out"]
    names = [row["name"] for row in data["rows"]]
    assert names == ["torch eager fp32", "onnxruntime fp32", "onnxruntime int8", "openvino int8"]
    assert data["rows"][0]["baseline"] and data["device"] == "cpu" and data["threads"] == 1
    assert data["backend_choice"]["backend"] == "openvino" and "no CUDA device" in data["backend_choice"]["reason"]
    for row in data["rows"]:
        stats = row["timings"]["wall"]
        assert [s["batch_size"] for s in stats] == [1, 8]
        assert all(s["iterations"] == 3 and 0 < s["min_ms"] <= s["p50_ms"] <= s["p99_ms"] for s in stats)
        assert row["accuracy"]["images"] == 10_000
        assert set(row["first_call_s"]) == {"1", "8"} and min(row["first_call_s"].values()) > 0
    torch_row, ort_fp32, ort_int8, ov_int8 = data["rows"]
    assert torch_row["accuracy"]["delta_vs_baseline"] == 0 and torch_row["accuracy"]["agreement_vs_baseline"] == 100
    assert ort_fp32["accuracy"]["agreement_vs_baseline"] > 99.9  # the same network in FP32
    assert ort_int8["accuracy"]["agreement_vs_baseline"] > 80 and ov_int8["accuracy"]["agreement_vs_baseline"] > 80
    assert torch_row["accuracy"]["evidence_vs_baseline"]["p_value"] == 1.0  # against itself: nothing fixed or broken
    for row in (ort_int8, ov_int8):  # the difference comes with the images behind it
        evidence = row["accuracy"]["evidence_vs_baseline"]
        assert evidence["images"] == 10_000 and 0 <= evidence["p_value"] <= 1
        assert (evidence["fixed"] - evidence["broken"]) / 100 == pytest.approx(row["accuracy"]["delta_vs_baseline"])
    assert torch_row["accuracy"]["top1"] > 15  # the readout model is far above chance (10%)
    # the reused model.int8.cpu.onnx (bench_runs_dir: 256 images) reports its own calibration
    assert ort_int8["calibration"]["method"] == "percentile" and ort_int8["calibration"]["num_images"] == 256
    assert torch_row["calibration"] is None
    assert "- INT8 calibration of model.int8.cpu.onnx: percentile, 256 images, seed 0" in (out / "bench.md").read_text()
    env = data["environment"]
    assert env["cpu"] and env["usable_cores"] >= 1 and env["packages"]["onnxruntime"] and env["git"]
    assert "CPUExecutionProvider" in env["onnxruntime_module"]["providers"]
    assert isinstance(env["command"], str) and env["command"]
    assert (out / "bench.md").is_file() and (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "backend: openvino on cpu (auto: no CUDA device" in bench_run["result"].stderr
    stdout = bench_run["result"].stdout
    assert "torch eager fp32 (baseline)" in stdout and "Accuracy" in stdout and str(out / "bench.json") in stdout


def test_bench_all_precisions_without_accuracy(bench_runs_dir, cifar_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "bench", "--precision", "all", "--runs-dir", str(bench_runs_dir), "--data-dir", str(cifar_dir),
        "--batch-sizes", "2", "--warmup", "0", "--iterations", "2", "--no-accuracy", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [row["name"] for row in data["rows"]] == [
        "torch eager fp32", "onnxruntime fp32", "openvino fp32", "openvino bf16", "torch eager bf16",
        "onnxruntime int8", "openvino int8"]
    assert all(row["accuracy"] is None for row in data["rows"])
    assert any(note.startswith("fp16:") for note in data["notes"])


def test_bench_accuracy_on_a_subset_with_limit_images(bench_runs_dir, cifar_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "bench", "--precision", "fp32", "--backend", "onnxruntime", "--runs-dir", str(bench_runs_dir),
        "--data-dir", str(cifar_dir), "--batch-sizes", "1", "--warmup", "0", "--iterations", "1",
        "--limit-images", "200", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["torch eager fp32", "onnxruntime fp32"]
    assert {row["accuracy"]["images"] for row in data["rows"]} == {200}
    assert data["config"]["limit_images"] == 200


def test_busy_machine_counts_other_work_only(monkeypatch):
    """Right after timing on 2 threads the load average holds those 2 threads: not a busy machine."""
    monkeypatch.setattr(bench_machine, "usable_cores", lambda: 2)
    cpu = BackendChoice("openvino", "cpu", "test")
    assert not busy(cpu, 0.7)
    assert busy(cpu, 1.6)
    assert not busy(cpu, 2.4, own_threads=2)
    assert busy(cpu, 3.4, own_threads=2)
    assert not busy(BackendChoice("tensorrt", "cuda", "test"), 9.0)
