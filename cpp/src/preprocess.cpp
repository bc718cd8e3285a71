#include "rtk/preprocess.h"

#include "rtk/error.h"

// Built with -ffp-contract=off (CMakeLists.txt): a fused multiply-add would round once where numpy
// rounds twice, and the floats would no longer match rtk.preprocess bit for bit.

namespace rtk {

void normalize_image(const Image& image, const Normalization& norm, float* out) {
  const std::size_t plane = static_cast<std::size_t>(image.height) * static_cast<std::size_t>(image.width);
  if (image.rgb.size() != 3 * plane) throw Error(image.origin + ": pixel buffer does not hold height x width x 3 bytes");
  for (int c = 0; c < 3; ++c) {
    // Same operations and order as numpy: float32(pixel) * float32(scale), minus mean, divided by std.
    const float mean = norm.mean[c];
    const float std = norm.std[c];
    float* channel = out + c * plane;
    for (std::size_t p = 0; p < plane; ++p) {
      float x = static_cast<float>(image.rgb[3 * p + c]) * norm.scale;
      channel[p] = (x - mean) / std;
    }
  }
}

std::vector<float> normalize_batch(const std::vector<Image>& images, const Normalization& norm) {
  if (images.empty()) return {};
  const int height = images.front().height;
  const int width = images.front().width;
  const std::size_t per_image = 3 * static_cast<std::size_t>(height) * static_cast<std::size_t>(width);
  std::vector<float> batch(images.size() * per_image);
  for (std::size_t i = 0; i < images.size(); ++i) {
    check_image_size(images[i], height, width);
    normalize_image(images[i], norm, batch.data() + i * per_image);
  }
  return batch;
}

}  // namespace rtk
