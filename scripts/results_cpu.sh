#!/usr/bin/env bash
# Every CPU figure of docs/results.md for ResNet-20, exactly as it was made:
#   1. rtk export's validation of the shipped checkpoint (README, "Every step checked")
#   2. both INT8 flavours with each calibration method, and FP16, validated on the test set
#      (docs/quantization.md; exits 1 because the entropy models are refused, so it is not fatal here)
#   3. the CPU benchmarks (scripts/bench_cpu.sh)
#
#   RTK_DATA_DIR=/path/to/cifar-10-batches-py scripts/results_cpu.sh [OUT]
# The GPU figures come from scripts/gpu_session.sh on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RTK_DATA_DIR:?set RTK_DATA_DIR to the cifar-10-batches-py folder}"
out=${1:-runs/results-cpu}
mkdir -p "$out"
rtk export --depth 20 --runs-dir "$out/runs" | tee "$out/export.txt"
rtk quantize --depth 20 --precision all --method all --runs-dir "$out/runs" | tee "$out/quantize.txt" || true
RTK_RUNS_DIR="$out/runs" scripts/bench_cpu.sh "$out/bench"
