#include "rtk/onnx_meta.h"

#include <filesystem>

#include "json_fields.h"
#include "rtk/error.h"
#include "rtk/io.h"

namespace rtk {

using detail::Json;
using detail::JsonFields;

ModelInfo parse_onnx_metadata(const std::map<std::string, std::string>& props, const std::string& origin) {
  auto format = props.find("rtk.format");
  if (format == props.end()) {
    throw Error(origin + " is not an rtk model: its ONNX metadata has no rtk.format (make it with `rtk export` "
                "or `rtk quantize`)");
  }
  JsonFields r(origin);
  if (format->second != kOnnxFormat) {
    r.fail("rtk.format", "'" + format->second + "' is not '" + kOnnxFormat + "'");
  }
  auto value = [&](const std::string& key) -> const std::string& {
    auto it = props.find(key);
    if (it == props.end()) r.fail(key, "missing (every rtk ONNX file carries it)");
    return it->second;
  };
  ModelInfo info;
  info.depth = r.integer(r.parse(value("rtk.depth"), "rtk.depth"), "rtk.depth");
  info.precision = value("rtk.precision");
  if (auto target = props.find("rtk.int8_target"); target != props.end()) info.int8_target = target->second;
  info.normalization = r.normalization(r.parse(value("rtk.normalization"), "rtk.normalization"), "rtk.normalization");
  info.classes = r.classes(r.parse(value("rtk.classes"), "rtk.classes"), "rtk.classes");
  return info;
}

std::optional<std::string> recorded_sha256(const std::string& model_path) {
  std::string path = model_path + ".json";
  std::error_code ignored;
  if (!std::filesystem::exists(path, ignored)) return std::nullopt;
  JsonFields r(path);
  Json record = r.parse(read_file(path, "validation record"));
  r.expect(record.is_object(), record, "an object", "");
  if (std::string format = r.text(record, "format"); format != kValidationFormat) {
    r.fail("format", "'" + format + "' is not '" + kValidationFormat + "' (the record `rtk quantize` writes beside "
           "a model it validated; move this file away from the model)");
  }
  if (!record.contains("sha256")) return std::nullopt;
  return r.text(record, "sha256");
}

}  // namespace rtk
