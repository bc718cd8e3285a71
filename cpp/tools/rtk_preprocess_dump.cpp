// rtk_preprocess_dump: the C++ preprocessing's floats, for comparison with rtk.preprocess in
// tests/test_cpp.py (needs no TensorRT). Prints what it read from the sidecar, one field a line.
#include <cstdio>
#include <fstream>

#include "rtk/image.h"
#include "rtk/preprocess.h"
#include "rtk/sidecar.h"
#include "tool_main.h"

namespace {

const char* kUsage =
    "usage: rtk_preprocess_dump SIDECAR IMAGE OUT [--index N]\n"
    "\n"
    "Normalizes IMAGE (CIFAR-10 binary, PPM or PNG) as SIDECAR (an engine's .json from `rtk build`)\n"
    "says and writes the network input [N, 3, H, W] as raw little-endian float32 to OUT.\n";

void print_dims(const char* key, const rtk::TensorSpec& spec) {
  std::printf("%s %s", key, spec.name.c_str());
  for (std::int64_t d : spec.shape) std::printf(" %lld", static_cast<long long>(d));
  std::printf("\n");
}

int run(int argc, char** argv) {
  rtk::tools::Args args = rtk::tools::parse_args(argc, argv, {"--index"}, {}, 3);
  rtk::Sidecar sidecar = rtk::read_sidecar(args.positional[0]);
  std::vector<rtk::Image> images = rtk::read_images(args.positional[1], args.integer("--index"));
  for (const rtk::Image& image : images) rtk::check_image_size(image, sidecar.height(), sidecar.width());
  std::vector<float> input = rtk::normalize_batch(images, sidecar.normalization);

  const std::string& out_path = args.positional[2];
  std::ofstream out(out_path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size() * sizeof(float)));
  if (!out.flush()) throw rtk::Error("cannot write " + out_path);

  std::printf("depth %d\nprecision %s\ntensorrt_version %s\ngpu %s\ncompute_capability %s\n", sidecar.depth,
              sidecar.precision.c_str(), sidecar.tensorrt_version.c_str(), sidecar.gpu_name.c_str(),
              sidecar.compute_capability.c_str());
  std::printf("profile %d %d %d\n", sidecar.profile_min, sidecar.profile_opt, sidecar.profile_max);
  print_dims("input", sidecar.inputs.front());
  print_dims("output", sidecar.outputs.front());
  std::printf("engine_sha256 %s\nclasses", sidecar.engine_sha256.c_str());
  for (const std::string& name : sidecar.classes) std::printf(" %s", name.c_str());
  std::printf("\nshape %zu 3 %d %d\n", images.size(), sidecar.height(), sidecar.width());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return rtk::tools::tool_main(argc, argv, kUsage, run); }
