#!/usr/bin/env bash
# Everything rtk measures on a CUDA machine (issue 15: one H200 lent through the device tool, 10 minutes
# a command, 15 minutes of device time in all), in parts, each with its own time limit and log:
#   train    ResNet-32, -44 and -56 with `rtk train --recipe fast`, three processes at once (EPOCHS,
#            default 60: 7.1 minutes if their GPU time adds up, from the H100's 1.01 s per ResNet-20
#            epoch (docs/training.md) scaled by depth; limit 550 s). The final model of each run
#            is reported; validation watched every epoch, the test set read once at the end
#   ort      onnxruntime-gpu installed from the carried wheel parts (scripts/ort_gpu_wheel.sh), then one
#            `rtk bench --backend onnxruntime --precision all` on ResNet-20: onnxruntime CUDA FP32, FP16
#            and INT8 QDQ next to the torch CUDA rows, accuracy on the 10k test set, batch 1/256/4096
#   torch20  `rtk bench --backend torch --precision all` with torch.compile on ResNet-20 (the first call
#            of each row and batch size, autotuning included, is in bench.json as first_call_s)
#   torch56  the same on ResNet-56: the one `train` made on this machine, else untrained weights
#            (latency only, --no-accuracy)
#   step     the paper recipe's training step (ResNet-20, batch 128; 64k iterations projected):
#            scripts/bench_train.py --compile reduce-overhead, 10 blocks
#   tests    the GPU-marked tests
# PARTS picks the parts (default: all, in that order; PARTS=none only puts the carried files in place).
# A failed or timed-out step does not stop the next. What each part wrote comes back as OUT/<part>.tar.gz
# (the device tool returns at most 8 files of 16 MiB), with OUT/session.tar.gz: env.txt (machine,
# versions, the commit) and steps.tsv (step, limit, exit status, seconds, command).
#
# Before any part, what the call carried is put in place: .cifar-parts/N/* (../shared/tools/cifar-device-parts)
# into RTK_DATA_DIR, .ort-parts/N (scripts/ort_gpu_wheel.sh fetch) into STATE/ort-parts. STATE (default
# /root/rtk-state) keeps what later calls on the same warm machine need: the runs, the installed wheel.
#
# Usage: PARTS="train" RTK_COMMIT=$(git rev-parse HEAD) RTK_DATA_DIR=/root/cifar/cifar-10-batches-py \
#          scripts/gpu_session.sh OUT
#        SMOKE=1 ... scripts/gpu_session.sh OUT     # tiny settings on the CPU, to test this script
set -u
out=${1:?usage: gpu_session.sh OUT}
: "${RTK_DATA_DIR:?set RTK_DATA_DIR to the CIFAR-10 folder (filled from .cifar-parts if carried)}"
state=${STATE:-/root/rtk-state}
parts=${PARTS:-train ort torch20 torch56 step tests}
for part in $parts; do  # a typo must not cost a lease's minutes on the parts before it
  case $part in none|train|ort|torch20|torch56|step|tests) ;;
    *) echo "error: unknown part $part (choose from train ort torch20 torch56 step tests none)" >&2; exit 2 ;;
  esac
done
cifar_parts=${CIFAR_PARTS:-.cifar-parts} ort_parts=${ORT_PARTS:-.ort-parts}
mkdir -p "$out/session" "$state/runs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "${SMOKE:-0}" = 1 ]; then
  device=cpu depths="8 14 20" limit_scale=3
  export RTK_CALIB_DIR="$state/calib"  # manifests of the tiny models stay out of the repo's calib/
  train_len=(--iterations 2 --batch-size 32)
  bench_len=(--iterations 2 --warmup 0 --batch-sizes 1,8 --limit-images 64)
  step_args=(--device cpu --blocks 1 --steps 1 --warmup 1)
else
  device=cuda depths="32 44 56" limit_scale=1
  train_len=(--epochs "${EPOCHS:-60}")
  bench_len=(--batch-sizes 1,256,4096 --warmup 0.5 --duration 1.5)
  step_args=(--device cuda --compile reduce-overhead --warmup 200 --blocks 10)
fi

