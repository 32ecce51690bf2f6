// SparseMlp: forward-only MLP over compressed kept weights with a sparse kernel (feature-major
// activations; per output row the kept (column, value) pairs are listed once, then the row's
// outputs are summed in vector registers over them, 16 samples per register), two reused
// activation buffers; and DenseMlpRef, the plain dense forward/backward used
// by the data-free NTK pruning phase and as a test reference.
#include "lowsync/model/sparse_mlp.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/layers/layer.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace lowsync::model {
namespace {

constexpr std::size_t kInputs = 784, kClasses = 10;

// y[b] = bias + sum_t vals[t] * x[cols[t] * n + b] over t ascending, for b < n (x feature-major
// [in, n]). Tiles of 16 samples keep their 16 partial sums in one vector register across the whole
// row instead of loading and storing y once per weight.
void row_dot(const std::uint32_t* cols, const float* vals, std::size_t m, float bias, const float* x, std::size_t n,
             float* y) {
  constexpr std::size_t kTile = 16;
  std::size_t b0 = 0;
  for (; b0 + 2 * kTile <= n; b0 += 2 * kTile) {
    float acc0[kTile], acc1[kTile];
    for (std::size_t b = 0; b < kTile; ++b) acc0[b] = acc1[b] = bias;
    for (std::size_t t = 0; t < m; ++t) {
      const float w = vals[t];
      const float* xi = x + static_cast<std::size_t>(cols[t]) * n + b0;
      for (std::size_t b = 0; b < kTile; ++b) acc0[b] += w * xi[b];
      for (std::size_t b = 0; b < kTile; ++b) acc1[b] += w * xi[kTile + b];
    }
    for (std::size_t b = 0; b < kTile; ++b) y[b0 + b] = acc0[b];
    for (std::size_t b = 0; b < kTile; ++b) y[b0 + kTile + b] = acc1[b];
  }
  for (; b0 + kTile <= n; b0 += kTile) {
    float acc[kTile];
    for (std::size_t b = 0; b < kTile; ++b) acc[b] = bias;
    for (std::size_t t = 0; t < m; ++t) {
      const float w = vals[t];
      const float* xi = x + static_cast<std::size_t>(cols[t]) * n + b0;
      for (std::size_t b = 0; b < kTile; ++b) acc[b] += w * xi[b];
    }
    for (std::size_t b = 0; b < kTile; ++b) y[b0 + b] = acc[b];
  }
  for (std::size_t b = b0; b < n; ++b) {
    float acc = bias;
    for (std::size_t t = 0; t < m; ++t) acc += vals[t] * x[static_cast<std::size_t>(cols[t]) * n + b];
    y[b] = acc;
  }
}

}  // namespace

std::vector<DenseLayerSpec> mlp_layer_specs() {
  const std::size_t widths[] = {kInputs, 512, 256, kClasses};
  std::vector<DenseLayerSpec> specs;
  std::size_t offset = 0;
  for (int l = 0; l < 3; ++l) {
    DenseLayerSpec s;
    s.in = widths[l];
    s.out = widths[l + 1];
    s.weight_offset = offset;
    s.bias_offset = offset + s.in * s.out;
    s.relu = l < 2;
    offset = s.bias_offset + s.out;
    specs.push_back(s);
  }
  return specs;
}

std::vector<ParamInfo> mlp_param_infos() {
  std::vector<ParamInfo> infos;
  int l = 0;
  for (const auto& s : mlp_layer_specs()) {
    ++l;
    infos.push_back({fmt::format("fc{}.weight", l), {static_cast<std::int64_t>(s.out), static_cast<std::int64_t>(s.in)},
                     s.weight_offset, s.in * s.out});
    infos.push_back({fmt::format("fc{}.bias", l), {static_cast<std::int64_t>(s.out)}, s.bias_offset, s.out});
  }
  return infos;
}

std::size_t mlp_num_params() {
  const auto s = mlp_layer_specs().back();
  return s.bias_offset + s.out;
}

float mlp_initial_value(std::uint64_t seed, std::size_t j) {
  // Model::initialize: tensor number t (1-based, weight then bias per layer), bound 1/sqrt(fan_in).
  std::uint64_t t = 0;
  for (const auto& s : mlp_layer_specs()) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(s.in));
    ++t;
    if (j < s.bias_offset)
      return (2.0f * uniform01(stream_key({seed, 0x1417ULL, t}), j - s.weight_offset) - 1.0f) * bound;
    ++t;
    if (j < s.bias_offset + s.out)
      return (2.0f * uniform01(stream_key({seed, 0x1417ULL, t}), j - s.bias_offset) - 1.0f) * bound;
  }
  fail("mlp parameter index {} out of range ({} parameters)", j, mlp_num_params());
}

