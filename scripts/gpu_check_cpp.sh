#!/usr/bin/env bash
# GPU check of the C++ app (issue 6): build cpp/ against TensorRT, classify real CIFAR-10 test
# images with `classify`, and compare its top-5 with the Python runtime, rtk.runtime.load(ENGINE).predict.
#
#   RTK_DATA_DIR=/path/to/cifar-10-batches-py scripts/gpu_check_cpp.sh [ENGINE] [NUM_IMAGES]
#
# ENGINE defaults to runs/resnet20/model.fp32.plan (make it with `rtk build --depth 20 --precision fp32`),
# NUM_IMAGES to 1000 (the first test images). TensorRT is found through TensorRT_ROOT (see
# cpp/cmake/FindTensorRT.cmake: the package config of TensorRT >= 11.2.1 first, then NvInfer.h and
# libnvinfer; the configure line printed below says which). Exit status: 0 the two agree, 1 they disagree or something failed,
# 2 TensorRT (C++ headers/library or the Python package) is missing, with one line saying which.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=${1:-runs/resnet20/model.fp32.plan}
num_images=${2:-1000}
build=${RTK_CPP_BUILD_DIR:-build/cpp-gpu}

if ! python -c "import tensorrt" 2>/dev/null; then
  echo "TensorRT missing: the Python package tensorrt does not import" \
       "(pip install 'rtk[gpu-cu13]' for a CUDA 13 driver, 'rtk[gpu-cu12]' for CUDA 12)" >&2
  exit 2
fi
# cpp/CMakeLists.txt asks for CMake 3.20 (ctest --test-dir); say so in one line rather than in cmake's log.
cmake_version=$(cmake --version | head -n1 | awk '{print $3}')
if [ "$(printf '%s\n' 3.20 "$cmake_version" | sort -V | head -n1)" != 3.20 ]; then
  echo "CMake $cmake_version is too old: cpp/ needs CMake >= 3.20" >&2
  exit 2
fi
mkdir -p "$build"
if ! cmake -S cpp -B "$build" -DCMAKE_BUILD_TYPE=Release -DRTK_REQUIRE_TENSORRT=ON >"$build/configure.log" 2>&1; then
  # CMake wraps long messages: join the log's lines before taking the reason out of it.
  reason=$(tr -s '\n ' ' ' <"$build/configure.log" | grep -o "cannot build the TensorRT backend: [^)]*)" || true)
  if [ -n "$reason" ]; then
    echo "TensorRT missing: ${reason#cannot build the TensorRT backend: }" >&2
    exit 2
  fi
  echo "cmake failed to configure cpp/: see $build/configure.log" >&2
  exit 1
fi
grep -o "rtk: building the TensorRT backend with .*" "$build/configure.log" >&2
cmake --build "$build" --parallel >"$build/build.log" 2>&1 || { echo "build failed: see $build/build.log" >&2; exit 1; }
ctest --test-dir "$build" --output-on-failure >&2

python scripts/compare_cpp_top5.py --model "$engine" --classify "$build/classify" --num-images "$num_images"
