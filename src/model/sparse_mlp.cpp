// SparseMlp: forward-only MLP over compressed kept weights with a sparse kernel (feature-major
// activations; per output row the kept (column, value) pairs are listed once, then the row's
// outputs are summed in vector registers over them, 16 samples per register), two reused
// activation buffers, and several zeroth-order directions per pass (each row's perturbed copies
// formed on the fly from counter-based normals, the input shared in the first layer); and
// DenseMlpRef, the plain dense forward/backward used
// by the data-free NTK pruning phase and as a test reference.
#include "lowsync/model/sparse_mlp.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/core/rng_block.hpp"
#include "lowsync/layers/layer.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

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

// 16 fp32 lanes (one AVX-512 register; two AVX2 ones). GCC vector arithmetic is lane-wise IEEE
// fp32, and with -ffp-contract=off a multiply and an add stay two roundings, as in the scalar loop.
using Lanes16 = float __attribute__((vector_size(64)));

// row_dot for G weight rows (directions) over one shared input: y[g * ys + b] = bias[g * bs] +
// sum_t w[g * ws + t] * x[cols[t] * n + b]. Each input tile is loaded once for the G directions;
// every output is the same sequence of fp32 operations as row_dot's (bitwise equal). Written with
// explicit vectors: left to itself GCC vectorised this nest across t with shuffles, 3x slower.
template <std::size_t G>
void row_dot_group(const std::uint32_t* cols, const float* w, std::size_t ws, std::size_t m, const float* bias,
                   std::size_t bs, const float* x, std::size_t n, float* y, std::size_t ys) {
  constexpr std::size_t kTile = 16;
  std::size_t b0 = 0;
  for (; b0 + kTile <= n; b0 += kTile) {
    Lanes16 acc[G];
    for (std::size_t g = 0; g < G; ++g)
      for (std::size_t b = 0; b < kTile; ++b) acc[g][b] = bias[g * bs];
    for (std::size_t t = 0; t < m; ++t) {
      Lanes16 xi;
      std::memcpy(&xi, x + static_cast<std::size_t>(cols[t]) * n + b0, sizeof xi);
      for (std::size_t g = 0; g < G; ++g) acc[g] += w[g * ws + t] * xi;
    }
    for (std::size_t g = 0; g < G; ++g) std::memcpy(y + g * ys + b0, &acc[g], sizeof acc[g]);
  }
  for (std::size_t b = b0; b < n; ++b)
    for (std::size_t g = 0; g < G; ++g) {
      float acc = bias[g * bs];
      for (std::size_t t = 0; t < m; ++t) acc += w[g * ws + t] * x[static_cast<std::size_t>(cols[t]) * n + b];
      y[g * ys + b] = acc;
    }
}

// row_dot_group over any number of directions, in groups of at most 4 (4 x 16 partial sums stay
// in registers).
void row_dot_shared(const std::uint32_t* cols, const float* w, std::size_t ws, std::size_t m, const float* bias,
                    std::size_t bs, std::size_t dirs, const float* x, std::size_t n, float* y, std::size_t ys) {
  if (dirs == 1) return row_dot(cols, w, m, bias[0], x, n, y);
  std::size_t g0 = 0;
  for (; g0 + 4 <= dirs; g0 += 4) row_dot_group<4>(cols, w + g0 * ws, ws, m, bias + g0 * bs, bs, x, n, y + g0 * ys, ys);
  switch (dirs - g0) {
    case 3: row_dot_group<3>(cols, w + g0 * ws, ws, m, bias + g0 * bs, bs, x, n, y + g0 * ys, ys); break;
    case 2: row_dot_group<2>(cols, w + g0 * ws, ws, m, bias + g0 * bs, bs, x, n, y + g0 * ys, ys); break;
    case 1: row_dot(cols, w + g0 * ws, m, bias[g0 * bs], x, n, y + g0 * ys); break;
    default: break;
  }
}

