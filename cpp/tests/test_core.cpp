// Unit tests of rtk_core (no TensorRT, no CUDA). `rtk_core_tests GROUP` runs one group; ctest
// registers one test per group (CMakeLists.txt).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>

#include "json_fields.h"  // private to the library (src/), tested here
#include "rtk/compat.h"
#include "rtk/error.h"
#include "rtk/image.h"
#include "rtk/io.h"
#include "rtk/onnx_meta.h"
#include "rtk/preprocess.h"
#include "rtk/sidecar.h"
#include "rtk/topk.h"

namespace fs = std::filesystem;

namespace {

int failures = 0;

#define CHECK(cond)                                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
      ++failures;                                                                     \
    }                                                                                 \
  } while (0)

// `body` must throw rtk::Error whose message contains `expected`.
void check_throws(const std::function<void()>& body, const std::string& expected, int line) {
  try {
    body();
  } catch (const rtk::Error& e) {
    if (std::string(e.what()).find(expected) == std::string::npos) {
      std::fprintf(stderr, "%s:%d: error '%s' does not contain '%s'\n", __FILE__, line, e.what(), expected.c_str());
      ++failures;
    }
    return;
  }
  std::fprintf(stderr, "%s:%d: no rtk::Error thrown (expected '%s')\n", __FILE__, line, expected.c_str());
  ++failures;
}
#define CHECK_THROWS(statement, expected) check_throws([&] { statement; }, expected, __LINE__)

// A fresh directory for one test group's files, removed at exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("rtk_core_tests_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::string file = (path / name).string();
    std::ofstream(file, std::ios::binary) << bytes;
    return file;
  }
};

// A sidecar as `rtk build` writes it (common.md), with every key.
std::string sidecar_json(const std::string& override_key = "", const std::string& override_value = "") {
  std::map<std::string, std::string> fields = {
      {"format", R"("rtk.engine/1")"},
      {"tensorrt_version", R"("10.13.0.35")"},
      {"gpu", R"({"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})"},
      {"precision", R"("int8")"},
      {"depth", "20"},
      {"inputs", R"([{"name": "input", "shape": [-1, 3, 32, 32], "dtype": "float32"}])"},
      {"outputs", R"([{"name": "logits", "shape": [-1, 10], "dtype": "float32"}])"},
      {"profile", R"({"min": 1, "opt": 128, "max": 1024})"},
      {"onnx_sha256", R"("aa")"},
      {"engine_sha256", R"("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")"},
      {"normalization", R"({"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
                            "scale": 0.00392156862745098, "value_range": [0, 255], "input_dtype": "uint8",
                            "channel_order": "RGB", "layout": "NCHW", "source_layout": "NHWC"})"},
      {"classes", R"(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])"},
      {"tf32", "true"},
      {"builder_optimization_level", "3"},
      {"layer_precisions", R"({"int8": 20, "float32": 2})"},
  };
  if (!override_key.empty()) fields[override_key] = override_value;
  std::string json = "{";
  for (const auto& [key, value] : fields) {
    if (value.empty()) continue;  // an empty override removes the key
    json += (json.size() > 1 ? ",\n\"" : "\n\"") + key + "\": " + value;
  }
  return json + "\n}";
}

