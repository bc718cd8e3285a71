// The one exception type of the rtk C++ library: a problem a user can cause (missing file, wrong
// input size, engine built for another TensorRT or GPU). Programs print what() as one line.
#pragma once

#include <stdexcept>
#include <string>

namespace rtk {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace rtk
