#!/usr/bin/env bash
# The onnxruntime-gpu wheel for the H200 device machine (no network there), carried in parts: the
# device tool moves at most 64 MiB per call, working tree included, and the wheel is 255.6 MB.
#
# Here, once (DIR must be a folder .gitignore ignores, such as .ort-parts; the wheel stays out of git):
#   scripts/ort_gpu_wheel.sh fetch DIR          pip download onnxruntime-gpu 1.31.1 (cp312, manylinux_2_28),
#                                               check its sha256, then split it as below
#   scripts/ort_gpu_wheel.sh split WHEEL DIR    DIR/1, DIR/2, ...: one part of at most PART_SIZE each,
#                                               and in each the manifest (wheel name, sha256, parts)
# On the device, in each call that carries a part folder (carry: [".ort-parts/N"]):
#   scripts/ort_gpu_wheel.sh stash DIR STORE    copy the parts present under DIR into STORE (kept on the
#                                               warm machine between calls)
# and once every part is there:
#   scripts/ort_gpu_wheel.sh install STORE TARGET   join the parts, check the sha256, pip install the wheel
#                                               (no index, no deps: the CUDA/cuDNN wheels it needs are
#                                               there) into TARGET; then PYTHONPATH=TARGET:... shadows the
#                                               CPU onnxruntime of the machine's image
set -euo pipefail
VERSION=1.31.1
WHEEL=onnxruntime_gpu-$VERSION-cp312-cp312-manylinux_2_28_x86_64.whl
SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7  # PyPI's, for $WHEEL
PART_SIZE=${PART_SIZE:-56M}  # split's units (56M: 56 MiB): 5 parts, leaving 8 MiB of a call for the tree

die() { echo "error: $*" >&2; exit 1; }
field() { sed -n "s/^$1=//p" "$2"; }  # field KEY MANIFEST

split_wheel() {  # split_wheel WHEEL DIR
  local wheel=$1 dir=$2 sha parts i
  [ -f "$wheel" ] || die "no wheel at $wheel"
  if [ -e "$dir" ] && find "$dir" -mindepth 1 -maxdepth 1 ! -name '[0-9]*' | grep -q .; then
    die "$dir holds other things than wheel parts: give an empty or new folder"
  fi
  sha=$(sha256sum "$wheel" | cut -d' ' -f1)
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  split -b "$PART_SIZE" -d -a 2 "$wheel" "$dir.tmp/part."
  parts=$(find "$dir.tmp" -name 'part.*' | wc -l)
  i=0
  for part in $(find "$dir.tmp" -name 'part.*' | sort); do
    i=$((i + 1))
    mkdir -p "$dir.tmp/$i"
    mv "$part" "$dir.tmp/$i/$(basename "$wheel").part$i"
    printf 'name=%s\nsha256=%s\nparts=%s\n' "$(basename "$wheel")" "$sha" "$parts" >"$dir.tmp/$i/manifest"
  done
  rm -rf "$dir" && mv "$dir.tmp" "$dir"  # a half-split folder never carries the final name
  du -sh "$dir"/*
}

case ${1:-} in
  fetch)
    dir=${2:?usage: ort_gpu_wheel.sh fetch DIR}
    mkdir -p "$dir.download"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 -d "$dir.download" "onnxruntime-gpu==$VERSION"
    [ "$(sha256sum "$dir.download/$WHEEL" | cut -d' ' -f1)" = "$SHA256" ] || die "$WHEEL: sha256 differs from PyPI's"
    unzip -p "$dir.download/$WHEEL" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v extra || true
    split_wheel "$dir.download/$WHEEL" "$dir"
    rm -rf "$dir.download"
    ;;
  split)
    split_wheel "${2:?usage: ort_gpu_wheel.sh split WHEEL DIR}" "${3:?usage: ort_gpu_wheel.sh split WHEEL DIR}"
    ;;
  stash)
    dir=${2:?usage: ort_gpu_wheel.sh stash DIR STORE} store=${3:?usage: ort_gpu_wheel.sh stash DIR STORE}
    mkdir -p "$store"
    for part in "$dir"/*/*.part*; do
      [ -f "$part" ] || continue
      cp "$part" "$(dirname "$part")/manifest" "$store/"
      echo "stashed $(basename "$part") in $store"
    done
    ;;
  install)
    store=${2:?usage: ort_gpu_wheel.sh install STORE TARGET} target=${3:?usage: ort_gpu_wheel.sh install STORE TARGET}
    [ -f "$store/manifest" ] || die "no wheel parts in $store (stash them first)"
    name=$(field name "$store/manifest") sha=$(field sha256 "$store/manifest") parts=$(field parts "$store/manifest")
    have=$(find "$store" -name "$name.part*" | wc -l)
    [ "$have" = "$parts" ] || die "$store holds $have of the $parts parts of $name"
    joined=$(mktemp -d)/$name
    for i in $(seq 1 "$parts"); do cat "$store/$name.part$i"; done >"$joined"
    [ "$(sha256sum "$joined" | cut -d' ' -f1)" = "$sha" ] || die "$name joined from $store: sha256 differs"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$joined"
    rm -rf "$(dirname "$joined")"
    echo "installed $name into $target"
    ;;
  *)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