void test_sha256() {
  auto sha = [](const std::string& bytes) { return rtk::sha256_hex(bytes.data(), bytes.size()); };
  // FIPS 180-4 / NIST example vectors.
  CHECK(sha("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // An engine-sized file (3 MiB + 17 bytes, the size of rtk's INT8 ResNet-20 engines), read back
  // from disk; the digest is Python's hashlib.sha256 of the same bytes.
  std::string engine(3 * 1024 * 1024 + 17, '\0');
  for (std::size_t i = 0; i < engine.size(); ++i) engine[i] = static_cast<char>((i * 31 + i / 4096) % 251);
  TempDir dir;
  CHECK(sha(rtk::read_file(dir.write("m.plan", engine), "engine")) ==
        "af68b365757754c18840598e1aa9ef3c5dec8a165ff60c22d4e81ad3e196db85");
  CHECK_THROWS(rtk::read_file((dir.path / "missing.plan").string(), "engine"), "engine not found: ");

  rtk::check_sha256("m.plan", sha("abc"), sha("abc"), "its sidecar", "`rtk build`");
  CHECK_THROWS(rtk::check_sha256("m.plan", sha("abd"), sha("abc"), "its sidecar", "`rtk build`"),
               "m.plan does not match its sidecar (sha256 a52d159f262b..., the record says ba7816bf8f01...): the "
               "file was replaced or changed after `rtk build` wrote it");
}

// The JSON reading under the sidecar and the ONNX metadata: nlohmann/json's parser, rtk's messages.
void test_json() {
  rtk::detail::JsonFields r("x.json");
  rtk::detail::Json doc = r.parse(R"( {"a": [1, -2.5e2, 0.125], "s": "q\"\u00e9\ud83d\ude00", "n": 20, "f": 20.5} )");
  CHECK(doc["a"][1].get<double>() == -250.0 && doc["s"].get<std::string>() == "q\"\xC3\xA9\xF0\x9F\x98\x80");
  CHECK(r.text(doc, "s").size() == 8 && r.integer(doc["n"], "n") == 20);
  CHECK_THROWS(r.text(doc, "missing"), "x.json: missing: missing");
  CHECK_THROWS(r.text(doc, "n"), "x.json: n: expected a string, found a number");
  CHECK_THROWS(r.object(doc, "a"), "x.json: a: expected an object, found an array");
  CHECK_THROWS(r.integer(doc["f"], "f"), "x.json: f: expected an integer, found 20.5");
  CHECK_THROWS(r.integer(doc["s"], "s"), "x.json: s: expected a number, found a string");

  CHECK_THROWS(r.parse(""), "x.json: invalid JSON at byte 1");
  CHECK_THROWS(r.parse("[1, 2,]"), "invalid JSON at byte 7");
  CHECK_THROWS(r.parse("{\"a\" 1}", "rtk.classes"), "x.json: rtk.classes: invalid JSON at byte");
  CHECK_THROWS(r.parse("\"open"), "invalid JSON");
  CHECK_THROWS(r.parse("1e999"), "invalid JSON");
  CHECK_THROWS(r.parse("NaN"), "invalid JSON");
  CHECK_THROWS(r.parse("\"\\ud83d\""), "invalid JSON");
  CHECK_THROWS(r.parse("{} {}"), "invalid JSON");
  CHECK(r.parse(std::string(500, '[') + std::string(500, ']')).is_array());  // deep nesting is no crash

  rtk::detail::Json names = r.parse(R"(["cat", "dog"])");
  CHECK(r.classes(names, "classes") == std::vector<std::string>({"cat", "dog"}));
  CHECK_THROWS(r.classes(r.parse("[]"), "classes"), "classes: expected a list of class names");
  CHECK_THROWS(r.classes(r.parse("[\"cat\", 3]"), "classes"), "found a number");
}

void test_sidecar() {
  rtk::Sidecar s = rtk::parse_sidecar(sidecar_json(), "m.plan.json");
  CHECK(s.tensorrt_version == "10.13.0.35");
  CHECK(s.gpu_name == "NVIDIA H100 80GB HBM3" && s.compute_capability == "9.0");
  CHECK(s.precision == "int8" && s.depth == 20);
  CHECK(s.inputs.size() == 1 && s.inputs[0].name == "input" && s.inputs[0].shape[0] == -1);
  CHECK(s.channels() == 3 && s.height() == 32 && s.width() == 32);
  CHECK(s.outputs[0].name == "logits" && s.outputs[0].shape[1] == 10);
  CHECK(s.profile_min == 1 && s.profile_opt == 128 && s.profile_max == 1024);
  CHECK(s.classes.size() == 10 && s.classes[3] == "cat");
  CHECK(s.normalization.mean[0] == 0.4914f && s.normalization.std[2] == 0.2616f);
  CHECK(s.normalization.scale == static_cast<float>(1.0 / 255.0));

  // Other spellings a writer may choose for the GPU and the profile.
  CHECK(rtk::parse_sidecar(sidecar_json("gpu", R"({"name": "L4", "compute_capability": [8, 9]})"), "x")
            .compute_capability == "8.9");
  CHECK(rtk::parse_sidecar(sidecar_json("gpu", R"({"name": "A100", "compute_capability": 8.0})"), "x")
            .compute_capability == "8.0");
  rtk::Sidecar shapes = rtk::parse_sidecar(
      sidecar_json("profile", R"({"min": [1,3,32,32], "opt": [64,3,32,32], "max": [256,3,32,32]})"), "x");
  CHECK(shapes.profile_opt == 64 && shapes.profile_max == 256);

  CHECK_THROWS(rtk::parse_sidecar("[1]", "m.plan.json"), "m.plan.json: expected an object");
  CHECK_THROWS(rtk::parse_sidecar("{", "m.plan.json"), "m.plan.json: invalid JSON");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("format", R"("rtk.engine/2")"), "m"), "format: 'rtk.engine/2'");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("classes", ""), "m.plan.json"), "m.plan.json: classes: missing");
  CHECK(rtk::parse_sidecar(sidecar_json("runtime", R"("tensorrt")"), "x").depth == 20);
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("runtime", R"("tensorrt-rtx")"), "m.rtx.plan.json"),
               "m.rtx.plan.json: runtime: 'tensorrt-rtx': this library runs TensorRT engines");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("depth", R"("20")"), "m"), "depth: expected a number");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("depth", "20.5"), "m"), "depth: expected an integer");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("profile", R"({"min": 8, "opt": 4, "max": 16})"), "m"),
               "min <= opt <= max");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("normalization",
                                               R"({"mean": [0, 0], "std": [1, 1, 1], "scale": 1})"), "m"),
               "mean: expected 3 values");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("normalization",
                                               R"({"mean": [0, 0, 0], "std": [1, 0, 1], "scale": 1})"), "m"),
               "normalization.std: every value must be > 0");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("normalization", R"({"mean": [0, 0, 0], "std": [1, 1, 1],
                                                "scale": 1, "channel_order": "BGR"})"), "m"),
               "'BGR' is not supported");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("outputs", R"([{"name": "logits", "shape": [-1, 1000],
                                                "dtype": "float32"}])"), "m"), "one logit per class name");
  CHECK_THROWS(rtk::parse_sidecar(sidecar_json("inputs", R"([{"name": "input", "shape": [-1, 32, 32, 3],
                                                "dtype": "float32"}])"), "m"), "must be [N, 3, H, W]");

  TempDir dir;
  CHECK(rtk::read_sidecar(dir.write("m.plan.json", sidecar_json())).depth == 20);
  CHECK(rtk::sidecar_path_for("runs/m.int8.plan") == "runs/m.int8.plan.json");
  CHECK_THROWS(rtk::read_sidecar((dir.path / "none.plan.json").string()), "sidecar not found");
}

