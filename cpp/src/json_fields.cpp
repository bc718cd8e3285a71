#include "json_fields.h"

#include <cmath>
#include <utility>

#include "rtk/error.h"

namespace rtk::detail {

namespace {

std::string with_article(const std::string& type_name) {
  return (type_name.find_first_of("aeiou") == 0 ? "an " : "a ") + type_name;
}

std::string number_text(const Json& value) {
  std::string text = value.dump();
  return text.size() > 20 ? text.substr(0, 20) + "..." : text;
}

}  // namespace

void JsonFields::fail(const std::string& key, const std::string& what) const {
  throw Error(origin_ + ": " + (key.empty() ? "" : key + ": ") + what);
}

Json JsonFields::parse(std::string_view text, const std::string& key) const {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 2: syntax error ...".
    std::string reason = e.what();
    std::size_t colon = reason.find(": ");
    fail(key, "invalid JSON at byte " + std::to_string(e.byte) + ": " +
                  (colon == std::string::npos ? reason : reason.substr(colon + 2)));
  } catch (const Json::exception& e) {  // a number out of range, ...
    fail(key, std::string("invalid JSON: ") + e.what());
  }
}

void JsonFields::expect(bool ok, const Json& value, const char* wanted) {
  if (!ok) throw Error(std::string("expected ") + wanted + ", found " + with_article(value.type_name()));
}

void JsonFields::expect(bool ok, const Json& value, const char* wanted, const std::string& key) const {
  if (!ok) fail(key, std::string("expected ") + wanted + ", found " + with_article(value.type_name()));
}

int JsonFields::as_int(const Json& value) {
  expect(value.is_number(), value, "a number");
  double x = value.get<double>();
  if (x != std::floor(x) || std::fabs(x) > 1e9) throw Error("expected an integer, found " + number_text(value));
  return static_cast<int>(x);
}

const Json& JsonFields::get(const Json& parent, const std::string& key) const {
  auto it = parent.find(key);
  if (it == parent.end()) fail(key, missing_);
  return *it;
}

const Json& JsonFields::object(const Json& parent, const std::string& key) const {
  const Json& value = get(parent, key);
  expect(value.is_object(), value, "an object", key);
  return value;
}

std::string JsonFields::text(const Json& parent, const std::string& key) const {
  const Json& value = get(parent, key);
  expect(value.is_string(), value, "a string", key);
  return value.get<std::string>();
}

int JsonFields::integer(const Json& value, const std::string& key) const {
  try {
    return as_int(value);
  } catch (const Error& e) {
    fail(key, e.what());
  }
}

Normalization JsonFields::normalization(const Json& n, const std::string& key) const {
  expect(n.is_object(), n, "an object", key);
  auto per_channel = [&](const char* name) {
    const Json& values = get(n, name);
    std::array<float, 3> out{};
    if (!values.is_array() || values.size() != 3) {
      fail(key + "." + name, "expected 3 values (R, G, B), found " +
                                 (values.is_array() ? std::to_string(values.size()) : with_article(values.type_name())));
    }
    for (std::size_t c = 0; c < 3; ++c) {
      if (!values[c].is_number()) fail(key + "." + name, "expected numbers");
      // double -> float as numpy's float32 conversion of the same JSON numbers does.
      out[c] = static_cast<float>(values[c].get<double>());
    }
    return out;
  };
  Normalization norm;
  norm.mean = per_channel("mean");
  norm.std = per_channel("std");
  const Json& scale = get(n, "scale");
  expect(scale.is_number(), scale, "a number", key + ".scale");
  norm.scale = static_cast<float>(scale.get<double>());
  for (float s : norm.std) {
    if (!(s > 0.0f)) fail(key + ".std", "every value must be > 0");
  }
  // The C++ preprocessing implements this one recipe; anything else must not be silently misread.
  const std::pair<const char*, const char*> fixed[] = {
      {"channel_order", "RGB"}, {"layout", "NCHW"}, {"input_dtype", "uint8"}};
  for (const auto& [name, expected] : fixed) {
    auto it = n.find(name);
    if (it == n.end()) continue;
    std::string found = it->is_string() ? it->get<std::string>() : it->dump();
    if (found != expected) fail(key + "." + name, "'" + found + "' is not supported (expected '" + expected + "')");
  }
  return norm;
}

std::vector<std::string> JsonFields::classes(const Json& names, const std::string& key) const {
  if (!names.is_array() || names.empty()) fail(key, "expected a list of class names");
  std::vector<std::string> out;
  for (const Json& name : names) {
    if (!name.is_string()) fail(key, "expected class names (strings), found " + with_article(name.type_name()));
    out.push_back(name.get<std::string>());
  }
  return out;
}

}  // namespace rtk::detail