std::vector<OutputUnit> mlp_output_units() {
  std::vector<OutputUnit> units;
  for (const auto& s : mlp_layer_specs()) append_row_units(units, s.weight_offset, s.out, s.in, &s.bias_offset);
  return units;
}

// ---- dense reference ----

DenseMlpRef::DenseMlpRef(int batch) : batch_(batch), specs_(mlp_layer_specs()) {
  std::size_t widest = kInputs;
  for (const auto& s : specs_) {
    acts_.emplace_back("prune.act", static_cast<std::size_t>(batch) * s.out);
    widest = std::max(widest, s.out);
  }
  d_a_ = memory::TrackedBuffer<float>("prune.diff", static_cast<std::size_t>(batch) * widest);
  d_b_ = memory::TrackedBuffer<float>("prune.diff", static_cast<std::size_t>(batch) * widest);
}

void DenseMlpRef::forward(std::span<const float> w, const float* x, std::span<float> out) {
  const std::size_t n = static_cast<std::size_t>(batch_);
  const float* in = x;
  for (std::size_t l = 0; l < specs_.size(); ++l) {
    const auto& s = specs_[l];
    float* y = acts_[l].data();
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t o = 0; o < s.out; ++o) {
        const float* row = w.data() + s.weight_offset + o * s.in;
        float acc = w[s.bias_offset + o];
        for (std::size_t i = 0; i < s.in; ++i) acc += row[i] * in[b * s.in + i];
        y[b * s.out + o] = s.relu ? std::max(acc, 0.0f) : acc;
      }
    }
    in = y;
  }
  std::copy(acts_.back().data(), acts_.back().data() + n * kClasses, out.begin());
}

void DenseMlpRef::backward(std::span<const float> w, const float* x, std::span<const float> dout,
                           std::span<float> grad) {
  const std::size_t n = static_cast<std::size_t>(batch_);
  float* d = d_a_.data();
  float* d_next = d_b_.data();
  std::copy(dout.begin(), dout.end(), d);
  for (std::size_t l = specs_.size(); l-- > 0;) {
    const auto& s = specs_[l];
    const float* y = acts_[l].data();
    const float* in = l == 0 ? x : acts_[l - 1].data();
    if (s.relu)
      for (std::size_t e = 0; e < n * s.out; ++e) d[e] = y[e] > 0.0f ? d[e] : 0.0f;
    for (std::size_t o = 0; o < s.out; ++o) {
      float* gw = grad.data() + s.weight_offset + o * s.in;
      std::fill(gw, gw + s.in, 0.0f);
      float gb = 0.0f;
      for (std::size_t b = 0; b < n; ++b) {
        const float db = d[b * s.out + o];
        gb += db;
        if (db != 0.0f)
          for (std::size_t i = 0; i < s.in; ++i) gw[i] += db * in[b * s.in + i];
      }
      grad[s.bias_offset + o] = gb;
    }
    if (l == 0) break;
    std::fill(d_next, d_next + n * s.in, 0.0f);
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t o = 0; o < s.out; ++o) {
        const float db = d[b * s.out + o];
        if (db == 0.0f) continue;
        const float* row = w.data() + s.weight_offset + o * s.in;
        for (std::size_t i = 0; i < s.in; ++i) d_next[b * s.in + i] += db * row[i];
      }
    std::swap(d, d_next);
  }
}

// ---- sparse forward ----

SparseMlp::SparseMlp(int batch, std::uint64_t seed, std::shared_ptr<const Mask> mask)
    : batch_(batch), specs_(mlp_layer_specs()) {
  if (batch < 1) fail("train.batch must be >= 1, got {}", batch);
  const std::size_t d = mlp_num_params();
  if (!mask) mask = std::make_shared<const Mask>(d, true);
  if (mask->size() != d) fail("sparse mlp: mask has {} entries, the mlp {} parameters", mask->size(), d);
  params_ = SparseParams(mask);
  float* v = params_.values().data();
  for_each_kept(params_, [=](std::size_t k, std::size_t j) { v[k] = mlp_initial_value(seed, j); });
  std::size_t widest = kInputs;
  for (const auto& s : specs_) {
    weight_k_.push_back(mask->range_nnz(0, s.weight_offset));
    bias_k_.push_back(mask->range_nnz(0, s.bias_offset));
    widest = std::max(widest, s.out);
  }
  std::size_t widest_in = 0;
  for (const auto& s : specs_) widest_in = std::max(widest_in, s.in);
  row_cols_ = memory::TrackedBuffer<std::uint32_t>("zo.row_cols", widest_in);
  row_vals_ = memory::TrackedBuffer<float>("zo.row_vals", widest_in);
  buf_a_ = memory::TrackedBuffer<float>("zo.act_a", widest * static_cast<std::size_t>(batch));
  buf_b_ = memory::TrackedBuffer<float>("zo.act_b", widest * static_cast<std::size_t>(batch));
}