// The metadata_props `rtk export` and `rtk quantize` write (rtk/onnx_meta.py), as OpenVINO hands them over.
std::map<std::string, std::string> onnx_props() {
  return {{"rtk.format", "rtk.onnx/1"}, {"rtk.depth", "20"}, {"rtk.precision", "int8"}, {"rtk.int8_target", "cpu"},
          {"rtk.normalization", R"({"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
            "scale": 0.00392156862745098, "value_range": [0, 255], "input_dtype": "uint8", "channel_order": "RGB",
            "layout": "NCHW", "source_layout": "NHWC"})"},
          {"rtk.classes", R"(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
            "truck"])"},
          {"rtk.checkpoint_sha256", "ffceb5b6a048"}, {"rtk.val_acc", "92.24"}, {"rtk.version", "0.1.0"}};
}

void test_onnx_meta() {
  rtk::ModelInfo info = rtk::parse_onnx_metadata(onnx_props(), "m.onnx");
  CHECK(info.depth == 20 && info.precision == "int8" && info.int8_target == "cpu");
  CHECK(info.classes.size() == 10 && info.classes[9] == "truck");
  CHECK(info.normalization.mean[1] == 0.4822f && info.normalization.std[0] == 0.247f);
  CHECK(info.normalization.scale == static_cast<float>(1.0 / 255.0));

  auto with = [](const std::string& key, const std::string& value) {
    auto props = onnx_props();
    if (value.empty()) {
      props.erase(key);
    } else {
      props[key] = value;
    }
    return props;
  };
  CHECK_THROWS(rtk::parse_onnx_metadata({{"producer", "pytorch"}}, "m.onnx"),
               "m.onnx is not an rtk model: its ONNX metadata has no rtk.format");
  CHECK_THROWS(rtk::parse_onnx_metadata(with("rtk.format", "rtk.onnx/9"), "m.onnx"),
               "m.onnx: rtk.format: 'rtk.onnx/9' is not 'rtk.onnx/1'");
  CHECK_THROWS(rtk::parse_onnx_metadata(with("rtk.classes", ""), "m.onnx"), "m.onnx: rtk.classes: missing");
  CHECK_THROWS(rtk::parse_onnx_metadata(with("rtk.classes", "[\"cat\""), "m.onnx"),
               "m.onnx: rtk.classes: invalid JSON at byte");
  CHECK_THROWS(rtk::parse_onnx_metadata(with("rtk.depth", "twenty"), "m.onnx"), "m.onnx: rtk.depth: invalid JSON");
  CHECK_THROWS(rtk::parse_onnx_metadata(with("rtk.normalization", R"({"mean": [0, 0, 0], "std": [1, 1, 1],
                                             "scale": 1, "layout": "NHWC"})"), "m.onnx"),
               "m.onnx: rtk.normalization.layout: 'NHWC' is not supported (expected 'NCHW')");

  TempDir dir;
  std::string model = dir.write("m.onnx", "bytes");
  CHECK(!rtk::recorded_sha256(model));  // no record beside it: nothing to check against
  dir.write("m.onnx.json", R"({"format": "rtk.validation/1", "accuracy_pct": 92.25})");
  CHECK(!rtk::recorded_sha256(model));  // a record from before rtk stored the sha256
  dir.write("m.onnx.json", R"({"format": "rtk.validation/1", "sha256": "abc"})");
  CHECK(rtk::recorded_sha256(model) == std::optional<std::string>("abc"));
  dir.write("m.onnx.json", R"({"format": "something else"})");
  CHECK_THROWS(rtk::recorded_sha256(model), "m.onnx.json: format: 'something else' is not 'rtk.validation/1'");
  dir.write("m.onnx.json", R"({"format": "rtk.valid)");
  CHECK_THROWS(rtk::recorded_sha256(model), "m.onnx.json: invalid JSON at byte");
}

