// The engine sidecar `<engine path>.json` that `rtk build` writes next to every TensorRT engine.
// It carries everything an app needs besides the engine: how to preprocess, the class names, and
// what the engine was built for (TensorRT version, GPU), so a mismatch is reported before TensorRT
// fails on it.
//
//   format "rtk.engine/1", tensorrt_version "10.13.0.35", gpu {name, compute_capability "9.0"},
//   precision, depth, inputs/outputs [{name, shape [-1,3,32,32], dtype}], profile {min, opt, max}
//   (batch sizes), onnx_sha256, engine_sha256, normalization {mean[3], std[3], scale,
//   channel_order "RGB", layout "NCHW", ...}, classes [names], tf32, builder_optimization_level,
//   layer_precisions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "rtk/model_info.h"

namespace rtk {

inline constexpr const char* kSidecarFormat = "rtk.engine/1";

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;  // -1 for the dynamic batch axis
  std::string dtype;
};

struct Sidecar {
  std::string tensorrt_version;    // as TensorRT printed it, e.g. "10.13.0.35"
  std::string gpu_name;
  std::string compute_capability;  // "major.minor", e.g. "9.0"
  std::string precision;
  int depth = 0;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  int profile_min = 1, profile_opt = 1, profile_max = 1;  // batch sizes of the optimization profile
  std::string onnx_sha256;
  std::string engine_sha256;
  Normalization normalization;
  std::vector<std::string> classes;

  // Channels, height, width of one input image (inputs[0].shape without the batch axis).
  int channels() const;
  int height() const;
  int width() const;
};

// Parses and checks a sidecar; `origin` (its path) prefixes every error message.
Sidecar parse_sidecar(std::string_view json_text, const std::string& origin);
Sidecar read_sidecar(const std::string& path);
std::string sidecar_path_for(const std::string& engine_path);  // engine_path + ".json"

}  // namespace rtk
