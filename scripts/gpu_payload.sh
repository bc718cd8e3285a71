#!/usr/bin/env bash
# What a GPU session (scripts/gpu_session.sh) needs on the device machine, which has no network: carried in
# parts, since the device tool moves at most 64 MiB a call, the working tree that travels with it included.
#
# Here, once (DIR: a folder .gitignore ignores, such as .payload; nothing of it goes into git):
#   scripts/gpu_payload.sh prepare DIR    gathers in DIR.src, then packs as below (INCLUDE=data: the first alone):
#       cifar-10-batches-py/   the CIFAR-10 batches of RTK_DATA_DIR (links; tar copies the files)
#       wheels/                onnxruntime-gpu 1.31.1 for the device's Python 3.12 (pip download, PyPI's sha256)
#       runs/resnet<D>/        for part `ort`, D in ORT_DEPTHS (default "20 56"): the checkpoint
#                              (CHECKPOINT_<D>, else the one rtk ships) and its model.onnx, model.fp16.onnx and
#                              model.int8.tensorrt.onnx made here by rtk export / rtk quantize, so the device
#                              spends no minutes calibrating and tuning (calibration manifests: DIR.src/calib)
#   scripts/gpu_payload.sh pack DIR SRC   one tar of the folder SRC (links followed), split into DIR/1, DIR/2, ...,
#                                         each part at most PART_SIZE bytes and with a manifest (sha256, parts).
#                                         PART_SIZE defaults to 64 MiB less the working tree that travels with
#                                         every call (git's tracked and untracked-not-ignored files) and 2 MiB:
#                                         add nothing to the tree between packing and the last call
# On the device, in each call that carries a part (carry: [".payload/N"]):
#   scripts/gpu_payload.sh stash DIR STORE      copy the parts present under DIR into STORE (kept while warm)
#   scripts/gpu_payload.sh unpack STORE TARGET  once every part is there: join, check the sha256, untar into
#                                               TARGET (then TARGET/.complete); exit 3 while parts are missing
set -euo pipefail
ORT_VERSION=1.31.1
ORT_WHEEL=onnxruntime_gpu-$ORT_VERSION-cp312-cp312-manylinux_2_28_x86_64.whl
ORT_SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7  # PyPI's, for $ORT_WHEEL
CALL_LIMIT=$((64 * 1024 * 1024))  # bytes the device tool moves in one call, working tree included
MARGIN=$((2 * 1024 * 1024))

die() { echo "error: $*" >&2; exit 1; }
field() { sed -n "s/^$1=//p" "$2"; }  # field KEY MANIFEST