void test_compat() {
  CHECK(rtk::parse_version("10.13.0.35").str() == "10.13.0");
  CHECK(rtk::parse_version("11.4").str() == "11.4.0");
  CHECK_THROWS(rtk::parse_version("ten"), "cannot read TensorRT version 'ten'");
  CHECK(rtk::version_from_tensorrt_int(101300).str() == "10.13.0");
  CHECK(rtk::version_from_tensorrt_int(110401).str() == "11.4.1");
  CHECK(rtk::version_from_tensorrt_int(8601).str() == "8.6.1");

  rtk::Sidecar s = rtk::parse_sidecar(sidecar_json(), "m.plan.json");
  rtk::check_tensorrt_version(s, {10, 13, 0}, "m.plan");  // the build number does not matter
  CHECK_THROWS(rtk::check_tensorrt_version(s, {10, 9, 0}, "m.plan"),
               "m.plan was built with TensorRT 10.13.0 but this program runs TensorRT 10.9.0");
  rtk::check_compute_capability(s, 9, 0, "NVIDIA H100 PCIe", "m.plan");
  CHECK_THROWS(rtk::check_compute_capability(s, 8, 9, "NVIDIA L4", "m.plan"),
               "built for NVIDIA H100 80GB HBM3 (compute capability 9.0) but this GPU is NVIDIA L4 "
               "(compute capability 8.9)");
}

