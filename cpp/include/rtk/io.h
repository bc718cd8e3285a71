// Whole-file reads with one-line errors ("image not found: x.ppm").
#pragma once

#include <string>

namespace rtk {

// The bytes of `path`; `what` names the file in the error ("engine", "image", "sidecar").
std::string read_file(const std::string& path, const std::string& what);

}  // namespace rtk