tree_bytes() {  # what travels with every call: tracked files and untracked ones git does not ignore
  git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

pack() {  # pack DIR SRC
  local dir=$1 src=$2 size sha parts i tree
  [ -d "$src" ] || die "no folder $src to pack"
  if [ -e "$dir" ] && find "$dir" -mindepth 1 -maxdepth 1 ! -name '[0-9]*' | grep -q .; then
    die "$dir holds other things than payload parts: give an empty or new folder"
  fi
  tree=$(tree_bytes)
  size=${PART_SIZE:-$((CALL_LIMIT - tree - MARGIN))}
  [ -n "${PART_SIZE:-}" ] || [ "$size" -gt $((8 * 1024 * 1024)) ] || die "the working tree ($tree bytes) leaves no room"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  tar -cf - -h -C "$src" . | split -b "$size" -d -a 3 - "$dir.tmp/part."
  sha=$(cat "$dir.tmp"/part.* | sha256sum | cut -d' ' -f1)
  parts=$(find "$dir.tmp" -name 'part.*' | wc -l)
  i=0
  for part in $(find "$dir.tmp" -name 'part.*' | sort); do
    i=$((i + 1))
    mkdir -p "$dir.tmp/$i"
    mv "$part" "$dir.tmp/$i/payload.tar.part$i"
    printf 'sha256=%s\nparts=%s\n' "$sha" "$parts" >"$dir.tmp/$i/manifest"
  done
  rm -rf "$dir" && mv "$dir.tmp" "$dir"  # a half-split folder never carries the final name
  echo "$parts parts of at most $size bytes (working tree: $tree bytes) in $dir: one call each"
}

prepare() {  # prepare DIR
  local dir=$1 src=$1.src d ckpt var
  : "${RTK_DATA_DIR:?set RTK_DATA_DIR to the CIFAR-10 folder}"
  rm -rf "$src" && mkdir -p "$src"
  ln -s "$(cd "$RTK_DATA_DIR" && pwd)" "$src/cifar-10-batches-py"
  if [ "${INCLUDE:-data ort}" = data ]; then pack "$dir" "$src"; return; fi
  mkdir -p "$src/wheels" "$src/runs"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$src/wheels" "onnxruntime-gpu==$ORT_VERSION"
  [ "$(sha256sum "$src/wheels/$ORT_WHEEL" | cut -d' ' -f1)" = "$ORT_SHA256" ] || die "$ORT_WHEEL: sha256 differs from PyPI's"
  mkdir -p "$src/calib"  # new manifests stay out of the checkout (the tree that travels); shipped ones are reused
  if [ -d calib ]; then cp -r calib/. "$src/calib/"; fi
  for d in ${ORT_DEPTHS:-20 56}; do
    var=CHECKPOINT_$d ckpt=${!var:-rtk/weights/resnet$d.pt}
    [ -f "$ckpt" ] || die "no ResNet-$d checkpoint at $ckpt: set $var"
    mkdir -p "$src/runs/resnet$d" && cp "$ckpt" "$src/runs/resnet$d/checkpoint.pt"
    RTK_RUNS_DIR=$src/runs RTK_CALIB_DIR=$src/calib python -m rtk export --depth "$d"
    RTK_RUNS_DIR=$src/runs RTK_CALIB_DIR=$src/calib python -m rtk quantize --depth "$d" --target tensorrt --precision all
  done
  pack "$dir" "$src"
}

case ${1:-} in
  prepare) prepare "${2:?usage: gpu_payload.sh prepare DIR}" ;;
  pack) pack "${2:?usage: gpu_payload.sh pack DIR SRC}" "${3:?usage: gpu_payload.sh pack DIR SRC}" ;;
  stash)
    dir=${2:?usage: gpu_payload.sh stash DIR STORE} store=${3:?usage: gpu_payload.sh stash DIR STORE}
    mkdir -p "$store"
    for part in "$dir"/*/payload.tar.part*; do
      [ -f "$part" ] || continue
      cp "$part" "$(dirname "$part")/manifest" "$store/"
      echo "stashed $(basename "$part") in $store"
    done
    ;;
  unpack)
    store=${2:?usage: gpu_payload.sh unpack STORE TARGET} target=${3:?usage: gpu_payload.sh unpack STORE TARGET}
    [ -f "$target/.complete" ] && { echo "$target is unpacked already"; exit 0; }
    [ -f "$store/manifest" ] || die "no payload parts in $store (stash them first)"
    sha=$(field sha256 "$store/manifest") parts=$(field parts "$store/manifest")
    have=$(find "$store" -name 'payload.tar.part*' | wc -l)
    if [ "$have" != "$parts" ]; then echo "$store holds $have of the $parts payload parts" >&2; exit 3; fi
    got=$(for i in $(seq 1 "$parts"); do cat "$store/payload.tar.part$i"; done | sha256sum | cut -d' ' -f1)
    [ "$got" = "$sha" ] || die "the payload joined from $store: sha256 differs"
    rm -rf "$target" && mkdir -p "$target"
    for i in $(seq 1 "$parts"); do cat "$store/payload.tar.part$i"; done | tar -xf - -C "$target"
    touch "$target/.complete"
    echo "unpacked $parts parts into $target"
    ;;
  *)
    sed -n '2,24p' "$0" >&2
    exit 2
    ;;
esac
