// The TensorRT/CUDA half of the library. Everything a machine without TensorRT can check
// (sidecar, hashes, versions, images, preprocessing, top-k) lives in rtk_core and is unit-tested there.
#include "rtk/classifier.h"

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <iostream>

#include "rtk/compat.h"
#include "rtk/error.h"
#include "rtk/io.h"
#include "rtk/preprocess.h"
#include "rtk/sha256.h"

namespace rtk {

namespace {

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string(what) + " failed: " + cudaGetErrorString(status));
}

// TensorRT reports through a logger: warnings and errors go to stderr, and the last error is kept
// so a failed deserialization can say why.
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << message << "\n";
    if (severity <= Severity::kERROR) last_error = message;
  }
  std::string last_error;
};

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(std::size_t bytes) { cuda_check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

}  // namespace

struct Classifier::Impl {
  std::string engine_path;
  Sidecar sidecar;
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  cudaStream_t stream = nullptr;
  int device = 0;                               // the CUDA device everything above lives on
  std::unique_ptr<DeviceBuffer> input, output;  // sized for the profile's max batch
  std::size_t image_floats = 0;                 // 3 * H * W
  std::size_t num_classes = 0;

  ~Impl() {
    // The destructor may run in another thread than the constructor: free on the right device.
    static_cast<void>(cudaSetDevice(device));
    // The context must go before the engine, the engine before the runtime (TensorRT's rule).
    context.reset();
    engine.reset();
    runtime.reset();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  // The CUDA runtime's current device is per thread: cudaSetDevice in the constructing thread
  // leaves every other thread on device 0. Each call that touches the GPU sets it first (cheap:
  // no context switch when it is already current).
  void use_device() const { cuda_check(cudaSetDevice(device), "cudaSetDevice"); }

  void check_gpu() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      throw Error("no CUDA GPU is visible: " + engine_path + " needs the " + sidecar.gpu_name + " it was built for");
    }
    if (device < 0 || device >= count) {
      throw Error("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " visible)");
    }
    use_device();
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    check_compute_capability(sidecar, prop.major, prop.minor, prop.name, engine_path);
  }

  // The engine's I/O must be what the sidecar says: one float input [-1, 3, H, W], one float output.
  void check_io() {
    const TensorSpec& in = sidecar.inputs.front();
    const TensorSpec& out = sidecar.outputs.front();
    if (engine->getTensorIOMode(in.name.c_str()) != nvinfer1::TensorIOMode::kINPUT ||
        engine->getTensorIOMode(out.name.c_str()) != nvinfer1::TensorIOMode::kOUTPUT) {
      throw Error(engine_path + ": '" + in.name + "' must be the engine's input and '" + out.name + "' its output");
    }
    for (const TensorSpec* spec : {&in, &out}) {
      if (engine->getTensorDataType(spec->name.c_str()) != nvinfer1::DataType::kFLOAT) {
        throw Error(engine_path + ": tensor '" + spec->name + "' is not float32 in the engine");
      }
    }
    nvinfer1::Dims max = engine->getProfileShape(in.name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
    if (max.nbDims != 4 || max.d[0] != sidecar.profile_max || max.d[1] != in.shape[1] || max.d[2] != in.shape[2] ||
        max.d[3] != in.shape[3]) {
      throw Error(engine_path + ": the engine's optimization profile does not match its sidecar");
    }
  }

  void load(int cuda_device) {
    device = cuda_device;
    std::string sidecar_path = sidecar_path_for(engine_path);
    std::string blob = read_file(engine_path, "engine");
    try {
      sidecar = read_sidecar(sidecar_path);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " (every engine needs the sidecar `rtk build` writes beside it)");
    }
    check_engine_sha256(sidecar, sha256_hex(blob.data(), blob.size()), engine_path);
    check_tensorrt_version(sidecar, version_from_tensorrt_int(getInferLibVersion()), engine_path);
    check_gpu();

    runtime.reset(nvinfer1::createInferRuntime(logger));
    if (!runtime) throw Error("cannot create the TensorRT runtime: " + logger.last_error);
    engine.reset(runtime->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine) throw Error("TensorRT cannot load " + engine_path + ": " + logger.last_error);
    check_io();
    context.reset(engine->createExecutionContext());
    if (!context) throw Error("cannot create a TensorRT execution context: " + logger.last_error);
    cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");

    image_floats = 3 * static_cast<std::size_t>(sidecar.height()) * static_cast<std::size_t>(sidecar.width());
    num_classes = sidecar.classes.size();
    input = std::make_unique<DeviceBuffer>(sidecar.profile_max * image_floats * sizeof(float));
    output = std::make_unique<DeviceBuffer>(sidecar.profile_max * num_classes * sizeof(float));
    if (!context->setTensorAddress(sidecar.inputs.front().name.c_str(), input->ptr) ||
        !context->setTensorAddress(sidecar.outputs.front().name.c_str(), output->ptr)) {
      throw Error("cannot bind the engine's tensors: " + logger.last_error);
    }
  }

  // One chunk of at most profile_max images: copy in, enqueueV3, copy out, wait.
  void run(const float* host_input, int batch, float* host_output) {
    use_device();
    if (batch < sidecar.profile_min) {
      throw Error(engine_path + " takes batches of " + std::to_string(sidecar.profile_min) + " to " +
                  std::to_string(sidecar.profile_max) + " images, not " + std::to_string(batch));
    }
    nvinfer1::Dims shape{};
    shape.nbDims = 4;
    shape.d[0] = batch;
    shape.d[1] = 3;
    shape.d[2] = sidecar.height();
    shape.d[3] = sidecar.width();
    if (!context->setInputShape(sidecar.inputs.front().name.c_str(), shape)) {
      throw Error("the engine refused batch size " + std::to_string(batch) + ": " + logger.last_error);
    }
    cuda_check(cudaMemcpyAsync(input->ptr, host_input, batch * image_floats * sizeof(float), cudaMemcpyHostToDevice,
                               stream), "cudaMemcpyAsync (input)");
    if (!context->enqueueV3(stream)) throw Error("TensorRT inference failed: " + logger.last_error);
    cuda_check(cudaMemcpyAsync(host_output, output->ptr, batch * num_classes * sizeof(float), cudaMemcpyDeviceToHost,
                               stream), "cudaMemcpyAsync (output)");
    cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
};

