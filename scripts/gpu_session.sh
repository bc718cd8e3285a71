#!/usr/bin/env bash
# Everything rtk measures on a CUDA machine, in one lease (the device tool lends 15 minutes):
#   1. train the ResNet-20 that rtk ships (--recipe fast) on the real CIFAR-10
#   2. the torch CUDA baselines of `rtk bench` for ResNet-20 (trained) and ResNet-56 (untrained
#      weights: latency does not depend on them) at batch 1, 256, 4096
#   3. training step time of rtk's CUDA path against a plain eager loop (scripts/bench_train.py)
#   4. the GPU-marked tests (augmentation on CUDA equals the CPU's)
# Each step has its own time limit and log; a failed step does not stop the next. Everything lands
# in OUT/results.tar.gz (the device tool returns at most 8 files).
#
# Usage: RTK_DATA_DIR=/path/to/cifar-10-batches-py scripts/gpu_session.sh OUT
#        SMOKE=1 ... scripts/gpu_session.sh OUT     # tiny settings on a CPU, to test this script
set -u
out=${1:?usage: gpu_session.sh OUT}
res="$out/results"
mkdir -p "$res"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: "${RTK_DATA_DIR:?set RTK_DATA_DIR to the CIFAR-10 folder}"

if [ "${SMOKE:-0}" = 1 ]; then
  device=cpu; train_len=(--iterations 3 --batch-size 64); bench_len=(--iterations 2 --warmup 0 --batch-sizes 1,8)
  step_args=(--device cpu --blocks 1 --steps 1 --warmup 1); limit_scale=3
else
  device=cuda; train_len=(--epochs 100); bench_len=(--batch-sizes 1,256,4096 --warmup 0.5 --duration 1.5)
  step_args=(--device cuda --compile reduce-overhead); limit_scale=1
fi

step() {  # step NAME SECONDS CMD...: run with a time limit, log to results/NAME.log, say how it went
  local name=$1 limit=$(( $2 * limit_scale )) began=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$res/$name.log" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(( SECONDS - began ))s"
  tail -n 4 "$res/$name.log"
}

{ nvidia-smi || true
  python -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
} >"$res/env.txt" 2>&1
head -n 20 "$res/env.txt"

step train20 200 python -m rtk train --depth 20 --recipe fast --device "$device" "${train_len[@]}" \
  --out-dir "$res/resnet20" --no-progress
python -c "
import sys
from rtk import checkpoint
from rtk.model import ResNet
checkpoint.save(sys.argv[1], ResNet(56), split={}, recipe={'note': 'untrained, for latency only'}, metrics={})
" "$res/resnet56-untrained.pt"
# torch.compile rows are left out: max-autotune takes minutes per shape, more than the lease holds.
step bench20 60 python -m rtk bench --backend torch --precision all --depth 20 --no-torch-compile \
  --checkpoint "$res/resnet20/checkpoint.pt" --out "$res/bench20" "${bench_len[@]}"
step bench56 90 python -m rtk bench --backend torch --precision all --depth 56 --no-accuracy --no-torch-compile \
  --checkpoint "$res/resnet56-untrained.pt" --out "$res/bench56" "${bench_len[@]}"
step bench_train 90 python scripts/bench_train.py "${step_args[@]}" --out "$res/bench_train_$device.json"
step gpu_tests 20 python -m pytest -q -p no:cacheprovider -m gpu tests/test_data.py

tar czf "$out/results.tar.gz" -C "$out" results && rm -rf "$res"
ls -la "$out"
