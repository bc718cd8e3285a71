// Is this engine usable here? TensorRT engines are tied to the TensorRT version and the GPU's
// compute capability they were built with; these checks turn a mismatch into one clear line
// instead of a deserialization failure deep inside TensorRT. No TensorRT or CUDA needed here, so
// they are unit-tested on any machine; rtk_infer feeds in what the runtime reports.
#pragma once

#include <string>

#include "rtk/sidecar.h"

namespace rtk {

struct Version {
  int major = 0, minor = 0, patch = 0;
  std::string str() const;  // "10.13.0"
};

// "10.13.0.35" -> 10.13.0 (the build number is not part of compatibility).
Version parse_version(const std::string& text);
// getInferLibVersion(): major*10000 + minor*100 + patch since TensorRT 10 (major*1000 + ... before).
Version version_from_tensorrt_int(int value);

// Each throws rtk::Error with what was expected, what was found and what to do.
void check_tensorrt_version(const Sidecar& sidecar, const Version& runtime, const std::string& engine);
void check_compute_capability(const Sidecar& sidecar, int major, int minor, const std::string& gpu_name,
                              const std::string& engine);

}  // namespace rtk
