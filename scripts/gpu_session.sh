#!/usr/bin/env bash
# Everything rtk measures on a CUDA machine (issue 24: one H200 lent through the device tool, 10 minutes
# a command, 15 minutes of device time in all), in parts, each with its own time limit and log:
#   ort      onnxruntime-gpu installed from the payload's wheel; a one-Conv model on its CUDA provider (CUDA
#            and cuDNN load, or this fails in seconds); then `rtk bench --backend onnxruntime --precision all`
#            on ResNet-20 and -56 (ORT_DEPTHS) with the payload's ONNX files: onnxruntime CUDA FP32, FP16 and
#            INT8 QDQ next to torch eager, CUDA graph, FP16 and bf16, 10k-image accuracy, batch 1/256/4096
#   train    ResNet-44 and -110 (DEPTHS) with `rtk train --recipe fast --epochs 100` (EPOCHS), one process
#            each, at once, each stopped after TRAIN_LIMIT s (default 540). A stopped run saves its checkpoint
#            (SIGTERM) and comes back as OUT/resnet<D>.resume.pt; PARTS=train resumes it, from the machine's
#            state while it is warm, else from a carried RESUME_DIR/resnet<D>.resume.pt (.resume/). The
#            final model of a finished run is reported (validation watched every epoch, the test set read
#            once at the end)
#   compile  ResNet-20 with `rtk train --recipe fast --compile reduce-overhead` (the recipe's 150 epochs): the
#            compile time (compile_seconds) apart from the training time (train_seconds)
#   torch20  `rtk bench --backend torch --precision all` with torch.compile on ResNet-20 (the first call
#            of each row and batch size, autotuning included, is in bench.json as first_call_s)
#   torch56  the same on ResNet-56: the payload's checkpoint, else untrained weights (latency only)
#   step     the paper recipe's training step (ResNet-20, batch 128; 64k iterations projected):
#            scripts/bench_train.py --compile reduce-overhead, 10 blocks
#   tests    the GPU-marked tests
# PARTS picks the parts (default: all, in that order; PARTS=none only puts the carried files in place).
# A failed or timed-out step does not stop the next. What each part wrote comes back as OUT/<part>.tar.gz
# (the device tool returns at most 8 files of 16 MiB), with OUT/session.tar.gz: env.txt (machine,
# versions, the commit) and steps.tsv (step, limit, exit status, seconds, command).
#
# Before any part, the payload parts this call carried (.payload/N, scripts/gpu_payload.sh) are stashed in
# STATE, and once all are there unpacked into STATE/payload: CIFAR-10 (RTK_DATA_DIR's default), the wheel,
# the ONNX files of part ort. STATE (default /root/rtk-state) keeps what later calls on the same warm
# machine need: the payload, the runs, the installed wheel.
#
# Usage: PARTS="ort" RTK_COMMIT=$(git rev-parse HEAD) scripts/gpu_session.sh OUT
#        SMOKE=1 ... scripts/gpu_session.sh OUT     # tiny settings on the CPU, to test this script
set -u
out=${1:?usage: gpu_session.sh OUT}
state=${STATE:-/root/rtk-state}
parts=${PARTS:-ort train compile torch20 torch56 step tests}
for part in $parts; do  # a typo must not cost a lease's minutes on the parts before it
  case $part in none|ort|train|compile|torch20|torch56|step|tests) ;;
    *) echo "error: unknown part $part (choose from ort train compile torch20 torch56 step tests none)" >&2; exit 2 ;;
  esac
done
payload_parts=${PAYLOAD_PARTS:-.payload} resume_dir=${RESUME_DIR:-.resume} payload=$state/payload
mkdir -p "$out/session" "$state/runs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------- what this call carried
if compgen -G "$payload_parts/*/payload.tar.part*" >/dev/null; then
  scripts/gpu_payload.sh stash "$payload_parts" "$state/payload-parts"
fi
if [ -f "$state/payload-parts/manifest" ]; then
  scripts/gpu_payload.sh unpack "$state/payload-parts" "$payload"
  unpacked=$?
  if [ "$unpacked" != 0 ] && [ "$parts" != none ]; then
    echo "error: the payload is not all here (see above): carry the missing parts with PARTS=none first" >&2
    exit 2
  fi
fi
export RTK_DATA_DIR=${RTK_DATA_DIR:-$payload/cifar-10-batches-py}

