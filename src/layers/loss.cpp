// Softmax cross-entropy as one Kokkos kernel over the rows of the logits: stable log-sum-exp
// (subtract the row max), loss accumulated in fp64, gradient (softmax - onehot) / N.
#include "lowsync/layers/layer.hpp"

#include <Kokkos_Core.hpp>

#include <cmath>

namespace lowsync::layers {

float softmax_cross_entropy(const float* logits, const std::int32_t* labels, int n, int classes, float* dlogits) {
  double total = 0.0;
  const float inv_n = 1.0f / static_cast<float>(n);
  Kokkos::parallel_reduce(
      "softmax_cross_entropy", Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(0, n),
      [=](const int i, double& sum) {
        const float* row = logits + static_cast<std::ptrdiff_t>(i) * classes;
        float mx = row[0];
        for (int c = 1; c < classes; ++c) mx = std::max(mx, row[c]);
        // With a gradient to write, each exp is computed once and kept in it (exp was half of
        // this kernel, and this kernel 5% of a gpt step).
        float* d = dlogits != nullptr ? dlogits + static_cast<std::ptrdiff_t>(i) * classes : nullptr;
        float denom = 0.0f;
        if (d != nullptr) {
          for (int c = 0; c < classes; ++c) d[c] = std::exp(row[c] - mx);
          for (int c = 0; c < classes; ++c) denom += d[c];
        } else {
          for (int c = 0; c < classes; ++c) denom += std::exp(row[c] - mx);
        }
        const float log_denom = std::log(denom);
        sum += static_cast<double>(log_denom - (row[labels[i]] - mx));
        if (d != nullptr) {
          const float inv = 1.0f / denom, e_label = d[labels[i]];
          for (int c = 0; c < classes; ++c) d[c] = d[c] * inv * inv_n;
          d[labels[i]] = (e_label * inv - 1.0f) * inv_n;
        }
      },
      total);
  return static_cast<float>(total / n);
}

std::int64_t count_correct(const float* logits, const std::int32_t* labels, int n, int classes) {
  std::int64_t correct = 0;
  for (int i = 0; i < n; ++i) {
    const float* row = logits + static_cast<std::ptrdiff_t>(i) * classes;
    int best = 0;
    for (int c = 1; c < classes; ++c)
      if (row[c] > row[best]) best = c;
    correct += best == labels[i] ? 1 : 0;
  }
  return correct;
}

}  // namespace lowsync::layers
