// Naive fp64 references for the transformer layers and the whole gpt (ALGORITHMS.md §8), written
// from the definitions, independent of oneDNN and Kokkos. Rows are row-major [B*T, width];
// parameters in the model's flat order (embedding.token, embedding.position, per block ln1.weight
// .. fc2.bias, layernorm.weight, layernorm.bias, head weight).
#pragma once

#include "support/reference_layers.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace lowsync::testing {

using Vec = std::vector<double>;

inline Vec ref_layernorm(const Vec& x, const Vec& w, const Vec& b, int rows, int width, double eps = 1e-5) {
  Vec y(x.size());
  for (int r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int c = 0; c < width; ++c) mean += x[r * width + c];
    mean /= width;
    for (int c = 0; c < width; ++c) var += (x[r * width + c] - mean) * (x[r * width + c] - mean);
    var /= width;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int c = 0; c < width; ++c) y[r * width + c] = (x[r * width + c] - mean) * inv * w[c] + b[c];
  }
  return y;
}

inline Vec ref_gelu(const Vec& x) {
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = 0.5 * x[i] * (1.0 + std::tanh(k * (x[i] + 0.044715 * x[i] * x[i] * x[i])));
  return y;
}

// qkv [B*T, 3C] -> [B*T, C]: per head softmax(q k^T / sqrt(D)) over positions <= t, times v.
inline Vec ref_attention(const Vec& qkv, int batch, int ctx, int width, int heads) {
  const int d = width / heads, stride = 3 * width;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  Vec out(static_cast<std::size_t>(batch) * ctx * width, 0.0);
  std::vector<double> p(ctx);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int t = 0; t < ctx; ++t) {
        const double* q = &qkv[(static_cast<std::size_t>(b) * ctx + t) * stride + h * d];
        double mx = -std::numeric_limits<double>::infinity();
        for (int j = 0; j <= t; ++j) {
          const double* k = &qkv[(static_cast<std::size_t>(b) * ctx + j) * stride + width + h * d];
          double s = 0.0;
          for (int i = 0; i < d; ++i) s += q[i] * k[i];
          p[j] = s * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
        double* o = &out[(static_cast<std::size_t>(b) * ctx + t) * width + h * d];
        for (int j = 0; j <= t; ++j) {
          const double* v = &qkv[(static_cast<std::size_t>(b) * ctx + j) * stride + 2 * width + h * d];
          for (int i = 0; i < d; ++i) o[i] += p[j] / sum * v[i];
        }
      }
  return out;
}

// tokens [B*T] -> [B*T, C] = token[x] + position[t]
inline Vec ref_embedding(const std::vector<int>& tokens, const Vec& tok, const Vec& pos, int batch, int ctx, int width) {
  Vec y(static_cast<std::size_t>(batch) * ctx * width);
  for (int r = 0; r < batch * ctx; ++r)
    for (int c = 0; c < width; ++c) y[r * width + c] = tok[tokens[r] * width + c] + pos[(r % ctx) * width + c];
  return y;
}

// A slice [offset, offset + count) of a flat parameter vector; advances offset.
inline Vec take(const Vec& flat, std::size_t& offset, std::size_t count) {
  Vec v(flat.begin() + static_cast<std::ptrdiff_t>(offset), flat.begin() + static_cast<std::ptrdiff_t>(offset + count));
  offset += count;
  return v;
}

// One pre-LN block; `offset` indexes its first parameter (ln1.weight) in `flat` and is advanced.
inline Vec ref_block(const Vec& x, const Vec& flat, std::size_t& offset, int batch, int ctx, int width, int heads) {
  const int rows = batch * ctx, c = width;
  const std::size_t cc = static_cast<std::size_t>(c);
  const Vec ln1w = take(flat, offset, cc), ln1b = take(flat, offset, cc);
  const Vec qkvw = take(flat, offset, 3 * cc * cc), qkvb = take(flat, offset, 3 * cc);
  const Vec projw = take(flat, offset, cc * cc), projb = take(flat, offset, cc);
  const Vec ln2w = take(flat, offset, cc), ln2b = take(flat, offset, cc);
  const Vec fc1w = take(flat, offset, 4 * cc * cc), fc1b = take(flat, offset, 4 * cc);
  const Vec fc2w = take(flat, offset, 4 * cc * cc), fc2b = take(flat, offset, cc);
  const Vec qkv = ref_linear(ref_layernorm(x, ln1w, ln1b, rows, c), qkvw, qkvb, rows, c, 3 * c, false);
  Vec x1 = ref_linear(ref_attention(qkv, batch, ctx, c, heads), projw, projb, rows, c, c, false);
  for (std::size_t i = 0; i < x1.size(); ++i) x1[i] += x[i];
  const Vec f1 = ref_linear(ref_layernorm(x1, ln2w, ln2b, rows, c), fc1w, fc1b, rows, c, 4 * c, false);
  Vec y = ref_linear(ref_gelu(f1), fc2w, fc2b, rows, 4 * c, c, false);
  for (std::size_t i = 0; i < y.size(); ++i) y[i] += x1[i];
  return y;
}

// The whole gpt: tokens [B*T] -> logits [B*T, 256].
inline Vec ref_gpt_logits(const std::vector<int>& tokens, const Vec& flat, int batch, int ctx, int width, int layers,
                          int heads) {
  const int vocab = 256, rows = batch * ctx;
  const std::size_t cc = static_cast<std::size_t>(width);
  std::size_t offset = 0;
  const Vec tok = take(flat, offset, vocab * cc), pos = take(flat, offset, static_cast<std::size_t>(ctx) * cc);
  Vec x = ref_embedding(tokens, tok, pos, batch, ctx, width);
  for (int l = 0; l < layers; ++l) x = ref_block(x, flat, offset, batch, ctx, width, heads);
  const Vec lnw = take(flat, offset, cc), lnb = take(flat, offset, cc);
  const Vec head = take(flat, offset, vocab * cc);
  const Vec zero(vocab, 0.0);
  return ref_linear(ref_layernorm(x, lnw, lnb, rows, width), head, zero, rows, width, vocab, false);
}

}  // namespace lowsync::testing
