// Naive fp64 reference layers for tests: plain loops written from the definitions, independent of
// oneDNN. Shapes: x [N, C, H, W] or [N, F] row-major; weights as in lowsync (OIHW, [out, in]).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace lowsync::testing {

inline std::vector<double> ref_linear(const std::vector<double>& x, const std::vector<double>& w,
                                      const std::vector<double>& b, int n, int in, int out, bool relu) {
  std::vector<double> y(static_cast<std::size_t>(n) * out);
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < out; ++o) {
      double s = b[o];
      for (int k = 0; k < in; ++k) s += x[i * in + k] * w[o * in + k];
      y[i * out + o] = relu ? std::max(s, 0.0) : s;
    }
  return y;
}

inline std::vector<double> ref_conv2d(const std::vector<double>& x, const std::vector<double>& w,
                                      const std::vector<double>& b, int n, int c, int h, int wd, int oc, int k,
                                      bool relu) {
  const int oh = h - k + 1, ow = wd - k + 1;
  std::vector<double> y(static_cast<std::size_t>(n) * oc * oh * ow);
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < oc; ++o)
      for (int r = 0; r < oh; ++r)
        for (int s = 0; s < ow; ++s) {
          double acc = b[o];
          for (int ci = 0; ci < c; ++ci)
            for (int p = 0; p < k; ++p)
              for (int q = 0; q < k; ++q)
                acc += x[((i * c + ci) * h + r + p) * wd + s + q] * w[((o * c + ci) * k + p) * k + q];
          y[((i * oc + o) * oh + r) * ow + s] = relu ? std::max(acc, 0.0) : acc;
        }
  return y;
}

inline std::vector<double> ref_maxpool(const std::vector<double>& x, int n, int c, int h, int wd, int win) {
  const int oh = h / win, ow = wd / win;
  std::vector<double> y(static_cast<std::size_t>(n) * c * oh * ow);
  for (int i = 0; i < n * c; ++i)
    for (int r = 0; r < oh; ++r)
      for (int s = 0; s < ow; ++s) {
        double m = -INFINITY;
        for (int p = 0; p < win; ++p)
          for (int q = 0; q < win; ++q) m = std::max(m, x[(i * h + r * win + p) * wd + s * win + q]);
        y[(i * oh + r) * ow + s] = m;
      }
  return y;
}

// Mean softmax cross-entropy, computed directly from the definition in fp64.
inline double ref_cross_entropy(const std::vector<double>& logits, const std::vector<std::int32_t>& labels, int n,
                                int classes) {
  double total = 0.0;
  for (int i = 0; i < n; ++i) {
    double denom = 0.0;
    for (int c = 0; c < classes; ++c) denom += std::exp(logits[i * classes + c]);
    total += -std::log(std::exp(logits[i * classes + labels[i]]) / denom);
  }
  return total / n;
}

}  // namespace lowsync::testing
