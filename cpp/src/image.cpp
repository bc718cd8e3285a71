#include "rtk/image.h"

#include <cctype>
#include <cstring>

#include "rtk/error.h"
#include "rtk/io.h"

#ifdef RTK_HAVE_PNG
#include <png.h>
#endif

namespace rtk {

namespace {

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

Image cifar_record(const std::string& bytes, std::size_t record, const std::string& path) {
  const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data()) + record * kCifarRecordBytes;
  Image image;
  image.width = image.height = kCifarSide;
  image.label = data[0];
  image.origin = path + "[" + std::to_string(record) + "]";
  // Planar R, G, B planes (1024 bytes each) -> interleaved HWC.
  const std::uint8_t* planes = data + 1;
  constexpr int plane = kCifarSide * kCifarSide;
  image.rgb.resize(3 * plane);
  for (int p = 0; p < plane; ++p) {
    for (int c = 0; c < 3; ++c) image.rgb[3 * p + c] = planes[c * plane + p];
  }
  return image;
}

// Netpbm header fields: whitespace-separated ASCII integers, '#' comments to the end of the line.
long ppm_header_number(const std::string& bytes, std::size_t& pos, const std::string& path) {
  while (pos < bytes.size()) {
    if (bytes[pos] == '#') {
      while (pos < bytes.size() && bytes[pos] != '\n') ++pos;
    } else if (std::isspace(static_cast<unsigned char>(bytes[pos]))) {
      ++pos;
    } else {
      break;
    }
  }
  long value = 0;
  std::size_t start = pos;
  while (pos < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[pos])) && value < 1000000) {
    value = value * 10 + (bytes[pos++] - '0');
  }
  if (pos == start) throw Error(path + ": malformed PPM header");
  if (pos < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[pos]))) {
    throw Error(path + ": PPM header number too large");
  }
  return value;
}

std::vector<Image> parse_cifar_binary(const std::string& bytes, const std::string& path, std::optional<long> index) {
  if (bytes.empty() || bytes.size() % kCifarRecordBytes != 0) {
    throw Error(path + ": " + std::to_string(bytes.size()) + " bytes is not a CIFAR-10 binary file (records of " +
                std::to_string(kCifarRecordBytes) + " bytes: a label and 32x32x3 pixels)");
  }
  std::size_t records = bytes.size() / kCifarRecordBytes;
  if (index) {
    if (*index < 0 || static_cast<std::size_t>(*index) >= records) {
      throw Error(path + ": --index " + std::to_string(*index) + " is out of range (the file holds " +
                  std::to_string(records) + " images)");
    }
    return {cifar_record(bytes, static_cast<std::size_t>(*index), path)};
  }
  std::vector<Image> images;
  images.reserve(records);
  for (std::size_t r = 0; r < records; ++r) images.push_back(cifar_record(bytes, r, path));
  return images;
}

Image parse_ppm(const std::string& bytes, const std::string& path) {
  if (bytes.compare(0, 2, "P6") != 0) throw Error(path + ": not a binary PPM (P6) file");
  std::size_t pos = 2;
  long width = ppm_header_number(bytes, pos, path);
  long height = ppm_header_number(bytes, pos, path);
  long maxval = ppm_header_number(bytes, pos, path);
  if (maxval != 255) throw Error(path + ": PPM with maxval " + std::to_string(maxval) + " (only 8-bit, 255, is read)");
  if (width <= 0 || height <= 0) throw Error(path + ": PPM with an empty image");
  ++pos;  // exactly one whitespace byte separates the header from the pixels
  std::size_t size = static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3;
  if (pos > bytes.size() || bytes.size() - pos < size) throw Error(path + ": PPM pixel data is truncated");
  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.rgb.assign(bytes.begin() + static_cast<std::ptrdiff_t>(pos),
                   bytes.begin() + static_cast<std::ptrdiff_t>(pos + size));
  image.origin = path;
  return image;
}

Image parse_png(const std::string& bytes, const std::string& path) {
#ifdef RTK_HAVE_PNG
  // libpng's simplified API converts any PNG (grey, palette, 16-bit, alpha) to 8-bit RGB.
  png_image png;
  std::memset(&png, 0, sizeof png);
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size())) {
    throw Error(path + ": unreadable PNG (" + png.message + ")");
  }
  png.format = PNG_FORMAT_RGB;
  Image image;
  image.width = static_cast<int>(png.width);
  image.height = static_cast<int>(png.height);
  image.rgb.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, image.rgb.data(), 0, nullptr)) {
    std::string message = png.message;
    png_image_free(&png);
    throw Error(path + ": unreadable PNG (" + message + ")");
  }
  image.origin = path;
  return image;
#else
  (void)bytes;
  throw Error(path + ": PNG input is not supported by this build (libpng was not found when it was "
              "configured); convert the image to PPM (P6) or install libpng and rebuild");
#endif
}

}  // namespace

bool png_supported() {
#ifdef RTK_HAVE_PNG
  return true;
#else
  return false;
#endif
}

std::vector<Image> read_images(const std::string& path, std::optional<long> index) {
  std::string bytes = read_file(path, "image file");
  bool is_ppm = bytes.compare(0, 2, "P6") == 0;
  bool is_png = bytes.size() >= sizeof kPngSignature &&
                std::memcmp(bytes.data(), kPngSignature, sizeof kPngSignature) == 0;
  if (!is_ppm && !is_png) return parse_cifar_binary(bytes, path, index);
  if (index && *index != 0) {
    throw Error(path + ": --index " + std::to_string(*index) + " is out of range (a " +
                (is_ppm ? "PPM" : "PNG") + " file holds one image)");
  }
  return {is_ppm ? parse_ppm(bytes, path) : parse_png(bytes, path)};
}

void check_image_size(const Image& image, int height, int width) {
  if (image.height != height || image.width != width) {
    throw Error(image.origin + " is " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                " pixels but the model takes " + std::to_string(width) + "x" + std::to_string(height) +
                " RGB images (resize it first)");
  }
}

}  // namespace rtk
