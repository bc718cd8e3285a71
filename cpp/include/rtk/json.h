// A small JSON reader for the engine sidecar (<engine>.json, written by `rtk build`).
//
// Why our own and not nlohmann/json (MIT, would be fine licence-wise): its single header is about
// 25k lines and adds several seconds to every file that includes it on CI's 2 cores, while the
// sidecar is a small file rtk writes itself. ~200 lines of RFC 8259 (objects, arrays, strings with
// \uXXXX escapes, numbers, true/false/null) cover it; errors name the byte offset.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rtk {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  static Json parse(std::string_view text);  // throws rtk::Error ("invalid JSON at byte N: ...")

  Type type() const { return type_; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; a value of another type throws rtk::Error naming the expected type.
  bool boolean() const;
  double number() const;
  const std::string& string() const;
  const std::vector<Json>& array() const;
  const std::vector<std::pair<std::string, Json>>& members() const;

  // Object member by key: nullptr when absent (find) or rtk::Error (at).
  const Json* find(std::string_view key) const;
  const Json& at(std::string_view key) const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::vector<std::pair<std::string, Json>> members_;  // in file order
};

}  // namespace rtk