std::string cifar_record(int label, int seed) {
  std::string record(rtk::kCifarRecordBytes, '\0');
  record[0] = static_cast<char>(label);
  for (std::size_t i = 1; i < record.size(); ++i) record[i] = static_cast<char>((i * 7 + seed) % 256);
  return record;
}

void test_image() {
  TempDir dir;
  std::string cifar = dir.write("two.bin", cifar_record(3, 0) + cifar_record(8, 1));
  auto both = rtk::read_images(cifar);
  CHECK(both.size() == 2 && both[0].label == 3 && both[1].label == 8);
  CHECK(both[1].origin == cifar + "[1]");
  // Planar R, G, B -> HWC: pixel (y=0, x=1) is bytes 1+1 (R), 1+1024+1 (G), 1+2048+1 (B) of its record.
  const rtk::Image second = rtk::read_images(cifar, 1).at(0);
  std::string raw = cifar_record(8, 1);
  CHECK(second.width == 32 && second.height == 32 && second.rgb.size() == 3072);
  CHECK(second.rgb[3] == static_cast<std::uint8_t>(raw[2]) && second.rgb[4] == static_cast<std::uint8_t>(raw[1026]) &&
        second.rgb[5] == static_cast<std::uint8_t>(raw[2050]));
  CHECK_THROWS(rtk::read_images(cifar, 2), "--index 2 is out of range (the file holds 2 images)");
  CHECK_THROWS(rtk::read_images(cifar, -1), "out of range");
  CHECK_THROWS(rtk::read_images(dir.write("short.bin", cifar_record(1, 0).substr(0, 3000))),
               "3000 bytes is not a CIFAR-10 binary file");

  std::string pixels;
  for (int i = 0; i < 32 * 32 * 3; ++i) pixels += static_cast<char>(i % 251);
  std::string ppm = dir.write("img.ppm", "P6\n# made by a test\n32 32\n255\n" + pixels);
  auto read = rtk::read_images(ppm);
  CHECK(read.size() == 1 && read[0].width == 32 && read[0].label == -1);
  CHECK(read[0].rgb.size() == pixels.size() && std::memcmp(read[0].rgb.data(), pixels.data(), pixels.size()) == 0);
  rtk::check_image_size(read[0], 32, 32);
  CHECK_THROWS(rtk::read_images(ppm, 1), "a PPM file holds one image");

  std::string wide = dir.write("wide.ppm", "P6 64 16 255\n" + std::string(64 * 16 * 3, '\x10'));
  CHECK_THROWS(rtk::check_image_size(rtk::read_images(wide).at(0), 32, 32),
               "wide.ppm is 64x16 pixels but the model takes 32x32 RGB images");
  CHECK_THROWS(rtk::read_images(dir.write("deep.ppm", "P6 32 32 65535\n" + pixels)), "maxval 65535");
  CHECK_THROWS(rtk::read_images(dir.write("cut.ppm", "P6 32 32 255\n" + pixels.substr(0, 100))), "truncated");
  CHECK_THROWS(rtk::read_images(dir.write("bad.ppm", "P6 x 32 255\n")), "malformed PPM header");
  CHECK_THROWS(rtk::read_images((dir.path / "missing.ppm").string()), "image file not found: ");
  CHECK_THROWS(rtk::read_images(dir.path.string()), "is a directory");

  std::string fake_png = dir.write("fake.png", std::string("\x89PNG\r\n\x1a\n", 8) + "not really a png");
  CHECK_THROWS(rtk::read_images(fake_png), rtk::png_supported() ? "unreadable PNG" : "PNG input is not supported");
}

