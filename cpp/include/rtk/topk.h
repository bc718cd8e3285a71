// Logits -> the k most probable classes, with the names from the sidecar.
#pragma once

#include <string>
#include <vector>

namespace rtk {

struct Prediction {
  int index = -1;
  std::string name;
  float probability = 0.0f;  // softmax over all classes
};

// Softmax of `logits` (numerically stable: the max is subtracted first).
std::vector<float> softmax(const float* logits, int num_classes);
// The k largest, most probable first; equal probabilities keep the lower class index first.
std::vector<Prediction> top_k(const float* logits, const std::vector<std::string>& classes, int k);

}  // namespace rtk
