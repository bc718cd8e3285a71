#include "rtk/topk.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "rtk/error.h"

namespace rtk {

std::vector<float> softmax(const float* logits, int num_classes) {
  std::vector<float> probs(logits, logits + num_classes);
  const float max = *std::max_element(probs.begin(), probs.end());
  double sum = 0.0;
  for (float& p : probs) {
    p = std::exp(p - max);
    sum += p;
  }
  for (float& p : probs) p = static_cast<float>(p / sum);
  return probs;
}

std::vector<Prediction> top_k(const float* logits, const std::vector<std::string>& classes, int k) {
  const int n = static_cast<int>(classes.size());
  if (n == 0) throw Error("top_k: no classes");
  k = std::clamp(k, 1, n);
  std::vector<float> probs = softmax(logits, n);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  });
  std::vector<Prediction> top;
  for (int i = 0; i < k; ++i) top.push_back({order[i], classes[order[i]], probs[order[i]]});
  return top;
}

}  // namespace rtk