Classifier::Classifier(const std::string& engine_path, int cuda_device) : impl_(std::make_unique<Impl>()) {
  impl_->engine_path = engine_path;
  impl_->load(cuda_device);
}

Classifier::~Classifier() = default;

const Sidecar& Classifier::sidecar() const { return impl_->sidecar; }

std::vector<float> Classifier::logits(const float* input_nchw, int batch) {
  std::vector<float> out(static_cast<std::size_t>(batch) * impl_->num_classes);
  for (int start = 0; start < batch; start += impl_->sidecar.profile_max) {
    int chunk = std::min(impl_->sidecar.profile_max, batch - start);
    impl_->run(input_nchw + start * impl_->image_floats, chunk, out.data() + start * impl_->num_classes);
  }
  return out;
}

std::vector<std::vector<Prediction>> Classifier::classify(const std::vector<Image>& images, int k) {
  for (const Image& image : images) check_image_size(image, impl_->sidecar.height(), impl_->sidecar.width());
  std::vector<float> input = normalize_batch(images, impl_->sidecar.normalization);
  std::vector<float> out = logits(input.data(), static_cast<int>(images.size()));
  std::vector<std::vector<Prediction>> results;
  for (std::size_t i = 0; i < images.size(); ++i) {
    results.push_back(top_k(out.data() + i * impl_->num_classes, impl_->sidecar.classes, k));
  }
  return results;
}

}  // namespace rtk