// Mean softmax cross-entropy of logits z, feature-major [10, n], accumulated in double.
double logits_loss(const float* z, const std::int32_t* labels, std::size_t n) {
  double total = 0.0;
  for (std::size_t b = 0; b < n; ++b) {
    float mx = z[b];
    for (std::size_t c = 1; c < kClasses; ++c) mx = std::max(mx, z[c * n + b]);
    double denom = 0.0;
    for (std::size_t c = 0; c < kClasses; ++c) denom += std::exp(static_cast<double>(z[c * n + b] - mx));
    total += std::log(denom) - static_cast<double>(z[static_cast<std::size_t>(labels[b]) * n + b] - mx);
  }
  return total / static_cast<double>(n);
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

SparseMlp::SparseMlp(int batch, std::uint64_t seed, std::shared_ptr<const Mask> mask, int directions_per_pass)
    : batch_(batch), directions_(directions_per_pass), specs_(mlp_layer_specs()) {
  if (batch < 1) fail("train.batch must be >= 1, got {}", batch);
  if (directions_per_pass < 1) fail("sparse mlp: directions per pass must be >= 1, got {}", directions_per_pass);
  const std::size_t d = mlp_num_params();
  if (!mask) mask = std::make_shared<const Mask>(d, true);
  if (mask->size() != d) fail("sparse mlp: mask has {} entries, the mlp {} parameters", mask->size(), d);
  params_ = SparseParams(mask);
  float* v = params_.values().data();
  for_each_kept(params_, [=](std::size_t k, std::size_t j) { v[k] = mlp_initial_value(seed, j); });
  std::size_t widest_in = 0, widest_out = 0, act_width[2] = {0, 0};
  for (std::size_t l = 0; l < specs_.size(); ++l) {
    const auto& s = specs_[l];
    weight_k_.push_back(mask->range_nnz(0, s.weight_offset));
    bias_k_.push_back(mask->range_nnz(0, s.bias_offset));
    widest_in = std::max(widest_in, s.in);
    widest_out = std::max(widest_out, s.out);
    act_width[l % 2] = std::max(act_width[l % 2], s.out);
  }
  const auto n = static_cast<std::size_t>(batch), dirs = static_cast<std::size_t>(directions_per_pass);
  const std::size_t widest = std::max(widest_in, widest_out);
  input_ = memory::TrackedBuffer<float>("zo.input", kInputs * n);
  act_[0] = memory::TrackedBuffer<float>("zo.act_a", dirs * act_width[0] * n);
  act_[1] = memory::TrackedBuffer<float>("zo.act_b", dirs * act_width[1] * n);
  row_cols_ = memory::TrackedBuffer<std::uint32_t>("zo.row_cols", widest_in);
  row_index_ = memory::TrackedBuffer<std::uint64_t>("zo.row_index", widest);
  row_vals_ = memory::TrackedBuffer<float>("zo.row_vals", widest_in);
  row_w_ = memory::TrackedBuffer<float>("zo.row_w", dirs * widest_in);
  bias_w_ = memory::TrackedBuffer<float>("zo.bias_w", dirs * widest_out);
  normals_ = memory::TrackedBuffer<float>("zo.normals", widest);
}

std::size_t SparseMlp::activation_bytes() const {
  return input_.bytes() + act_[0].bytes() + act_[1].bytes() + row_cols_.bytes() + row_index_.bytes() +
         row_vals_.bytes() + row_w_.bytes() + bias_w_.bytes() + normals_.bytes();
}

const float* SparseMlp::forward(const float* images, int n_int, const Perturbations* p) {
  LOWSYNC_ASSERT(n_int >= 1 && n_int <= batch_, "sparse mlp forward of {} samples on batch {}", n_int, batch_);
  const std::size_t dirs = p != nullptr ? p->keys.size() : 1;
  LOWSYNC_ASSERT(dirs >= 1 && dirs <= static_cast<std::size_t>(directions_), "sparse mlp forward of {} directions, room for {}",
                 dirs, directions_);
  const auto n = static_cast<std::size_t>(n_int);
  float* x = input_.data();
  for (std::size_t b = 0; b < n; ++b)  // [n, 784] -> feature-major [784, n]
    for (std::size_t i = 0; i < kInputs; ++i) x[i * n + b] = images[b * kInputs + i];
  const Mask& mask = params_.mask();
  const std::uint64_t* words = mask.words();
  const float* v = params_.values().data();
  std::uint32_t* cols = row_cols_.data();
  std::uint64_t* index = row_index_.data();
  float* vals = row_vals_.data();
  float* u = normals_.data();
  // Direction i's copy of a kept value whose normal is `normal` (the formula of optim::zo_perturb).
  const auto perturbed = [p](float value, float normal) { return perturbed_value(value, p->mu, p->coef, normal); };
  const float* in = x;
  std::size_t in_stride = 0;  // between the directions' inputs; 0 while they share the batch
  for (std::size_t l = 0; l < specs_.size(); ++l) {
    const auto& s = specs_[l];
    float* out = act_[l % 2].data();
    const std::size_t out_stride = s.out * n;
    // This layer's biases for every direction, [dirs][out] (0 where pruned).
    float* bias = bias_w_.data();
    std::size_t num_bias = 0;
    for (std::size_t o = 0; o < s.out; ++o)
      if (mask.test(s.bias_offset + o)) index[num_bias++] = s.bias_offset + o;
    for (std::size_t i = 0; i < dirs; ++i) {
      if (p != nullptr) normal01_gather(p->keys[i], index, num_bias, u);
      std::size_t kb = bias_k_[l], t = 0;
      for (std::size_t o = 0; o < s.out; ++o) {
        float value = 0.0f;
        if (mask.test(s.bias_offset + o)) {
          value = v[kb++];
          if (p != nullptr) value = perturbed(value, u[t]);
          ++t;
        }
        bias[i * s.out + o] = value;
      }
    }
    // Per output row: its kept (column, value) pairs in ascending column order, each direction's
    // copy of the values, then the row's outputs accumulated in registers over those pairs, tile
    // by tile of the batch. Each output is bias (or 0 when pruned) + w_1 x_1 + w_2 x_2 + ... in
    // ascending column order, one fp32 multiply and one add per term, as the plain loop computes
    // it (bitwise the same).
    std::size_t k = weight_k_[l];
    for (std::size_t o = 0; o < s.out; ++o) {
      const std::size_t first = s.weight_offset + o * s.in, last = first + s.in;
      std::size_t m = 0;
      for (std::size_t wi = first / 64; wi * 64 < last; ++wi) {
        std::uint64_t bits = words[wi];
        if (wi * 64 < first) bits &= ~0ULL << (first - wi * 64);
        if ((wi + 1) * 64 > last) bits &= (last - wi * 64) >= 64 ? ~0ULL : ((1ULL << (last - wi * 64)) - 1);
        for (; bits != 0; bits &= bits - 1) {
          const std::size_t j = wi * 64 + static_cast<std::size_t>(std::countr_zero(bits));
          cols[m] = static_cast<std::uint32_t>(j - first);
          index[m] = j;
          vals[m++] = v[k++];
        }
      }
      const float* w = vals;
      std::size_t w_stride = 0;
      if (p != nullptr) {
        float* rw = row_w_.data();
        for (std::size_t i = 0; i < dirs; ++i) {
          normal01_gather(p->keys[i], index, m, u);
          for (std::size_t t = 0; t < m; ++t) rw[i * m + t] = perturbed(vals[t], u[t]);
        }
        w = rw;
        w_stride = m;
      }
      if (in_stride == 0) {
        row_dot_shared(cols, w, w_stride, m, bias + o, s.out, dirs, in, n, out + o * n, out_stride);
      } else {
        for (std::size_t i = 0; i < dirs; ++i)
          row_dot(cols, w + i * w_stride, m, bias[i * s.out + o], in + i * in_stride, n, out + i * out_stride + o * n);
      }
    }
    if (s.relu)
      for (std::size_t e = 0; e < dirs * out_stride; ++e) out[e] = std::max(out[e], 0.0f);
    in = out;
    in_stride = out_stride;
  }
  return in;  // logits [dirs][10, n]
}

double SparseMlp::forward_loss(const float* images, const std::int32_t* labels, int n) {
  return logits_loss(forward(images, n, nullptr), labels, static_cast<std::size_t>(n));
}

void SparseMlp::perturbed_losses(const float* images, const std::int32_t* labels, int n, const Perturbations& p,
                                 std::span<double> losses) {
  if (p.keys.empty() || p.keys.size() > static_cast<std::size_t>(directions_) || losses.size() != p.keys.size())
    fail("sparse mlp: {} directions with {} losses in one pass (room for {})", p.keys.size(), losses.size(),
         directions_);
  const float* z = forward(images, n, &p);
  const auto cols = static_cast<std::size_t>(n);
  for (std::size_t i = 0; i < losses.size(); ++i) losses[i] = logits_loss(z + i * kClasses * cols, labels, cols);
}

EvalResult SparseMlp::evaluate(const float* images, const std::int32_t* labels, std::int64_t n) {
  EvalResult r;
  if (n <= 0) return r;
  double loss_sum = 0.0;
  std::int64_t correct = 0;
  for (std::int64_t first = 0; first < n;) {
    const int chunk = static_cast<int>(std::min<std::int64_t>(n - first, batch_));
    const float* img = images + first * static_cast<std::int64_t>(kInputs);
    const float* z = forward(img, chunk, nullptr);
    const auto cols = static_cast<std::size_t>(chunk);
    loss_sum += logits_loss(z, labels + first, cols) * chunk;
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
