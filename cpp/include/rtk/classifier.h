// rtk_infer: run an rtk TensorRT engine from C++ (built only where TensorRT and CUDA are found).
//
//   rtk::Classifier model("runs/resnet20/model.int8.plan");   // reads model.int8.plan.json too
//   auto images = rtk::read_images("test_batch.bin");
//   for (const auto& top5 : model.classify(images, 5))
//     std::cout << top5[0].name << " " << top5[0].probability << "\n";
//
// The constructor checks, in this order, with one clear rtk::Error each: the sidecar exists and is
// an rtk sidecar; the engine's sha256 matches it; the TensorRT library here is the version that
// built the engine; the GPU has the compute capability it was built for. Preprocessing follows the
// sidecar's normalization. No TensorRT or CUDA header leaks into this one, so an app that links
// rtk_infer needs neither on its include path. One Classifier holds one execution context and one
// CUDA stream: use one per thread (they may load the same engine file).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "rtk/image.h"
#include "rtk/sidecar.h"
#include "rtk/topk.h"

namespace rtk {

class Classifier {
 public:
  explicit Classifier(const std::string& engine_path, int cuda_device = 0);
  ~Classifier();
  Classifier(const Classifier&) = delete;
  Classifier& operator=(const Classifier&) = delete;

  const Sidecar& sidecar() const;

  // Logits [batch, num_classes] for normalized float32 input [batch, 3, H, W] on the host.
  // Batches larger than the engine profile's max are run in chunks.
  std::vector<float> logits(const float* input_nchw, int batch);

  // Top-k per image (uint8 RGB, the sidecar's H x W; a wrong size is an rtk::Error).
  std::vector<std::vector<Prediction>> classify(const std::vector<Image>& images, int k = 5);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rtk
