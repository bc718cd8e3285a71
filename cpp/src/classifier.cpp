// rtk::Classifier: picks the backend from the file and does what is the same for every backend
// (preprocessing, batching, top-k). The backends live in backend_openvino.cpp and
// backend_tensorrt.cpp, each compiled where its library is found.
#include "rtk/classifier.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "backend.h"
#include "rtk/error.h"
#include "rtk/preprocess.h"

namespace rtk {

namespace {

using Opener = std::unique_ptr<detail::Backend> (*)(const std::string&, const Options&);

// The backends of this build (CMakeLists.txt defines RTK_HAVE_<BACKEND> for each one it compiles).
#ifdef RTK_HAVE_OPENVINO
constexpr Opener kOpenVino = detail::open_openvino;
#else
constexpr Opener kOpenVino = nullptr;
#endif
#ifdef RTK_HAVE_TENSORRT
constexpr Opener kTensorRT = detail::open_tensorrt;
#else
constexpr Opener kTensorRT = nullptr;
#endif

struct FileKind {
  std::vector<std::string> suffixes;
  const char* what;     // "an ONNX file, which rtk runs with OpenVINO"
  const char* backend;  // "OpenVINO"
  Opener open;          // null where this build lacks the backend
  const char* remedy;   // how to build it in
};

std::unique_ptr<detail::Backend> open_backend(const std::string& path, const Options& options) {
  static const FileKind kinds[] = {
      {{".onnx"}, "an ONNX file, which rtk runs with OpenVINO", "OpenVINO", kOpenVino,
       "configure cpp/ with -DOpenVINO_DIR=<site-packages>/openvino/cmake (docs/cpp.md)"},
      {{".plan", ".engine"}, "a TensorRT engine", "TensorRT", kTensorRT,
       "TensorRT was not found when cpp/ was configured (docs/cpp.md)"},
  };
  const std::string suffix = std::filesystem::path(path).extension().string();
  for (const FileKind& kind : kinds) {
    if (std::find(kind.suffixes.begin(), kind.suffixes.end(), suffix) == kind.suffixes.end()) continue;
    if (kind.open == nullptr) {
      throw Error(path + " is " + kind.what + ", but this build of rtk_infer has no " + kind.backend + " backend: " +
                  kind.remedy);
    }
    return kind.open(path, options);
  }
  throw Error(path + ": unknown model file type (expected .onnx, .plan or .engine)");
}

}  // namespace

struct Classifier::Impl {
  std::unique_ptr<detail::Backend> backend;
  std::size_t image_floats = 0;  // 3 * H * W
  std::size_t num_classes = 0;
};

Classifier::Classifier(const std::string& model_path, const Options& options) : impl_(std::make_unique<Impl>()) {
  impl_->backend = open_backend(model_path, options);
  const ModelInfo& info = impl_->backend->info();
  impl_->image_floats = 3 * static_cast<std::size_t>(info.height) * static_cast<std::size_t>(info.width);
  impl_->num_classes = info.classes.size();
}

Classifier::~Classifier() = default;

const ModelInfo& Classifier::info() const { return impl_->backend->info(); }

std::vector<float> Classifier::logits(const float* input_nchw, int batch) {
  detail::Backend& backend = *impl_->backend;
  const std::size_t in = impl_->image_floats, out = impl_->num_classes;
  std::vector<float> result(static_cast<std::size_t>(std::max(batch, 0)) * out);
  const int fixed = backend.fixed_batch();
  const int step = fixed ? fixed : backend.max_batch() ? backend.max_batch() : std::max(batch, 1);
  for (int start = 0; start < batch; start += step) {
    const int chunk = std::min(step, batch - start);
    const float* input = input_nchw + start * in;
    if (fixed && chunk < fixed) {
      // A model exported with a fixed batch: the last chunk is filled up to it with zeros, whose
      // logits are dropped (rtk.runtime fills it with copies of the chunk's own images).
      std::vector<float> padded(fixed * in, 0.0f), logits(fixed * out);
      std::memcpy(padded.data(), input, chunk * in * sizeof(float));
      backend.run(padded.data(), fixed, logits.data());
      std::memcpy(result.data() + start * out, logits.data(), chunk * out * sizeof(float));
    } else {
      backend.run(input, chunk, result.data() + start * out);
    }
  }
  // argmax of NaN is class 0: a silently wrong answer (rtk.runtime refuses it too).
  if (!std::all_of(result.begin(), result.end(), [](float x) { return std::isfinite(x); })) {
    throw Error(backend.info().path + " gave NaN or infinite logits: its weights are not finite (a diverged "
                "training?)");
  }
  return result;
}

std::vector<std::vector<Prediction>> Classifier::classify(const std::vector<Image>& images, int k) {
  const ModelInfo& info = impl_->backend->info();
  for (const Image& image : images) check_image_size(image, info.height, info.width);
  std::vector<float> input = normalize_batch(images, info.normalization);
  std::vector<float> out = logits(input.data(), static_cast<int>(images.size()));
  std::vector<std::vector<Prediction>> results;
  for (std::size_t i = 0; i < images.size(); ++i) {
    results.push_back(top_k(out.data() + i * impl_->num_classes, info.classes, k));
  }
  return results;
}

}  // namespace rtk