void test_preprocess() {
  rtk::Normalization norm;
  norm.mean = {0.4914f, 0.4822f, 0.4465f};
  norm.std = {0.2470f, 0.2435f, 0.2616f};
  norm.scale = static_cast<float>(1.0 / 255.0);
  rtk::Image image;
  image.width = 2;
  image.height = 1;
  image.rgb = {0, 128, 255, 10, 20, 30};  // pixel (0,0) = RGB(0,128,255), pixel (0,1) = RGB(10,20,30)
  std::vector<float> out(6);
  rtk::normalize_image(image, norm, out.data());
  auto expected = [&](int pixel, int c) { return (static_cast<float>(pixel) * norm.scale - norm.mean[c]) / norm.std[c]; };
  // CHW: R of both pixels, then G, then B.
  CHECK(out[0] == expected(0, 0) && out[1] == expected(10, 0));
  CHECK(out[2] == expected(128, 1) && out[3] == expected(20, 1));
  CHECK(out[4] == expected(255, 2) && out[5] == expected(30, 2));
  CHECK(std::fabs(out[0] - (-0.4914f / 0.2470f)) < 1e-6f);

  rtk::Image other = image;
  other.width = 1;
  other.height = 2;
  other.origin = "tall.ppm";
  CHECK(rtk::normalize_batch({image, image}, norm).size() == 12);
  CHECK_THROWS(rtk::normalize_batch({image, other}, norm), "tall.ppm is 1x2 pixels but the model takes 2x1");
}

void test_topk() {
  const std::vector<std::string> names = {"a", "b", "c", "d"};
  const float logits[] = {1.0f, 3.0f, 3.0f, -2.0f};
  auto top = rtk::top_k(logits, names, 3);
  CHECK(top.size() == 3);
  CHECK(top[0].index == 1 && top[0].name == "b" && top[1].index == 2 && top[2].index == 0);
  CHECK(top[0].probability == top[1].probability && top[1].probability > top[2].probability);
  auto probs = rtk::softmax(logits, 4);
  float sum = probs[0] + probs[1] + probs[2] + probs[3];
  CHECK(std::fabs(sum - 1.0f) < 1e-6f);
  CHECK(std::fabs(probs[0] - std::exp(1.0f) / (std::exp(1.0f) + 2 * std::exp(3.0f) + std::exp(-2.0f))) < 1e-6f);
  CHECK(rtk::top_k(logits, names, 10).size() == 4);  // k is clamped to the number of classes
  const float huge[] = {1000.0f, 1001.0f};
  auto stable = rtk::softmax(huge, 2);
  CHECK(std::isfinite(stable[0]) && std::fabs(stable[1] - 1.0f / (1.0f + std::exp(-1.0f))) < 1e-6f);
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<void()>> groups = {
      {"sha256", test_sha256}, {"json", test_json}, {"sidecar", test_sidecar}, {"onnx_meta", test_onnx_meta},
      {"compat", test_compat},
      {"image", test_image},   {"preprocess", test_preprocess}, {"topk", test_topk},
  };
  for (int i = 1; i < argc; ++i) {
    if (!groups.count(argv[i])) {
      std::fprintf(stderr, "unknown test group %s\n", argv[i]);
      return 2;
    }
  }
  for (const auto& [name, run] : groups) {
    bool selected = argc == 1;
    for (int i = 1; i < argc; ++i) selected = selected || name == argv[i];
    if (selected) run();
  }
  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
