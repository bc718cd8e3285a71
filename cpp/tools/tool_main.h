// What classify, classify_speed and rtk_preprocess_dump share: `--name value` options beside positional
// arguments, and a main() wrapper that turns any rtk::Error into one line and exit status 1.
#pragma once

#include <cstdlib>
#include <exception>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "rtk/error.h"

namespace rtk::tools {

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // "--index" -> "7"
  std::set<std::string> flags;                 // "--tsv"

  std::optional<long> integer(const std::string& name) const {
    auto it = options.find(name);
    if (it == options.end()) return std::nullopt;
    char* end = nullptr;
    long value = std::strtol(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0') throw Error(name + " takes an integer, not '" + it->second + "'");
    return value;
  }

  // integer(name), refused unless lo <= value <= hi (sizes are bounded before any work starts).
  std::optional<long> bounded(const std::string& name, long lo, long hi) const {
    std::optional<long> value = integer(name);
    if (value && (*value < lo || *value > hi)) {
      throw Error(name + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", not " +
                  std::to_string(*value));
    }
    return value;
  }
};

inline Args parse_args(int argc, char** argv, const std::set<std::string>& value_options,
                       const std::set<std::string>& flag_options, std::size_t num_positional) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (flag_options.count(arg)) {
      args.flags.insert(arg);
    } else if (value_options.count(arg)) {
      if (i + 1 == argc) throw Error(arg + " needs a value");
      args.options[arg] = argv[++i];
    } else if (arg.rfind("--", 0) == 0) {
      throw Error("unknown option " + arg);
    } else {
      args.positional.push_back(arg);
    }
  }
  if (args.positional.size() != num_positional) {
    throw Error("expected " + std::to_string(num_positional) + " arguments, got " +
                std::to_string(args.positional.size()) + " (see --help)");
  }
  return args;
}

// Prints `usage` for -h/--help; runs `body`; an rtk::Error becomes "error: ..." on stderr, exit 1.
inline int tool_main(int argc, char** argv, const char* usage, const std::function<int(int, char**)>& body) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << usage;
      return 0;
    }
  }
  try {
    return body(argc, argv);
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {  // e.g. std::bad_alloc: still one line, still non-zero
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace rtk::tools
