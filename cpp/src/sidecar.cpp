#include "rtk/sidecar.h"

#include <sstream>

#include "json_fields.h"
#include "rtk/error.h"
#include "rtk/io.h"

namespace rtk {

namespace {

using detail::Json;
using detail::JsonFields;

// A profile entry: a batch size, or a full shape whose first element is the batch size.
int batch_size(const Json& v) {
  if (v.is_array()) {
    if (v.empty()) throw Error("empty shape");
    return JsonFields::as_int(v.front());
  }
  return JsonFields::as_int(v);
}

// "9.0", 9.0 or [9, 0] -> "9.0".
std::string compute_capability(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array() && v.size() == 2) {
    return std::to_string(JsonFields::as_int(v[0])) + "." + std::to_string(JsonFields::as_int(v[1]));
  }
  JsonFields::expect(v.is_number(), v, "a number");
  std::ostringstream out;
  out << v.get<double>();
  std::string s = out.str();
  return s.find('.') == std::string::npos ? s + ".0" : s;
}

std::vector<TensorSpec> tensors(const Json& v) {
  JsonFields::expect(v.is_array(), v, "an array");
  std::vector<TensorSpec> specs;
  for (const Json& t : v) {
    JsonFields::expect(t.is_object() && t.contains("name") && t.contains("shape") && t.contains("dtype"), t,
                       "an object with name, shape and dtype");
    JsonFields::expect(t["name"].is_string() && t["dtype"].is_string(), t["name"], "strings for name and dtype");
    TensorSpec spec{t["name"].get<std::string>(), {}, t["dtype"].get<std::string>()};
    JsonFields::expect(t["shape"].is_array(), t["shape"], "an array");
    for (const Json& d : t["shape"]) spec.shape.push_back(JsonFields::as_int(d));
    specs.push_back(std::move(spec));
  }
  if (specs.empty()) throw Error("no tensors listed");
  return specs;
}

}  // namespace

int Sidecar::channels() const { return static_cast<int>(inputs.at(0).shape.at(1)); }
int Sidecar::height() const { return static_cast<int>(inputs.at(0).shape.at(2)); }
int Sidecar::width() const { return static_cast<int>(inputs.at(0).shape.at(3)); }

Sidecar parse_sidecar(std::string_view json_text, const std::string& origin) {
  JsonFields r(origin, "missing (is this a sidecar written by `rtk build`?)");
  Json root = r.parse(json_text);
  r.expect(root.is_object(), root, "an object", "");
  if (std::string format = r.text(root, "format"); format != kSidecarFormat) {
    r.fail("format", "'" + format + "' is not '" + kSidecarFormat + "'");
  }
  // rtk build --runtime tensorrt-rtx writes the same format for TensorRT for RTX engines, which
  // only TensorRT for RTX's own runtime loads (rtk.runtime runs them; this library links TensorRT).
  if (root.contains("runtime")) {
    if (std::string runtime = r.text(root, "runtime"); runtime != "tensorrt") {
      r.fail("runtime", "'" + runtime + "': this library runs TensorRT engines (rtk build --runtime tensorrt) "
                        "and ONNX files; run this engine with rtk.runtime");
    }
  }
  // Runs `read` on root[key] (or parent[key]) and names the key in its error.
  auto field = [&](const Json& parent, const std::string& key, auto read) {
    const Json& value = r.get(parent, key);
    try {
      return read(value);
    } catch (const Error& e) {
      r.fail(key, e.what());
    }
  };
  Sidecar s;
  s.tensorrt_version = r.text(root, "tensorrt_version");
  const Json& gpu = r.object(root, "gpu");
  s.gpu_name = r.text(gpu, "name");
  s.compute_capability = field(gpu, "compute_capability", compute_capability);
  s.precision = r.text(root, "precision");
  s.depth = r.integer(r.get(root, "depth"), "depth");
  s.inputs = field(root, "inputs", tensors);
  s.outputs = field(root, "outputs", tensors);
  const Json& profile = r.object(root, "profile");
  s.profile_min = field(profile, "min", batch_size);
  s.profile_opt = field(profile, "opt", batch_size);
  s.profile_max = field(profile, "max", batch_size);
  if (!(1 <= s.profile_min && s.profile_min <= s.profile_opt && s.profile_opt <= s.profile_max)) {
    r.fail("profile", "expected 1 <= min <= opt <= max batch size");
  }
  s.onnx_sha256 = r.text(root, "onnx_sha256");
  s.engine_sha256 = r.text(root, "engine_sha256");
  s.normalization = r.normalization(r.get(root, "normalization"), "normalization");
  s.classes = r.classes(r.get(root, "classes"), "classes");

  const TensorSpec& input = s.inputs.front();
  if (input.shape.size() != 4 || input.shape[1] != 3 || input.shape[2] <= 0 || input.shape[3] <= 0) {
    r.fail("inputs", "input '" + input.name + "' must be [N, 3, H, W]");
  }
  const TensorSpec& output = s.outputs.front();
  if (output.shape.size() != 2 || output.shape[1] != static_cast<std::int64_t>(s.classes.size())) {
    r.fail("outputs", "output '" + output.name + "' must be [N, " + std::to_string(s.classes.size()) +
                          "] (one logit per class name)");
  }
  return s;
}

Sidecar read_sidecar(const std::string& path) { return parse_sidecar(read_file(path, "sidecar"), path); }

std::string sidecar_path_for(const std::string& engine_path) { return engine_path + ".json"; }

}  // namespace rtk
