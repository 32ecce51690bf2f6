// Scalar reference of DeMo (ALGORITHMS.md section 5), written from the spec and not from
// src/sync/demo*.cpp: fp64 throughout, the naive O(N^2) DCT formula per coefficient, top-k by a
// full sort, decode by a per-position (sum, count) table. One call simulates all K ranks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

namespace lowsync::reference {

// Largest divisor of n that is <= target (n itself when n <= target).
inline std::int64_t demo_chunk(std::int64_t n, std::int64_t target) {
  if (n <= target) return n;
  std::int64_t best = 1;
  for (std::int64_t d = 1; d <= target; ++d)
    if (n % d == 0) best = d;
  return best;
}

// Tensor seen as rows x cols, chunks a x b; dense when a dimension > 1 gets chunk 1.
struct DemoView {
  std::int64_t rows = 1, cols = 1, a = 1, b = 1, k = 1;
  bool dense = false;
  std::int64_t numel() const { return rows * cols; }
};

inline DemoView demo_view(const std::vector<std::int64_t>& shape, std::int64_t target,
                          std::int64_t topk) {
  DemoView v;
  if (shape.size() == 1) v.cols = shape[0];
  if (shape.size() >= 2) {
    v.rows = shape[0];
    for (std::size_t i = 1; i < shape.size(); ++i) v.cols *= shape[i];
  }
  v.a = demo_chunk(v.rows, target);
  v.b = demo_chunk(v.cols, target);
  v.dense = (v.rows > 1 && v.a == 1) || (v.cols > 1 && v.b == 1);
  v.k = std::max<std::int64_t>(1, std::min(topk, v.a * v.b));
  return v;
}

// X_k = s_k sum_n x_n cos(pi (2n+1) k / (2N)): the weight of x_n in X_k.
inline double dct_weight(std::int64_t size, std::int64_t k, std::int64_t n) {
  const double scale = k == 0 ? std::sqrt(1.0 / static_cast<double>(size))
                              : std::sqrt(2.0 / static_cast<double>(size));
  return scale * std::cos(std::numbers::pi * static_cast<double>((2 * n + 1) * k) /
                          (2.0 * static_cast<double>(size)));
}

// Flat index of coefficient (u, w) of chunk (br, bc) in layout (rows/a, cols/b, a, b).
inline std::int64_t coeff_index(const DemoView& v, std::int64_t br, std::int64_t bc, std::int64_t u,
                                std::int64_t w) {
  return ((br * (v.cols / v.b) + bc) * v.a + u) * v.b + w;
}

// x [rows, cols] -> chunk-layout coefficients, by the naive double sum per coefficient.
inline std::vector<double> demo_dct(const DemoView& v, const std::vector<double>& x) {
  std::vector<double> out(static_cast<std::size_t>(v.numel()), 0.0);
  for (std::int64_t br = 0; br < v.rows / v.a; ++br)
    for (std::int64_t bc = 0; bc < v.cols / v.b; ++bc)
      for (std::int64_t u = 0; u < v.a; ++u)
        for (std::int64_t w = 0; w < v.b; ++w) {
          double s = 0.0;
          for (std::int64_t i = 0; i < v.a; ++i)
            for (std::int64_t j = 0; j < v.b; ++j)
              s += x[static_cast<std::size_t>((br * v.a + i) * v.cols + bc * v.b + j)] *
                   dct_weight(v.a, u, i) * dct_weight(v.b, w, j);
          out[static_cast<std::size_t>(coeff_index(v, br, bc, u, w))] = s;
        }
  return out;
}

// Inverse: the transpose of the orthonormal forward transform.
inline std::vector<double> demo_idct(const DemoView& v, const std::vector<double>& coeffs) {
  std::vector<double> x(static_cast<std::size_t>(v.numel()), 0.0);
  for (std::int64_t br = 0; br < v.rows / v.a; ++br)
    for (std::int64_t bc = 0; bc < v.cols / v.b; ++bc)
      for (std::int64_t i = 0; i < v.a; ++i)
        for (std::int64_t j = 0; j < v.b; ++j) {
          double s = 0.0;
          for (std::int64_t u = 0; u < v.a; ++u)
            for (std::int64_t w = 0; w < v.b; ++w)
              s += coeffs[static_cast<std::size_t>(coeff_index(v, br, bc, u, w))] *
                   dct_weight(v.a, u, i) * dct_weight(v.b, w, j);
          x[static_cast<std::size_t>((br * v.a + i) * v.cols + bc * v.b + j)] = s;
        }
  return x;
}

// The same two transforms, separably (rows then columns of each chunk) with the weights of
// dct_weight tabulated once per call: O(a*b*(a+b)) per chunk instead of O((a*b)^2), so the
// reference can step a whole model. Same formula, fp64, still independent of src/.
inline std::vector<double> dct_table(std::int64_t size) {  // [k, n] = dct_weight(size, k, n)
  std::vector<double> w(static_cast<std::size_t>(size * size));
  for (std::int64_t k = 0; k < size; ++k)
    for (std::int64_t n = 0; n < size; ++n) w[static_cast<std::size_t>(k * size + n)] = dct_weight(size, k, n);
  return w;
}

inline std::vector<double> demo_dct_separable(const DemoView& v, const std::vector<double>& x) {
  const std::vector<double> wa = dct_table(v.a), wb = dct_table(v.b);
  std::vector<double> out(static_cast<std::size_t>(v.numel()), 0.0), t(static_cast<std::size_t>(v.a * v.b));
  for (std::int64_t br = 0; br < v.rows / v.a; ++br)
    for (std::int64_t bc = 0; bc < v.cols / v.b; ++bc) {
      for (std::int64_t i = 0; i < v.a; ++i)  // t[i, w] = sum_j x[i, j] W_b[w, j]
        for (std::int64_t w = 0; w < v.b; ++w) {
          double s = 0.0;
          for (std::int64_t j = 0; j < v.b; ++j)
            s += x[static_cast<std::size_t>((br * v.a + i) * v.cols + bc * v.b + j)] * wb[w * v.b + j];
          t[static_cast<std::size_t>(i * v.b + w)] = s;
        }
      for (std::int64_t u = 0; u < v.a; ++u)  // out[u, w] = sum_i W_a[u, i] t[i, w]
        for (std::int64_t w = 0; w < v.b; ++w) {
          double s = 0.0;
          for (std::int64_t i = 0; i < v.a; ++i) s += wa[u * v.a + i] * t[static_cast<std::size_t>(i * v.b + w)];
          out[static_cast<std::size_t>(coeff_index(v, br, bc, u, w))] = s;
        }
    }
  return out;
}

inline std::vector<double> demo_idct_separable(const DemoView& v, const std::vector<double>& coeffs) {
  const std::vector<double> wa = dct_table(v.a), wb = dct_table(v.b);
  std::vector<double> x(static_cast<std::size_t>(v.numel()), 0.0), t(static_cast<std::size_t>(v.a * v.b));
  for (std::int64_t br = 0; br < v.rows / v.a; ++br)
    for (std::int64_t bc = 0; bc < v.cols / v.b; ++bc) {
      for (std::int64_t u = 0; u < v.a; ++u)  // t[u, j] = sum_w C[u, w] W_b[w, j]
        for (std::int64_t j = 0; j < v.b; ++j) {
          double s = 0.0;
          for (std::int64_t w = 0; w < v.b; ++w)
            s += coeffs[static_cast<std::size_t>(coeff_index(v, br, bc, u, w))] * wb[w * v.b + j];
          t[static_cast<std::size_t>(u * v.b + j)] = s;
        }
      for (std::int64_t i = 0; i < v.a; ++i)  // x[i, j] = sum_u W_a[u, i] t[u, j]
        for (std::int64_t j = 0; j < v.b; ++j) {
          double s = 0.0;
          for (std::int64_t u = 0; u < v.a; ++u) s += wa[u * v.a + i] * t[static_cast<std::size_t>(u * v.b + j)];
          x[static_cast<std::size_t>((br * v.a + i) * v.cols + bc * v.b + j)] = s;
        }
    }
  return x;
}

// Positions of the k largest |chunk[p]|, ties to the lower position, returned ascending.
template <class T>
std::vector<std::int64_t> topk_positions(const T* chunk, std::int64_t n, std::int64_t k) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  for (std::int64_t p = 0; p < n; ++p) order[static_cast<std::size_t>(p)] = p;
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t l, std::int64_t r) {
    return std::fabs(static_cast<double>(chunk[l])) > std::fabs(static_cast<double>(chunk[r]));
  });
  order.resize(static_cast<std::size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

// Average over contributors: per rank, per chunk, (positions, values); returns chunk-layout
// coefficients where each position is the mean of the values that selected it (0 if none).
inline std::vector<double> average_contributors(
    const DemoView& v, const std::vector<std::vector<std::int64_t>>& positions,  // [K][chunks*k]
    const std::vector<std::vector<double>>& values) {
  const std::int64_t chunk = v.a * v.b;
  std::vector<double> sum(static_cast<std::size_t>(v.numel()), 0.0);
  std::vector<int> count(static_cast<std::size_t>(v.numel()), 0);
  for (std::size_t r = 0; r < positions.size(); ++r)
    for (std::size_t s = 0; s < positions[r].size(); ++s) {
      const std::int64_t c = static_cast<std::int64_t>(s) / v.k;
      const auto flat = static_cast<std::size_t>(c * chunk + positions[r][s]);
      sum[flat] += values[r][s];
      count[flat] += 1;
    }
  for (std::size_t i = 0; i < sum.size(); ++i) sum[i] = count[i] > 0 ? sum[i] / count[i] : 0.0;
  return sum;
}

struct DemoTensor {
  std::vector<std::int64_t> shape;
  std::size_t offset = 0;
};

// One DeMo step for K simulated ranks (fp32 wire: values are exact). params: the shared
// replica, updated in place; deltas[r] and grads[r]: rank r's flat buffers. separable picks the
// tabulated separable transforms (whole models); q_out, when given, receives Q (flat).
inline void demo_step(const std::vector<DemoTensor>& tensors, std::vector<double>& params,
                      std::vector<std::vector<double>>& deltas,
                      const std::vector<std::vector<double>>& grads, double lr, double weight_decay,
                      double beta, std::int64_t target, std::int64_t topk, bool separable = false,
                      std::vector<double>* q_out = nullptr) {
  const std::size_t world = deltas.size();
  auto dct = [&](const DemoView& v, const std::vector<double>& x) {
    return separable ? demo_dct_separable(v, x) : demo_dct(v, x);
  };
  auto idct = [&](const DemoView& v, const std::vector<double>& c) {
    return separable ? demo_idct_separable(v, c) : demo_idct(v, c);
  };
  if (q_out) q_out->assign(params.size(), 0.0);
  for (const DemoTensor& t : tensors) {
    const DemoView v = demo_view(t.shape, target, topk);
    const auto n = static_cast<std::size_t>(v.numel());
    std::vector<std::vector<double>> local(world, std::vector<double>(n));
    for (std::size_t i = 0; i < n; ++i) params[t.offset + i] *= 1.0 - lr * weight_decay;  // 1
    for (std::size_t r = 0; r < world; ++r)
      for (std::size_t i = 0; i < n; ++i) {
        double& d = deltas[r][t.offset + i];
        d = beta * d + lr * grads[r][t.offset + i];  // 2, 3
        local[r][i] = d;
      }
    std::vector<double> q(n, 0.0);
    if (v.dense) {  // all of delta is sent and leaves delta; Q = plain mean
      for (std::size_t r = 0; r < world; ++r)
        for (std::size_t i = 0; i < n; ++i) {
          q[i] += local[r][i] / static_cast<double>(world);
          deltas[r][t.offset + i] = 0.0;
        }
    } else {
      const std::int64_t chunk = v.a * v.b;
      std::vector<std::vector<std::int64_t>> positions(world);
      std::vector<std::vector<double>> values(world);
      for (std::size_t r = 0; r < world; ++r) {
        const std::vector<double> coeffs = dct(v, local[r]);  // 4
        std::vector<double> sparse(n, 0.0);
        for (std::int64_t c = 0; c < v.numel() / chunk; ++c) {
          const double* base = coeffs.data() + c * chunk;
          for (const std::int64_t p : topk_positions(base, chunk, v.k)) {
            positions[r].push_back(p);
            values[r].push_back(base[p]);
            sparse[static_cast<std::size_t>(c * chunk + p)] = base[p];
          }
        }
        const std::vector<double> sent = idct(v, sparse);  // 5
        for (std::size_t i = 0; i < n; ++i) deltas[r][t.offset + i] -= sent[i];
      }
      q = idct(v, average_contributors(v, positions, values));  // 6, 7
    }
    if (q_out) std::copy(q.begin(), q.end(), q_out->begin() + static_cast<std::ptrdiff_t>(t.offset));
    for (std::size_t i = 0; i < n; ++i)
      params[t.offset + i] -= lr * static_cast<double>((q[i] > 0.0) - (q[i] < 0.0));  // 8
  }
}

}  // namespace lowsync::reference