step() {  # step DIR NAME SECONDS CMD...: run with a time limit, log to DIR/NAME.log, record how it went
  local dir=$1 name=$2 limit=$(( $3 * limit_scale )) began=$SECONDS rc
  shift 3
  mkdir -p "$dir"
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$dir/$name.log" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(( SECONDS - began ))s"
  local command="$*"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" "$rc" "$(( SECONDS - began ))" "${command//$'\n'/ }" \
    >>"$out/session/steps.tsv"
  tail -n 4 "$dir/$name.log"
  return "$rc"
}

# ---------------------------------------------------------------- what this call carried
if compgen -G "$cifar_parts/*/*" >/dev/null; then
  mkdir -p "$RTK_DATA_DIR" && cp "$cifar_parts"/*/* "$RTK_DATA_DIR/" && echo "CIFAR-10 parts copied into $RTK_DATA_DIR"
fi
if compgen -G "$ort_parts/*/*.part*" >/dev/null; then
  scripts/ort_gpu_wheel.sh stash "$ort_parts" "$state/ort-parts"
fi

{ date -u
  echo "commit ${RTK_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo 'unknown (not a git checkout; set RTK_COMMIT)')}"
  echo "parts: $parts; smoke: ${SMOKE:-0}"
  nvidia-smi || true
  python -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
  python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true
} >>"$out/session/env.txt" 2>&1
head -n 20 "$out/session/env.txt"

# ---------------------------------------------------------------- the parts
train_part() {
  local res=$out/train d
  for d in $depths; do  # one process per depth: a small ResNet leaves the GPU mostly idle
    step "$res" "train$d" 550 python -m rtk train --depth "$d" --recipe fast --device "$device" "${train_len[@]}" \
      --out-dir "$state/runs/resnet$d" --no-progress &
  done
  wait
  for d in $depths; do  # what rtk/weights/ ships: the checkpoint without its --resume state, the log, the curves
    [ -f "$state/runs/resnet$d/checkpoint.pt" ] || continue
    python -c "
import sys, torch
ckpt = torch.load(sys.argv[1], weights_only=True)
ckpt.pop('train_state', None)
torch.save(ckpt, sys.argv[2])
" "$state/runs/resnet$d/checkpoint.pt" "$res/resnet$d.pt"
    cp "$state/runs/resnet$d/metrics.jsonl" "$res/resnet$d.metrics.jsonl"
    cp "$state/runs/resnet$d/curves.png" "$res/resnet$d-curves.png" 2>/dev/null || true
  done
}

ort_part() {
  local res=$out/ort site=$state/ort-site
  if [ -d "$site/onnxruntime" ]; then
    echo "onnxruntime-gpu is already in $site (an earlier call on this machine)"
  elif [ "${SMOKE:-0}" != 1 ] || [ -f "$state/ort-parts/manifest" ]; then  # SMOKE: a dummy wheel, if given
    step "$res" ort_install 120 scripts/ort_gpu_wheel.sh install "$state/ort-parts" "$site" || return
  fi
  # A one-node model on the device first: a CUDA provider that does not load shows here in seconds.
  PYTHONPATH="$site:$PYTHONPATH" step "$res" ort_check 60 python -c "
import sys, tempfile
import onnx, onnxruntime as o
from onnx import TensorProto, helper
from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner
print('onnxruntime', o.__version__, 'from', o.__file__, 'providers', o.get_available_providers())
io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 10]) for n in ('input', 'logits')]
path = tempfile.mkdtemp() + '/relu.onnx'
graph = helper.make_graph([helper.make_node('Relu', ['input'], ['logits'])], 'g', io[:1], io[1:])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)], ir_version=10), path)
with OnnxRuntimeRunner(path, device=sys.argv[1]) as runner:
    print('session providers', runner._session.get_providers())
" "$device"
  PYTHONPATH="$site:$PYTHONPATH" step "$res" bench20_ort 300 python -m rtk bench --backend onnxruntime \
    --precision all --depth 20 --no-torch-compile --runs-dir "$state/runs" --out "$res/bench20_ort" "${bench_len[@]}"
}

torch_bench() {  # torch_bench DEPTH LIMIT
  local res=$out/torch$1 ckpt=$state/runs/resnet$1/checkpoint.pt extra=()
  if [ ! -f "$ckpt" ] && [ "$1" != 20 ]; then  # latency does not depend on the weights
    ckpt=$state/resnet$1-untrained.pt extra=(--no-accuracy)
    python -c "
import sys
from rtk import checkpoint
from rtk.model import ResNet
checkpoint.save(sys.argv[1], ResNet(int(sys.argv[2])), split={}, recipe={'note': 'untrained, for latency only'}, metrics={})
" "$ckpt" "$1"
  fi
  [ -f "$ckpt" ] || ckpt=rtk/weights/resnet20.pt  # the shipped ResNet-20
  step "$res" "bench$1" "$2" python -m rtk bench --backend torch --precision all --depth "$1" \
    --checkpoint "$ckpt" --runs-dir "$state/runs" --out "$res/bench$1" "${extra[@]}" "${bench_len[@]}"
}

for part in $parts; do
  case $part in
    none) ;;
    train) train_part ;;
    ort) ort_part ;;
    torch20) torch_bench 20 400 ;;
    torch56) torch_bench 56 540 ;;
    step) step "$out/step" bench_train 150 python scripts/bench_train.py "${step_args[@]}" \
            --out "$out/step/bench_train_$device.json" ;;
    tests) step "$out/tests" gpu_tests 60 python -m pytest -q -p no:cacheprovider -m gpu tests/test_data.py ;;
  esac
done

for dir in "$out"/*/; do
  name=$(basename "$dir")
  tar czf "$out/$name.tar.gz" -C "$out" "$name" && rm -rf "$dir"
done
ls -la "$out"
