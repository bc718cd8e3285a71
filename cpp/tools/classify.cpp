// classify: top-5 of an rtk model (an ONNX file through OpenVINO, or a TensorRT engine) for
// CIFAR-10 binary, PPM or PNG images.
#include <algorithm>
#include <cstdio>

#include "rtk/classifier.h"
#include "tool_main.h"

namespace {

const char* kUsage =
    "usage: classify MODEL IMAGE [--index N] [--top K] [--tsv] [--batch B] [--threads T] [--device D]\n"
    "\n"
    "  MODEL        an rtk ONNX file (from `rtk export` or `rtk quantize`; runs on the CPU through OpenVINO)\n"
    "               or a TensorRT engine from `rtk build`, with its sidecar MODEL.json beside it\n"
    "  IMAGE        a CIFAR-10 binary file (records of 3073 bytes: label + 32x32x3 planar pixels),\n"
    "               a binary PPM (P6) or a PNG, of the model's input size (32x32 RGB)\n"
    "  --index N    only record N of a CIFAR-10 binary file (default: every record)\n"
    "  --top K      how many classes to print per image (default 5)\n"
    "  --tsv        one line per image: IMAGE<TAB>LABEL<TAB>class indices<TAB>probabilities\n"
    "  --batch B    images per inference call (default: all of them at once)\n"
    "  --threads T  OpenVINO: CPU threads (default: OpenVINO's, every core)\n"
    "  --device D   TensorRT: CUDA device (default 0)\n";

void print(const rtk::Image& image, const std::vector<rtk::Prediction>& top, const std::vector<std::string>& classes,
           bool tsv) {
  if (tsv) {
    std::printf("%s\t%d\t", image.origin.c_str(), image.label);
    for (std::size_t j = 0; j < top.size(); ++j) std::printf("%s%d", j ? "," : "", top[j].index);
    std::printf("\t");
    for (std::size_t j = 0; j < top.size(); ++j) std::printf("%s%.6f", j ? "," : "", top[j].probability);
    std::printf("\n");
    return;
  }
  bool labelled = image.label >= 0 && image.label < static_cast<int>(classes.size());
  std::printf("%s  label: %s\n", image.origin.c_str(), labelled ? classes[image.label].c_str() : "-");
  for (std::size_t j = 0; j < top.size(); ++j) {
    std::printf("  %zu. %-12s %2d  %.4f\n", j + 1, top[j].name.c_str(), top[j].index, top[j].probability);
  }
}

int run(int argc, char** argv) {
  rtk::tools::Args args = rtk::tools::parse_args(
      argc, argv, {"--index", "--top", "--batch", "--threads", "--device"}, {"--tsv"}, 2);
  rtk::Options options;
  options.threads = static_cast<int>(args.bounded("--threads", 0, 1024).value_or(0));
  options.cuda_device = static_cast<int>(args.bounded("--device", 0, 1024).value_or(0));
  const int k = static_cast<int>(args.bounded("--top", 1, 1000).value_or(5));
  const std::optional<long> batch = args.bounded("--batch", 1, 1 << 20);
  rtk::Classifier model(args.positional[0], options);
  std::vector<rtk::Image> images = rtk::read_images(args.positional[1], args.integer("--index"));

  const rtk::ModelInfo& info = model.info();
  // Every image's size before anything is printed: a bad input ends in one line, and only that.
  for (const rtk::Image& image : images) rtk::check_image_size(image, info.height, info.width);
  const bool tsv = args.flags.count("--tsv") > 0;
  if (!tsv) {
    std::string flavour = info.int8_target.empty() ? "" : " (" + info.int8_target + " flavour)";
    std::printf("%s: ResNet-%d %s%s on %s %s\n", info.path.c_str(), info.depth, info.precision.c_str(),
                flavour.c_str(), info.backend.c_str(), info.backend_version.c_str());
  }
  const std::size_t step = batch ? static_cast<std::size_t>(*batch) : std::max<std::size_t>(images.size(), 1);
  for (std::size_t start = 0; start < images.size(); start += step) {
    std::vector<rtk::Image> chunk(images.begin() + start, images.begin() + std::min(images.size(), start + step));
    std::vector<std::vector<rtk::Prediction>> results = model.classify(chunk, k);
    for (std::size_t i = 0; i < chunk.size(); ++i) print(chunk[i], results[i], info.classes, tsv);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return rtk::tools::tool_main(argc, argv, kUsage, run); }
