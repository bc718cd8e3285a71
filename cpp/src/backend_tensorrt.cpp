// The TensorRT backend of rtk_infer (compiled only where TensorRT and the CUDA runtime are found):
// an engine from `rtk build` and its sidecar. Everything a machine without TensorRT can check
// (sidecar, hashes, versions) lives in rtk_core and is unit-tested there.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <iostream>

#include "backend.h"
#include "rtk/compat.h"
#include "rtk/error.h"
#include "rtk/io.h"
#include "rtk/sidecar.h"

namespace rtk::detail {

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

class TensorRTBackend : public Backend {
 public:
  TensorRTBackend(const std::string& path, int cuda_device) : path_(path), device_(cuda_device) {}

  ~TensorRTBackend() override {
    // The destructor may run in another thread than the constructor: free on the right device.
    static_cast<void>(cudaSetDevice(device_));
    // The context must go before the engine, the engine before the runtime (TensorRT's rule).
    context_.reset();
    engine_.reset();
    runtime_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Called by open_tensorrt right after construction: a failure part way still runs the destructor.
  void load() {
    std::string sidecar_path = sidecar_path_for(path_);
    std::string blob = read_file(path_, "engine");
    try {
      sidecar_ = read_sidecar(sidecar_path);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " (every engine needs the sidecar `rtk build` writes beside it)");
    }
    check_sha256(path_, sha256_hex(blob.data(), blob.size()), sidecar_.engine_sha256, "its sidecar",
                 "`rtk build`");
    Version here = version_from_tensorrt_int(getInferLibVersion());
    check_tensorrt_version(sidecar_, here, path_);
    check_gpu();
    info_ = {path_, "tensorrt", here.str(), sidecar_.depth, sidecar_.precision, "", sidecar_.normalization,
             sidecar_.classes, sidecar_.height(), sidecar_.width()};
    max_batch_ = sidecar_.profile_max;

    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error("cannot create the TensorRT runtime: " + logger_.last_error);
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) throw Error("TensorRT cannot load " + path_ + ": " + logger_.last_error);
    check_io();
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("cannot create a TensorRT execution context: " + logger_.last_error);
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");

    input_ = std::make_unique<DeviceBuffer>(sidecar_.profile_max * image_floats() * sizeof(float));
    output_ = std::make_unique<DeviceBuffer>(sidecar_.profile_max * info_.classes.size() * sizeof(float));
    if (!context_->setTensorAddress(sidecar_.inputs.front().name.c_str(), input_->ptr) ||
        !context_->setTensorAddress(sidecar_.outputs.front().name.c_str(), output_->ptr)) {
      throw Error("cannot bind the engine's tensors: " + logger_.last_error);
    }
  }

  // One chunk of at most profile_max images: copy in, enqueueV3, copy out, wait.
  void run(const float* host_input, int batch, float* host_output) override {
    use_device();
    if (batch < sidecar_.profile_min) {
      throw Error(path_ + " takes batches of " + std::to_string(sidecar_.profile_min) + " to " +
                  std::to_string(sidecar_.profile_max) + " images, not " + std::to_string(batch));
    }
    nvinfer1::Dims shape{};
    shape.nbDims = 4;
    shape.d[0] = batch;
    shape.d[1] = 3;
    shape.d[2] = info_.height;
    shape.d[3] = info_.width;
    if (!context_->setInputShape(sidecar_.inputs.front().name.c_str(), shape)) {
      throw Error("the engine refused batch size " + std::to_string(batch) + ": " + logger_.last_error);
    }
    cuda_check(cudaMemcpyAsync(input_->ptr, host_input, batch * image_floats() * sizeof(float),
                               cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (input)");
    if (!context_->enqueueV3(stream_)) throw Error("TensorRT inference failed: " + logger_.last_error);
    cuda_check(cudaMemcpyAsync(host_output, output_->ptr, batch * info_.classes.size() * sizeof(float),
                               cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync (output)");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

 private:
  std::size_t image_floats() const { return 3 * static_cast<std::size_t>(info_.height) * info_.width; }

  // The CUDA runtime's current device is per thread: cudaSetDevice in the constructing thread
  // leaves every other thread on device 0. Each call that touches the GPU sets it first (cheap:
  // no context switch when it is already current).
  void use_device() const { cuda_check(cudaSetDevice(device_), "cudaSetDevice"); }

  void check_gpu() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      throw Error("no CUDA GPU is visible: " + path_ + " needs the " + sidecar_.gpu_name + " it was built for");
    }
    if (device_ < 0 || device_ >= count) {
      throw Error("CUDA device " + std::to_string(device_) + " does not exist (" + std::to_string(count) + " visible)");
    }
    use_device();
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
    check_compute_capability(sidecar_, prop.major, prop.minor, prop.name, path_);
  }

  // The engine's I/O must be what the sidecar says: one float input [-1, 3, H, W], one float output.
  void check_io() {
    const TensorSpec& in = sidecar_.inputs.front();
    const TensorSpec& out = sidecar_.outputs.front();
    if (engine_->getTensorIOMode(in.name.c_str()) != nvinfer1::TensorIOMode::kINPUT ||
        engine_->getTensorIOMode(out.name.c_str()) != nvinfer1::TensorIOMode::kOUTPUT) {
      throw Error(path_ + ": '" + in.name + "' must be the engine's input and '" + out.name + "' its output");
    }
    for (const TensorSpec* spec : {&in, &out}) {
      if (engine_->getTensorDataType(spec->name.c_str()) != nvinfer1::DataType::kFLOAT) {
        throw Error(path_ + ": tensor '" + spec->name + "' is not float32 in the engine");
      }
    }
    nvinfer1::Dims max = engine_->getProfileShape(in.name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
    if (max.nbDims != 4 || max.d[0] != sidecar_.profile_max || max.d[1] != in.shape[1] ||
        max.d[2] != in.shape[2] || max.d[3] != in.shape[3]) {
      throw Error(path_ + ": the engine's optimization profile does not match its sidecar");
    }
  }

  std::string path_;
  int device_ = 0;  // the CUDA device everything below lives on
  Sidecar sidecar_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<DeviceBuffer> input_, output_;  // sized for the profile's max batch
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const std::string& path, const Options& options) {
  auto backend = std::make_unique<TensorRTBackend>(path, options.cuda_device);
  backend->load();
  return backend;
}

}  // namespace rtk::detail
