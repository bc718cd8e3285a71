// The rtk contract of an ONNX file, as rtk/onnx_meta.py writes it into the file's metadata_props
// (string values): rtk.format "rtk.onnx/1", rtk.depth "20", rtk.precision "fp32" | "fp16" | "int8",
// rtk.int8_target "cpu" | "tensorrt", rtk.normalization (JSON), rtk.classes (JSON list), and more
// that C++ does not need. The OpenVINO backend hands over the map OpenVINO read from the file;
// nothing here parses ONNX itself. Plus the validation record `rtk quantize` writes beside a model.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "rtk/model_info.h"

namespace rtk {

inline constexpr const char* kOnnxFormat = "rtk.onnx/1";
inline constexpr const char* kValidationFormat = "rtk.validation/1";

// depth, precision, int8_target, normalization and classes from the rtk.* entries of `props`
// (the other fields of ModelInfo are left to the backend). One rtk::Error, prefixed with `origin`,
// for a file without rtk metadata, another format, or a missing or malformed field.
ModelInfo parse_onnx_metadata(const std::map<std::string, std::string>& props, const std::string& origin);

// `<model_path>.json`: the figures `rtk quantize` stored when it validated the model, with the
// sha256 of the file it validated. That sha256, or nullopt where there is no such record (or an
// older one without it). A record that is not rtk's is an rtk::Error.
std::optional<std::string> recorded_sha256(const std::string& model_path);

}  // namespace rtk