if [ "${SMOKE:-0}" = 1 ]; then
  device=cpu depths=${DEPTHS:-8 14} ort_depths=${ORT_DEPTHS:-20} compile_depth=8 limit_scale=3
  export RTK_CALIB_DIR="$state/calib"  # manifests of the tiny models stay out of the repo's calib/
  train_len=(--iterations "${ITERATIONS:-2}" --batch-size 32)
  bench_len=(--iterations 2 --warmup 0 --batch-sizes 1,8 --limit-images 64)
  step_args=(--device cpu --blocks 1 --steps 1 --warmup 1)
else
  device=cuda depths=${DEPTHS:-44 110} ort_depths=${ORT_DEPTHS:-20 56} compile_depth=20 limit_scale=1
  train_len=(--epochs "${EPOCHS:-100}")
  compile_len=()  # the fast recipe's own length (150 epochs)
  bench_len=(--batch-sizes 1,256,4096 --warmup 0.3 --duration 0.9)
  step_args=(--device cuda --compile reduce-overhead --warmup 200 --blocks 10)
fi
[ "${SMOKE:-0}" = 1 ] && compile_len=("${train_len[@]}")

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

{ date -u
  echo "commit ${RTK_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo 'unknown (not a git checkout; set RTK_COMMIT)')}"
  echo "parts: $parts; smoke: ${SMOKE:-0}"
  nvidia-smi || true
  python -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
  python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true
} >>"$out/session/env.txt" 2>&1
head -n 20 "$out/session/env.txt"

# ---------------------------------------------------------------- the parts
ship() {  # ship CHECKPOINT DEST: what rtk/weights/ ships, the checkpoint without its --resume state
  python -c "
import sys, torch
ckpt = torch.load(sys.argv[1], weights_only=True)
ckpt.pop('train_state', None)
torch.save(ckpt, sys.argv[2])
" "$1" "$2"
}

finished() {  # finished CHECKPOINT: whether the run wrote its final metrics (the test set's top-1)
  python -c "
import sys, torch
sys.exit(0 if 'test_acc' in torch.load(sys.argv[1], weights_only=True)['metrics'] else 1)
" "$1"
}

train_run() {  # train_run DIR NAME LIMIT DEPTH RUN ARGS...: one rtk train, resumed where a checkpoint is
  local dir=$1 name=$2 limit=$3 d=$4 run=$5 resume=() carried
  shift 5
  carried=$resume_dir/$(basename "$run").resume.pt
  if [ ! -f "$run/checkpoint.pt" ] && [ -f "$carried" ]; then  # stopped in an earlier lease
    mkdir -p "$run" && cp "$carried" "$run/checkpoint.pt"
  fi
  if [ -f "$run/checkpoint.pt" ]; then
    if finished "$run/checkpoint.pt"; then echo "== $name: finished in an earlier call"; return 0; fi
    resume=(--resume)
  fi
  step "$dir" "$name" "$limit" python -m rtk train --depth "$d" --recipe fast --device "$device" "$@" \
    --out-dir "$run" --no-progress "${resume[@]}"
}

bring_back() {  # bring_back DIR NAME RUN: the final model, or the resumable checkpoint of a stopped run
  local dir=$1 name=$2 run=$3 back
  [ -f "$run/checkpoint.pt" ] || return 0
  back=$(basename "$run").resume.pt
  cp "$run/metrics.jsonl" "$dir/$name.metrics.jsonl" 2>/dev/null
  if finished "$run/checkpoint.pt"; then
    ship "$run/checkpoint.pt" "$dir/$name.pt"
    cp "$run/curves.png" "$dir/$name-curves.png" 2>/dev/null
  else  # beside the archives, alone: 14 MB for ResNet-110 (weights and momentum), under the tool's 16 MiB
    cp "$run/checkpoint.pt" "$out/$back"
    echo "== $name stopped before its end: to resume it in a later lease, carry $resume_dir/$back (the file $back)"
  fi
}

train_part() {
  local res=$out/train d
  for d in $depths; do  # one process per depth: a small ResNet leaves the GPU mostly idle
    train_run "$res" "train$d" "${TRAIN_LIMIT:-540}" "$d" "$state/runs/resnet$d" "${train_len[@]}" &
  done
  wait
  for d in $depths; do bring_back "$res" "resnet$d" "$state/runs/resnet$d"; done
}

