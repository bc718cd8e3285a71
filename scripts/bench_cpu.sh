#!/usr/bin/env bash
# The CPU benchmark figures of docs/benchmarks.md (issue 5, items 1 and 2), exactly as they were made.
#
#   RTK_DATA_DIR=/path/to/cifar-10-batches-py scripts/bench_cpu.sh [OUT]
#
# Starts from runs/resnet20/checkpoint.pt (or the ResNet-20 weights shipped in rtk/weights/);
# export, both INT8 calibrations and the benchmark run from there (rtk.pipeline makes what is
# missing). Each run writes bench.json, bench.md and bench.png into OUT/<name> (default
# runs/bench-cpu) and prints its tables. Run it on an otherwise idle machine: bench.json records the
# load average before timing, and the report flags a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench-cpu}
: "${RTK_DATA_DIR:?set RTK_DATA_DIR to the cifar-10-batches-py folder}"
mkdir -p "$out"
{ uname -a; lscpu; } >"$out/machine.txt"

# Item 1: INT8 on every CPU backend against torch eager FP32 and onnxruntime FP32, all cores.
rtk bench --depth 20 --precision int8 --out "$out/int8"
# The same on one thread: per-core figures, and robust against other work on a shared machine.
rtk bench --depth 20 --precision int8 --threads 1 --out "$out/int8-1thread"
# Item 2: FP32, FP16 (no CPU backend here runs it: noted in the report), bf16 and INT8.
rtk bench --depth 20 --precision all --out "$out/all"
