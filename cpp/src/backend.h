// What rtk::Classifier asks of a backend (private to rtk_infer): the model's description, the
// largest batch one run takes, and logits for normalized input. Everything else (preprocessing,
// chunking, top-k) is Classifier's, the same for every backend.
#pragma once

#include <memory>
#include <string>

#include "rtk/classifier.h"
#include "rtk/model_info.h"

namespace rtk::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  const ModelInfo& info() const { return info_; }
  int max_batch() const { return max_batch_; }      // 0: any batch size
  int fixed_batch() const { return fixed_batch_; }  // 0: dynamic; else the only batch size run() takes

  // output [batch, classes] <- input [batch, 3, H, W], normalized float32, both on the host.
  virtual void run(const float* input, int batch, float* output) = 0;

 protected:
  ModelInfo info_;
  int max_batch_ = 0;
  int fixed_batch_ = 0;
};

// Each defined only where its library was found (RTK_HAVE_OPENVINO, RTK_HAVE_TENSORRT).
std::unique_ptr<Backend> open_openvino(const std::string& path, const Options& options);
std::unique_ptr<Backend> open_tensorrt(const std::string& path, const Options& options);

}  // namespace rtk::detail
