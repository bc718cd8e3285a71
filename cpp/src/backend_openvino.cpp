// The OpenVINO backend of rtk_infer (compiled where OpenVINO's CMake package is found, e.g. the
// one the `openvino` wheel ships): an rtk ONNX file on the CPU. The model's normalization, classes
// and identity come from the file's own rtk metadata, which OpenVINO's ONNX frontend keeps under
// rt_info["framework"]; the compile configuration is rtk.runtime's (rtk/runtime/openvino_runner.py),
// so both give the same logits for the same input.
#include <openvino/runtime/core.hpp>

#include <cstring>
#include <sstream>

#include "backend.h"
#include "rtk/error.h"
#include "rtk/io.h"
#include "rtk/onnx_meta.h"

namespace rtk::detail {

namespace {

// OpenVINO's multi-line message (source locations first) as one line of at most 400 characters,
// as rtk.runtime reports a backend's failure.
std::string one_line(const std::string& text) {
  std::istringstream lines(text);
  std::string line, joined;
  while (std::getline(lines, line)) {
    line.erase(0, line.find_first_not_of(" \t\r"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (!line.empty()) joined += (joined.empty() ? "" : " ") + line;
  }
  return joined.size() > 400 ? joined.substr(0, 400) + "..." : joined;
}

// metadata_props of the ONNX file, as the ONNX frontend stored them (every value a string).
std::map<std::string, std::string> framework_metadata(const ov::Model& model) {
  std::map<std::string, std::string> props;
  if (model.has_rt_info("framework")) {
    for (const auto& [key, value] : model.get_rt_info<ov::AnyMap>("framework")) props[key] = value.as<std::string>();
  }
  return props;
}

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const std::string& path, const Options& options) {
    // One read: the bytes that are hashed are the bytes OpenVINO loads.
    std::string bytes = read_file(path, "model file");
    if (std::optional<std::string> expected = recorded_sha256(path)) {
      check_sha256(path, sha256_hex(bytes.data(), bytes.size()), *expected, "its validation record " + path + ".json",
                   "`rtk quantize`");
    }
    std::shared_ptr<ov::Model> model;
    try {
      model = core_.read_model(bytes, ov::Tensor());
    } catch (const std::exception& e) {
      throw Error("OpenVINO cannot read " + path + " as an ONNX model: " + one_line(e.what()));
    }
    ModelInfo info = parse_onnx_metadata(framework_metadata(*model), path);
    info.path = path;
    info.backend = "openvino";
    std::string build = ov::get_openvino_version().buildNumber;  // "2026.4.1-22982-e213a147257-releases/2026/4"
    info.backend_version = build.substr(0, build.find('-'));
    info_ = std::move(info);
    check_io(*model);

    // rtk.runtime's configuration: LATENCY (one synchronous request gets every core), f32 for FP32
    // files (the CPU plugin would otherwise run them in bf16 on CPUs with bf16 units), INT8 files
    // as quantized with the plugin's defaults for their float parts.
    ov::AnyMap config{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    if (info_.precision == "fp32") {
      config.insert(ov::hint::inference_precision(ov::element::f32));
    } else if (info_.precision != "int8") {
      throw Error(path + " is " + (info_.precision == "fp16" ? "an FP16" : "a '" + info_.precision + "'") +
                  " model; OpenVINO's CPU plugin runs the FP32 and INT8 files (rtk.runtime runs FP16 with "
                  "onnxruntime)");
    }
    if (options.threads > 0) config.insert(ov::inference_num_threads(options.threads));
    try {
      compiled_ = core_.compile_model(model, "CPU", config);
      request_ = compiled_.create_infer_request();
    } catch (const std::exception& e) {
      throw Error("OpenVINO cannot compile " + path + " for the CPU: " + one_line(e.what()));
    }
  }

  void run(const float* input, int batch, float* output) override {
    const std::size_t classes = info_.classes.size();
    try {
      // Wraps the caller's memory (no copy); OpenVINO only reads an input tensor.
      ov::Tensor in(ov::element::f32, {static_cast<std::size_t>(batch), 3, static_cast<std::size_t>(info_.height),
                                       static_cast<std::size_t>(info_.width)}, const_cast<float*>(input));
      request_.set_input_tensor(in);
      request_.infer();
      const ov::Tensor out = request_.get_output_tensor();
      if (out.get_shape() != ov::Shape{static_cast<std::size_t>(batch), classes}) {
        throw Error(info_.path + ": OpenVINO returned logits of shape " + out.get_shape().to_string() +
                    " for a batch of " + std::to_string(batch));
      }
      std::memcpy(output, out.data<const float>(), batch * classes * sizeof(float));
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error("OpenVINO cannot run " + info_.path + ": " + one_line(e.what()));
    }
  }

 private:
  // One float32 input [N, 3, H, W] (H and W fixed; N dynamic, or fixed by `rtk export --fixed-batch`),
  // one output [N, classes].
  void check_io(const ov::Model& model) {
    if (model.inputs().size() != 1 || model.outputs().size() != 1) {
      throw Error(info_.path + ": expected one input and one output, found " + std::to_string(model.inputs().size()) +
                  " and " + std::to_string(model.outputs().size()));
    }
    const ov::PartialShape in = model.input().get_partial_shape();
    const ov::PartialShape out = model.output().get_partial_shape();
    if (model.input().get_element_type() != ov::element::f32 || in.rank() != 4 || !in[1].is_static() ||
        in[1].get_length() != 3 || !in[2].is_static() || !in[3].is_static()) {
      throw Error(info_.path + ": the input must be float32 [N, 3, H, W], not " +
                  model.input().get_element_type().get_type_name() + " " + in.to_string());
    }
    if (out.rank() != 2 || !out[1].is_static() || out[1].get_length() != static_cast<std::int64_t>(info_.classes.size())) {
      throw Error(info_.path + ": the output must be [N, " + std::to_string(info_.classes.size()) +
                  "] (one logit per class name), not " + out.to_string());
    }
    info_.height = static_cast<int>(in[2].get_length());
    info_.width = static_cast<int>(in[3].get_length());
    if (in[0].is_static()) fixed_batch_ = static_cast<int>(in[0].get_length());
  }

  ov::Core core_;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
};

}  // namespace

std::unique_ptr<Backend> open_openvino(const std::string& path, const Options& options) {
  return std::make_unique<OpenVinoBackend>(path, options);
}

}  // namespace rtk::detail
