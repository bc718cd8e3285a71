// Whole-file reads with one-line errors ("image not found: x.ppm"), and the sha256 that engine
// sidecars and validation records use to tell whether a file changed after rtk wrote it.
#pragma once

#include <cstddef>
#include <string>

namespace rtk {

// The bytes of `path`; `what` names the file in the error ("engine", "image", "sidecar").
std::string read_file(const std::string& path, const std::string& what);

// 64 lowercase hex digits (OpenSSL's EVP interface).
std::string sha256_hex(const void* data, std::size_t size);

// rtk::Error when `actual` (the file's sha256) is not the `expected` one that `record` (the file
// that says so, e.g. "its sidecar") holds: the file was replaced or changed after `writer` made it.
void check_sha256(const std::string& file, const std::string& actual, const std::string& expected,
                  const std::string& record, const std::string& writer);

}  // namespace rtk