compile_part() {
  local res=$out/compile run=$state/runs/resnet$compile_depth-compiled
  train_run "$res" "train${compile_depth}-compiled" 300 "$compile_depth" "$run" --compile reduce-overhead \
    "${compile_len[@]}"
  bring_back "$res" "resnet${compile_depth}-compiled" "$run"
}

ort_part() {
  local res=$out/ort site=$state/ort-site d nvidia
  if [ ! -d "$site" ]; then
    step "$res" ort_install 60 python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$site" "$payload"/wheels/*.whl || return
    # onnxruntime.preload_dlls() loads the CUDA and cuDNN libraries of the nvidia-* wheels from beside
    # onnxruntime (site-packages/nvidia/...), where `pip install onnxruntime-gpu` next to torch puts them
    if nvidia=$(python -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null); then
      ln -sfn "$nvidia" "$site/nvidia"
    fi
  fi
  # A Conv without torch imported (as apps run ONNX files): a provider or cuDNN that does not load fails here
  PYTHONPATH="$site:$PYTHONPATH" step "$res" ort_check 30 python -c "
import sys, tempfile
import numpy as np
import onnx, onnxruntime as o
from onnx import TensorProto, helper, numpy_helper
from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner
print('onnxruntime', o.__version__, 'from', o.__file__, 'providers', o.get_available_providers())
io = [helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 3, 32, 32]),
      helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 10])]
weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 3, 3, 3), np.float32), 'w')
nodes = [helper.make_node('Conv', ['input', 'w'], ['maps'], pads=[1, 1, 1, 1]),  # [1, 10, 32, 32]
         helper.make_node('GlobalAveragePool', ['maps'], ['pooled']), helper.make_node('Flatten', ['pooled'], ['logits'])]
path = tempfile.mkdtemp() + '/conv.onnx'
graph = helper.make_graph(nodes, 'g', io[:1], io[1:], initializer=[weight])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)], ir_version=10), path)
x = np.random.default_rng(1).standard_normal((1, 3, 32, 32), np.float32)
with OnnxRuntimeRunner(path, device=sys.argv[1]) as runner, OnnxRuntimeRunner(path) as cpu:
    y, want = runner.infer({'input': x})['logits'], cpu.infer({'input': x})['logits']
    print('session providers', runner._session.get_providers(), 'max |device - cpu|', float(abs(y - want).max()))
    assert 'torch' not in sys.modules and np.allclose(y, want, atol=1e-3)
" "$device" || return
  for d in $ort_depths; do
    PYTHONPATH="$site:$PYTHONPATH" step "$res" "bench${d}_ort" 220 python -m rtk bench --backend onnxruntime \
      --precision all --depth "$d" --no-torch-compile --runs-dir "$payload/runs" --out "$res/bench${d}_ort" \
      "${bench_len[@]}"
  done
}

torch_bench() {  # torch_bench DEPTH LIMIT
  local res=$out/torch$1 ckpt=$payload/runs/resnet$1/checkpoint.pt extra=()
  [ -f "$ckpt" ] || ckpt=rtk/weights/resnet$1.pt  # what rtk ships
  if [ ! -f "$ckpt" ]; then  # latency does not depend on the weights
    ckpt=$state/resnet$1-untrained.pt extra=(--no-accuracy)
    python -c "
import sys
from rtk import checkpoint
from rtk.model import ResNet
checkpoint.save(sys.argv[1], ResNet(int(sys.argv[2])), split={}, recipe={'note': 'untrained, for latency only'}, metrics={})
" "$ckpt" "$1"
  fi
  step "$res" "bench$1" "$2" python -m rtk bench --backend torch --precision all --depth "$1" \
    --checkpoint "$ckpt" --runs-dir "$state/runs" --out "$res/bench$1" "${extra[@]}" "${bench_len[@]}"
}

for part in $parts; do
  case $part in
    none) ;;
    ort) ort_part ;;
    train) train_part ;;
    compile) compile_part ;;
    torch20) torch_bench 20 400 ;;
    torch56) torch_bench 56 540 ;;
    step) step "$out/step" bench_train 150 python scripts/bench_train.py "${step_args[@]}" \
            --out "$out/step/bench_train_$device.json" ;;
    tests) step "$out/tests" gpu_tests 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_data.py \
             tests/test_train.py ;;
  esac
done

for dir in "$out"/*/; do
  name=$(basename "$dir")
  tar czf "$out/$name.tar.gz" -C "$out" "$name" && rm -rf "$dir"
done
ls -la "$out"
