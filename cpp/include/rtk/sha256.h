// SHA-256 (FIPS 180-4), self-contained: the sidecar records the engine's sha256 so an app can
// refuse an engine file that was swapped or truncated after `rtk build`.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace rtk {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  std::string hex_digest();  // finishes the hash; 64 lowercase hex digits

 private:
  void compress(const std::uint8_t* block);
  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> buffer_{};
  std::size_t buffered_ = 0;
  std::uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const void* data, std::size_t size);
std::string sha256_file(const std::string& path);  // throws rtk::Error if the file cannot be read

}  // namespace rtk
