// The network input, made exactly as rtk.preprocess.normalize_uint8_nhwc makes it in Python:
// uint8 RGB HWC -> float32 CHW, (pixel * scale - mean[c]) / std[c], every step in float32.
// tests/test_cpp.py checks the floats are bit-identical to numpy's.
#pragma once

#include <vector>

#include "rtk/image.h"
#include "rtk/sidecar.h"

namespace rtk {

// Writes 3 * height * width floats (one CHW image) to `out`.
void normalize_image(const Image& image, const Normalization& norm, float* out);
// [N, 3, H, W] for images that all have the same size.
std::vector<float> normalize_batch(const std::vector<Image>& images, const Normalization& norm);

}  // namespace rtk
