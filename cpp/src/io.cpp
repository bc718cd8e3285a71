#include "rtk/io.h"

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

}  // namespace rtk
