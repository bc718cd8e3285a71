// rtk_infer: classify images with an rtk model from C++. The backend follows from the file:
//
//   rtk::Classifier model("runs/resnet20/model.int8.cpu.onnx");  // OpenVINO on the CPU
//   rtk::Classifier model("runs/resnet20/model.int8.plan");      // TensorRT on a GPU (+ .plan.json)
//   auto images = rtk::read_images("test_batch.bin");
//   for (const auto& top5 : model.classify(images, 5))
//     std::cout << top5[0].name << " " << top5[0].probability << "\n";
//
// An rtk ONNX file (from `rtk export` or `rtk quantize`) runs through OpenVINO's runtime, configured
// as rtk.runtime's OpenVINO runner configures it; the normalization, class names and identity
// come from the file's own rtk metadata. An engine runs through TensorRT, with what it needs from
// its sidecar. Each backend is compiled where its library is found (CMakeLists.txt); no OpenVINO,
// TensorRT or CUDA header reaches an app through this one.
//
// The constructor checks, each failure one rtk::Error with one line of text: the file exists and is
// rtk's (sidecar, or ONNX metadata); it has not changed since rtk wrote it, where a sha256 says
// what it was (an engine's sidecar; the validation record `rtk quantize` writes beside a model);
// an engine runs on the TensorRT version and GPU that built it. One Classifier holds one OpenVINO
// infer request or one TensorRT execution context and CUDA stream: use one per thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "rtk/image.h"
#include "rtk/model_info.h"
#include "rtk/topk.h"

namespace rtk {

struct Options {
  int threads = 0;      // OpenVINO: CPU threads (0: OpenVINO's default, every core); TensorRT: unused
  int cuda_device = 0;  // TensorRT: the GPU; OpenVINO: unused (it runs on the CPU)
};

class Classifier {
 public:
  explicit Classifier(const std::string& model_path, const Options& options = {});
  ~Classifier();
  Classifier(const Classifier&) = delete;
  Classifier& operator=(const Classifier&) = delete;

  const ModelInfo& info() const;

  // Logits [batch, num_classes] for normalized float32 input [batch, 3, H, W] on the host.
  // Batches larger than an engine profile's max are run in chunks.
  std::vector<float> logits(const float* input_nchw, int batch);

  // Top-k per image (uint8 RGB of the model's H x W; another size is an rtk::Error).
  std::vector<std::vector<Prediction>> classify(const std::vector<Image>& images, int k = 5);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rtk
