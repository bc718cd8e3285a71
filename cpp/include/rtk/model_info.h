// What every rtk model tells an app, whichever backend runs it: how to preprocess (exactly as
// training did), the class names, and which model it is. An engine's sidecar and an ONNX file's
// own rtk metadata both fill it in.
#pragma once

#include <array>
#include <string>
#include <vector>

namespace rtk {

// x_normalized[c] = (pixel * scale - mean[c]) / std[c], pixels uint8 RGB, result NCHW float32.
struct Normalization {
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
  float scale = 1.0f / 255.0f;
};

struct ModelInfo {
  std::string path;
  std::string backend;          // "openvino" (an rtk ONNX file) or "tensorrt" (an engine)
  std::string backend_version;  // of the library running it, e.g. "2026.4.1" or "10.13.0"
  int depth = 0;                // ResNet-<depth>
  std::string precision;        // "fp32", "fp16" or "int8", as the file says
  std::string int8_target;      // an INT8 ONNX file's flavour, "cpu" or "tensorrt"; else empty
  Normalization normalization;
  std::vector<std::string> classes;  // index order: logit i is classes[i]
  int height = 0, width = 0;         // of one input image (3 channels, RGB)
};

}  // namespace rtk
