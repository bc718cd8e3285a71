// classify_image MODEL IMAGE...: the most probable class of each image, with its probability.
//
// MODEL is an rtk ONNX file (runs on the CPU through OpenVINO) or a TensorRT engine from
// `rtk build` (on the GPU); the code is the same for both. IMAGE is a 32x32 RGB PPM or PNG, or a
// CIFAR-10 binary file of any number of images.
#include <cstdio>
#include <vector>

#include "rtk/classifier.h"
#include "rtk/error.h"
#include "rtk/image.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL IMAGE...\n", argv[0]);
    return 2;
  }
  try {
    rtk::Classifier model(argv[1]);  // checks the file; reads how to preprocess and the class names
    const rtk::ModelInfo& info = model.info();
    std::printf("ResNet-%d %s on %s %s\n", info.depth, info.precision.c_str(), info.backend.c_str(),
                info.backend_version.c_str());
    for (int i = 2; i < argc; ++i) {
      std::vector<rtk::Image> images = rtk::read_images(argv[i]);
      std::vector<std::vector<rtk::Prediction>> top = model.classify(images, 1);
      for (std::size_t j = 0; j < images.size(); ++j) {
        std::printf("%s: %s (%.1f%%)\n", images[j].origin.c_str(), top[j][0].name.c_str(),
                    100.0 * top[j][0].probability);
      }
    }
  } catch (const rtk::Error& e) {  // a missing file, not an rtk model, another image size, ...
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