const float* SparseMlp::forward(const float* images, int n_int) {
  LOWSYNC_ASSERT(n_int >= 1 && n_int <= batch_, "sparse mlp forward of {} samples on batch {}", n_int, batch_);
  const auto n = static_cast<std::size_t>(n_int);
  float* x = buf_a_.data();
  float* y = buf_b_.data();
  for (std::size_t b = 0; b < n; ++b)  // [n, 784] -> feature-major [784, n]
    for (std::size_t i = 0; i < kInputs; ++i) x[i * n + b] = images[b * kInputs + i];
  const Mask& mask = params_.mask();
  const std::uint64_t* words = mask.words();
  const float* v = params_.values().data();
  for (std::size_t l = 0; l < specs_.size(); ++l) {
    const auto& s = specs_[l];
    // Per output row: its kept (column, value) pairs in ascending column order, then the row's
    // outputs accumulated in registers over those pairs, tile by tile of the batch. Each output
    // is bias (or 0 when pruned) + w_1 x_1 + w_2 x_2 + ... in ascending column order, one fp32
    // multiply and one add per term, as the plain loop computes it (bitwise the same).
    std::size_t kb = bias_k_[l];
    std::size_t k = weight_k_[l];
    std::uint32_t* cols = row_cols_.data();
    float* vals = row_vals_.data();
    for (std::size_t o = 0; o < s.out; ++o) {
      const float bias = mask.test(s.bias_offset + o) ? v[kb++] : 0.0f;
      const std::size_t first = s.weight_offset + o * s.in, last = first + s.in;
      std::size_t m = 0;
      for (std::size_t wi = first / 64; wi * 64 < last; ++wi) {
        std::uint64_t bits = words[wi];
        if (wi * 64 < first) bits &= ~0ULL << (first - wi * 64);
        if ((wi + 1) * 64 > last) bits &= (last - wi * 64) >= 64 ? ~0ULL : ((1ULL << (last - wi * 64)) - 1);
        for (; bits != 0; bits &= bits - 1) {
          cols[m] = static_cast<std::uint32_t>(wi * 64 + static_cast<std::size_t>(std::countr_zero(bits)) - first);
          vals[m++] = v[k++];
        }
      }
      row_dot(cols, vals, m, bias, x, n, y + o * n);
    }
    if (s.relu)
      for (std::size_t e = 0; e < s.out * n; ++e) y[e] = std::max(y[e], 0.0f);
    std::swap(x, y);
  }
  return x;  // logits [10, n]
}

double SparseMlp::forward_loss(const float* images, const std::int32_t* labels, int n) {
  const float* z = forward(images, n);
  const auto cols = static_cast<std::size_t>(n);
  double total = 0.0;
  for (std::size_t b = 0; b < cols; ++b) {
    float mx = z[b];
    for (std::size_t c = 1; c < kClasses; ++c) mx = std::max(mx, z[c * cols + b]);
    double denom = 0.0;
    for (std::size_t c = 0; c < kClasses; ++c) denom += std::exp(static_cast<double>(z[c * cols + b] - mx));
    total += std::log(denom) - static_cast<double>(z[static_cast<std::size_t>(labels[b]) * cols + b] - mx);
  }
  return total / static_cast<double>(n);
}

EvalResult SparseMlp::evaluate(const float* images, const std::int32_t* labels, std::int64_t n) {
  EvalResult r;
  if (n <= 0) return r;
  double loss_sum = 0.0;
  std::int64_t correct = 0;
  for (std::int64_t first = 0; first < n;) {
    const int chunk = static_cast<int>(std::min<std::int64_t>(n - first, batch_));
    const float* img = images + first * static_cast<std::int64_t>(kInputs);
    loss_sum += forward_loss(img, labels + first, chunk) * chunk;
    // forward_loss left the logits in place: the buffer it returned is still valid.
    const float* z = (specs_.size() % 2 == 1) ? buf_b_.data() : buf_a_.data();
    const auto cols = static_cast<std::size_t>(chunk);
    for (std::size_t b = 0; b < cols; ++b) {
      std::size_t best = 0;
      for (std::size_t c = 1; c < kClasses; ++c)
        if (z[c * cols + b] > z[best * cols + b]) best = c;
      correct += static_cast<std::int32_t>(best) == labels[first + static_cast<std::int64_t>(b)] ? 1 : 0;
    }
    first += chunk;
  }
  r.samples = n;
  r.loss = loss_sum / static_cast<double>(n);
  r.accuracy = static_cast<double>(correct) / static_cast<double>(n);
  return r;
}

double SparseMlp::forward_flops_per_sample() const {
  double f = 0.0;
  for (const auto& s : specs_)
    f += 2.0 * static_cast<double>(params_.mask().range_nnz(s.weight_offset, s.in * s.out)) +
         static_cast<double>(params_.mask().range_nnz(s.bias_offset, s.out));
  return f;
}

}  // namespace lowsync::model
