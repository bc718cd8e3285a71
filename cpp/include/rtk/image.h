// Image inputs for the C++ app: CIFAR-10 binary files, binary PPM (P6) and, when built with
// libpng, PNG. Every reader returns 8-bit RGB pixels in HWC order (the layout of rtk's uint8
// NHWC arrays); preprocessing turns them into the network's NCHW floats.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rtk {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;  // [height, width, 3], row-major
  int label = -1;                 // CIFAR record label, -1 if the file has none
  std::string origin;             // "file" or "file[index]", for messages
};

// CIFAR-10 binary format: records of 3073 bytes, a label byte then 3072 channel-planar pixels
// (1024 R, 1024 G, 1024 B, each 32x32 row-major).
inline constexpr int kCifarSide = 32;
inline constexpr std::size_t kCifarRecordBytes = 1 + 3 * kCifarSide * kCifarSide;

// Reads `path` by content: "P6" -> binary PPM (maxval 255), the PNG signature -> PNG (rtk::Error
// if this build has no libpng), anything else -> CIFAR-10 binary (size a multiple of 3073).
// CIFAR: all records, or only record `index`; PPM/PNG hold one image (index 0).
std::vector<Image> read_images(const std::string& path, std::optional<long> index = std::nullopt);

bool png_supported();  // was libpng found when this library was configured?

// Wrong input size: rtk::Error naming the image's size and the model's.
void check_image_size(const Image& image, int height, int width);

}  // namespace rtk
