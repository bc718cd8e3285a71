#include "rtk/compat.h"

#include <cstdio>

#include "rtk/error.h"

namespace rtk {

std::string Version::str() const {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

Version parse_version(const std::string& text) {
  Version v;
  int fields = std::sscanf(text.c_str(), "%d.%d.%d", &v.major, &v.minor, &v.patch);
  if (fields < 2 || v.major < 0 || v.minor < 0 || v.patch < 0) {
    throw Error("cannot read TensorRT version '" + text + "' (expected major.minor.patch)");
  }
  return v;
}

Version version_from_tensorrt_int(int value) {
  // NvInferVersion.h: NV_TENSORRT_VERSION is major*10000 + minor*100 + patch from TensorRT 10 on,
  // major*1000 + minor*100 + patch before (8601 is 8.6.1); 10.0.0 is the first value >= 100000.
  int major_unit = value >= 100000 ? 10000 : 1000;
  return {value / major_unit, (value % major_unit) / 100, value % 100};
}

void check_tensorrt_version(const Sidecar& sidecar, const Version& runtime, const std::string& engine) {
  Version built = parse_version(sidecar.tensorrt_version);
  if (built.major != runtime.major || built.minor != runtime.minor || built.patch != runtime.patch) {
    throw Error(engine + " was built with TensorRT " + built.str() + " but this program runs TensorRT " +
                runtime.str() + ": engines only load in the TensorRT version that built them; rebuild it "
                "here with `rtk build` or run with TensorRT " + built.str());
  }
}

void check_compute_capability(const Sidecar& sidecar, int major, int minor, const std::string& gpu_name,
                              const std::string& engine) {
  std::string here = std::to_string(major) + "." + std::to_string(minor);
  if (sidecar.compute_capability != here) {
    throw Error(engine + " was built for " + sidecar.gpu_name + " (compute capability " +
                sidecar.compute_capability + ") but this GPU is " + gpu_name + " (compute capability " + here +
                "): rebuild the engine on this GPU with `rtk build`");
  }
}

}  // namespace rtk
