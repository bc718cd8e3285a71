#!/usr/bin/env bash
# Every CPU figure of docs/results.md for one shipped depth (DEPTH, default 20), exactly as it was made:
#   1. rtk export's validation of the shipped checkpoint (README, "Every step checked")
#   2. both INT8 flavours and FP16, validated on the test set (docs/quantization.md): for ResNet-20
#      with each calibration method (exits 1 because the entropy models are refused, so it is not
#      fatal here); for the other depths the default method, whose tuned values calib/ ships
#   3. the CPU benchmarks: for ResNet-20 scripts/bench_cpu.sh (all cores, one thread, every
#      precision); for the other depths its every-precision run: accuracy of every CPU backend and
#      the speed of each against torch eager FP32, at batch 1, 32 and 256, in one run
#
#   RTK_DATA_DIR=/path/to/cifar-10-batches-py [DEPTH=32] scripts/results_cpu.sh [OUT]
# The GPU figures come from scripts/gpu_session.sh on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RTK_DATA_DIR:?set RTK_DATA_DIR to the cifar-10-batches-py folder}"
depth=${DEPTH:-20}
out=${1:-runs/results-cpu/resnet$depth}
mkdir -p "$out"
# The timings of step 3 want an idle machine: the export and quantize steps' own load decays first
# (the 1-minute load average below 0.8, waited for at most 5 minutes; rtk bench records what it was).
quiet() { for _ in $(seq 60); do awk '{ exit !($1 < 0.8) }' /proc/loadavg && return; sleep 5; done; }
rtk export --depth "$depth" --runs-dir "$out/runs" | tee "$out/export.txt"
if [ "$depth" = 20 ]; then
  rtk quantize --depth 20 --precision all --method all --runs-dir "$out/runs" | tee "$out/quantize.txt" || true
  quiet
  RTK_RUNS_DIR="$out/runs" scripts/bench_cpu.sh "$out/bench"
else
  rtk quantize --depth "$depth" --precision all --runs-dir "$out/runs" | tee "$out/quantize.txt"
  { uname -a; lscpu; } >"$out/machine.txt"
  quiet
  rtk bench --depth "$depth" --precision all --runs-dir "$out/runs" --out "$out/bench"
fi
