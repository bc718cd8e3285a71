#include "rtk/sidecar.h"

#include <cmath>
#include <functional>
#include <sstream>

#include "rtk/error.h"
#include "rtk/io.h"
#include "rtk/json.h"

namespace rtk {

namespace {

// Reads the fields of one sidecar; every error names the file and the key ("x.json: profile.max: ...").
class SidecarReader {
 public:
  explicit SidecarReader(std::string origin) : origin_(std::move(origin)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(origin_ + ": " + (key.empty() ? "" : key + ": ") + what);
  }

  // Runs `read` and turns a JSON type error into one naming `key`.
  template <typename T>
  T field(const Json& parent, const std::string& key, const std::function<T(const Json&)>& read) const {
    const Json* value = parent.find(key);
    if (value == nullptr) fail(key, "missing (is this a sidecar written by `rtk build`?)");
    try {
      return read(*value);
    } catch (const Error& e) {
      fail(key, e.what());
    }
  }

  const Json& object(const Json& parent, const std::string& key) const {
    return field<const Json&>(parent, key, [](const Json& v) -> const Json& {
      v.members();  // throws unless v is an object
      return v;
    });
  }

  std::string text(const Json& parent, const std::string& key) const {
    return field<std::string>(parent, key, [](const Json& v) { return v.string(); });
  }

  int integer(const Json& parent, const std::string& key) const {
    return field<int>(parent, key, [](const Json& v) { return as_int(v); });
  }

  static int as_int(const Json& v) {
    double x = v.number();
    if (x != std::floor(x) || std::fabs(x) > 1e9) throw Error("expected an integer, found " + std::to_string(x));
    return static_cast<int>(x);
  }

  // A profile entry: a batch size, or a full shape whose first element is the batch size.
  static int batch_size(const Json& v) {
    if (v.is_array()) {
      if (v.array().empty()) throw Error("empty shape");
      return as_int(v.array().front());
    }
    return as_int(v);
  }

  // "9.0", 9.0 or [9, 0] -> "9.0".
  static std::string compute_capability(const Json& v) {
    if (v.is_string()) return v.string();
    if (v.is_array() && v.array().size() == 2) {
      return std::to_string(as_int(v.array()[0])) + "." + std::to_string(as_int(v.array()[1]));
    }
    std::ostringstream out;
    out << v.number();
    std::string s = out.str();
    return s.find('.') == std::string::npos ? s + ".0" : s;
  }

  static std::array<float, 3> per_channel(const Json& v) {
    const auto& values = v.array();
    if (values.size() != 3) throw Error("expected 3 values (R, G, B), found " + std::to_string(values.size()));
    // Cast double -> float as numpy's float32 conversion of the same JSON numbers does.
    return {static_cast<float>(values[0].number()), static_cast<float>(values[1].number()),
            static_cast<float>(values[2].number())};
  }

  std::vector<TensorSpec> tensors(const Json& root, const std::string& key) const {
    return field<std::vector<TensorSpec>>(root, key, [](const Json& v) {
      std::vector<TensorSpec> specs;
      for (const Json& t : v.array()) {
        TensorSpec spec{t.at("name").string(), {}, t.at("dtype").string()};
        for (const Json& d : t.at("shape").array()) spec.shape.push_back(as_int(d));
        specs.push_back(std::move(spec));
      }
      if (specs.empty()) throw Error("no tensors listed");
      return specs;
    });
  }

  Normalization normalization(const Json& root) const {
    const Json& n = object(root, "normalization");
    Normalization norm;
    norm.mean = field<std::array<float, 3>>(n, "mean", per_channel);
    norm.std = field<std::array<float, 3>>(n, "std", per_channel);
    norm.scale = field<float>(n, "scale", [](const Json& v) { return static_cast<float>(v.number()); });
    for (float s : norm.std) {
      if (!(s > 0.0f)) fail("normalization.std", "every value must be > 0");
    }
    // The C++ preprocessing implements this one recipe; anything else must not be silently misread.
    const std::pair<const char*, const char*> fixed[] = {
        {"channel_order", "RGB"}, {"layout", "NCHW"}, {"input_dtype", "uint8"}};
    for (const auto& [key, expected] : fixed) {
      if (n.find(key) != nullptr && text(n, key) != expected) {
        fail("normalization." + std::string(key), "'" + text(n, key) + "' is not supported (expected '" +
                                                      expected + "')");
      }
    }
    return norm;
  }

 private:
  std::string origin_;
};

}  // namespace

int Sidecar::channels() const { return static_cast<int>(inputs.at(0).shape.at(1)); }
int Sidecar::height() const { return static_cast<int>(inputs.at(0).shape.at(2)); }
int Sidecar::width() const { return static_cast<int>(inputs.at(0).shape.at(3)); }

Sidecar parse_sidecar(std::string_view json_text, const std::string& origin) {
  SidecarReader r(origin);
  Json root;
  try {
    root = Json::parse(json_text);
    root.members();
  } catch (const Error& e) {
    r.fail("", e.what());
  }
  if (std::string format = r.text(root, "format"); format != kSidecarFormat) {
    r.fail("format", "'" + format + "' is not '" + kSidecarFormat + "'");
  }
  Sidecar s;
  s.tensorrt_version = r.text(root, "tensorrt_version");
  const Json& gpu = r.object(root, "gpu");
  s.gpu_name = r.text(gpu, "name");
  s.compute_capability = r.field<std::string>(gpu, "compute_capability", SidecarReader::compute_capability);
  s.precision = r.text(root, "precision");
  s.depth = r.integer(root, "depth");
  s.inputs = r.tensors(root, "inputs");
  s.outputs = r.tensors(root, "outputs");
  const Json& profile = r.object(root, "profile");
  s.profile_min = r.field<int>(profile, "min", SidecarReader::batch_size);
  s.profile_opt = r.field<int>(profile, "opt", SidecarReader::batch_size);
  s.profile_max = r.field<int>(profile, "max", SidecarReader::batch_size);
  if (!(1 <= s.profile_min && s.profile_min <= s.profile_opt && s.profile_opt <= s.profile_max)) {
    r.fail("profile", "expected 1 <= min <= opt <= max batch size");
  }
  s.onnx_sha256 = r.text(root, "onnx_sha256");
  s.engine_sha256 = r.text(root, "engine_sha256");
  s.normalization = r.normalization(root);
  s.classes = r.field<std::vector<std::string>>(root, "classes", [](const Json& v) {
    std::vector<std::string> names;
    for (const Json& name : v.array()) names.push_back(name.string());
    return names;
  });

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
