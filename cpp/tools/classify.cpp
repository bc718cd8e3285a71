// classify: top-5 of an rtk TensorRT engine for CIFAR-10 binary, PPM or PNG images.
#include <cstdio>

#include "rtk/classifier.h"
#include "tool_main.h"

namespace {

const char* kUsage =
    "usage: classify ENGINE IMAGE [--index N] [--top K] [--tsv] [--device D]\n"
    "\n"
    "  ENGINE      a TensorRT engine from `rtk build`, with its sidecar ENGINE.json beside it\n"
    "  IMAGE       a CIFAR-10 binary file (records of 3073 bytes: label + 32x32x3 planar pixels),\n"
    "              a binary PPM (P6) or a PNG, of the model's input size (32x32 RGB)\n"
    "  --index N   only record N of a CIFAR-10 binary file (default: every record)\n"
    "  --top K     how many classes to print per image (default 5)\n"
    "  --tsv       one line per image: IMAGE<TAB>LABEL<TAB>class indices<TAB>probabilities\n"
    "  --device D  CUDA device (default 0)\n";

int run(int argc, char** argv) {
  rtk::tools::Args args = rtk::tools::parse_args(argc, argv, {"--index", "--top", "--device"}, {"--tsv"}, 2);
  rtk::Classifier model(args.positional[0], static_cast<int>(args.integer("--device").value_or(0)));
  std::vector<rtk::Image> images = rtk::read_images(args.positional[1], args.integer("--index"));
  int k = static_cast<int>(args.integer("--top").value_or(5));
  std::vector<std::vector<rtk::Prediction>> results = model.classify(images, k);

  const std::vector<std::string>& classes = model.sidecar().classes;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const rtk::Image& image = images[i];
    std::string label = image.label >= 0 && image.label < static_cast<int>(classes.size())
                            ? classes[image.label] : std::string("-");
    if (args.flags.count("--tsv")) {
      std::printf("%s\t%d\t", image.origin.c_str(), image.label);
      for (std::size_t j = 0; j < results[i].size(); ++j) std::printf("%s%d", j ? "," : "", results[i][j].index);
      std::printf("\t");
      for (std::size_t j = 0; j < results[i].size(); ++j) std::printf("%s%.6f", j ? "," : "", results[i][j].probability);
      std::printf("\n");
    } else {
      std::printf("%s  label: %s\n", image.origin.c_str(), label.c_str());
      for (std::size_t j = 0; j < results[i].size(); ++j) {
        const rtk::Prediction& p = results[i][j];
        std::printf("  %zu. %-12s %2d  %.4f\n", j + 1, p.name.c_str(), p.index, p.probability);
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return rtk::tools::tool_main(argc, argv, kUsage, run); }
