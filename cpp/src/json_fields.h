// Typed reads of JSON fields (nlohmann/json) whose errors are one line naming the file and the
// key: "m.plan.json: profile.max: expected an integer, found a string". The engine sidecar and the
// ONNX file's rtk metadata both read through it, so the two backends take (and refuse) the
// normalization and the class names alike. Private to the library: no app sees nlohmann/json.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "rtk/model_info.h"

namespace rtk::detail {

using Json = nlohmann::json;

class JsonFields {
 public:
  // `missing`: the reason given for a missing key.
  explicit JsonFields(std::string origin, std::string missing = "missing")
      : origin_(std::move(origin)), missing_(std::move(missing)) {}

  // rtk::Error "<origin>: <key>: <what>" (no key: "<origin>: <what>").
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;

  // The document in `text`; "invalid JSON at byte N: ..." naming `key` (the field it came from).
  Json parse(std::string_view text, const std::string& key = "") const;

  // parent[key], or rtk::Error when it is missing.
  const Json& get(const Json& parent, const std::string& key) const;
  const Json& object(const Json& parent, const std::string& key) const;
  std::string text(const Json& parent, const std::string& key) const;
  int integer(const Json& value, const std::string& key) const;

  // The normalization recipe (rtk.preprocess.normalization_metadata) in object `n` read from `key`;
  // a channel order, layout or input type other than the one C++ implements is refused.
  Normalization normalization(const Json& n, const std::string& key) const;
  std::vector<std::string> classes(const Json& names, const std::string& key) const;

  // A value of another type than `wanted` ("a string"): rtk::Error naming `key`; without a key,
  // an rtk::Error for the caller to name it.
  void expect(bool ok, const Json& value, const char* wanted, const std::string& key) const;
  static void expect(bool ok, const Json& value, const char* wanted);
  static int as_int(const Json& value);

 private:
  std::string origin_;
  std::string missing_;
};

}  // namespace rtk::detail
