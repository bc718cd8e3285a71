#include "rtk/io.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "rtk/error.h"

namespace rtk {

std::string read_file(const std::string& path, const std::string& what) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) throw Error(what + " " + path + " is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) throw Error(what + " not found: " + path);
    throw Error("cannot read " + what + " " + path + ": " + std::strerror(errno));
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw Error("cannot read " + what + " " + path);
  return std::move(bytes).str();
}

std::string sha256_hex(const void* data, std::size_t size) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(data, size, digest, &length, EVP_sha256(), nullptr) != 1) {
    throw Error("OpenSSL's EVP_Digest failed to compute a sha256");
  }
  static const char* hex = "0123456789abcdef";
  std::string text;
  for (unsigned int i = 0; i < length; ++i) {
    text += hex[digest[i] >> 4];
    text += hex[digest[i] & 0xf];
  }
  return text;
}

void check_sha256(const std::string& file, const std::string& actual, const std::string& expected,
                  const std::string& record, const std::string& writer) {
  if (actual != expected) {
    throw Error(file + " does not match " + record + " (sha256 " + actual.substr(0, 12) + "..., the record says " +
                expected.substr(0, 12) + "...): the file was replaced or changed after " + writer +
                " wrote it; make it again");
  }
}

}  // namespace rtk
