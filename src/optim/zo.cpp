// Zeroth-order gradient estimator (ALGORITHMS.md §2): Gaussian perturbations regenerated from
// (seed, step, direction), applied in place or handed to the model in blocks (which forms the
// perturbed weights itself), forward/central loss differences with NaN directions dropped, and
// the rebuild g = (1/q) sum_i dL_i / (mu or 2 mu) * u_i * m.
#include "lowsync/optim/zo.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/core/rng_block.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

namespace lowsync::optim {
namespace {

using HostRange = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;
constexpr std::size_t kBlockBits = SparseParams::kBlockBits;  // 512 coordinates per work item

// Flat indices of the kept coordinates of 512-bit block b of a bitmap (all of them when words is
// null), ascending; returns how many.
inline std::size_t block_indices(const std::uint64_t* words, std::size_t d, std::size_t b, std::uint64_t* index) {
  const std::size_t lo = b * kBlockBits, hi = std::min(d, lo + kBlockBits);
  std::size_t n = 0;
  if (words == nullptr) {
    for (std::size_t j = lo; j < hi; ++j) index[n++] = j;
    return n;
  }
  for (std::size_t w = lo / 64; w * 64 < hi; ++w)
    for (std::uint64_t bits = words[w]; bits != 0; bits &= bits - 1)
      index[n++] = w * 64 + static_cast<std::size_t>(std::countr_zero(bits));
  return n;
}

// Calls fn(k_first, index, count) per 512-bit block of the kept coordinates: index[t] is the flat
// index of kept entry k_first + t (value position in compressed storage, or the flat index itself
// when `offsets` is null). A Kokkos kernel over blocks; each block's normals come in one
// normal01_gather (core/rng_block.hpp, bitwise normal01).
template <class Fn>
void for_each_kept_block(const std::uint64_t* words, const std::uint32_t* offsets, std::size_t d, Fn fn) {
  const std::size_t blocks = (d + kBlockBits - 1) / kBlockBits;
  Kokkos::parallel_for("lowsync::optim::zo_blocks", HostRange(0, blocks), [=](const std::int64_t b_signed) {
    const auto b = static_cast<std::size_t>(b_signed);
    std::uint64_t index[kBlockBits];
    const std::size_t n = block_indices(words, d, b, index);
    if (n == 0) return;
    fn(offsets != nullptr ? static_cast<std::size_t>(offsets[b]) : b * kBlockBits, index, n);
  });
}

// w[k_first + t] += coef * (mu * u[index[t]]) on one block: mu * u rounded to fp32 first, coef
// (+-1, +-2) exact, as the scalar formula.
inline void perturb_block(float* w, std::uint64_t key, float mu, float coef, const std::uint64_t* index,
                          std::size_t n, bool dense_positions, std::size_t k_first) {
  float u[kBlockBits];
  normal01_gather(key, index, n, u);
  for (std::size_t t = 0; t < n; ++t) {
    float& v = w[dense_positions ? index[t] : k_first + t];
    v = model::perturbed_value(v, mu, coef, u[t]);
  }
}

// g[t] = sum_i c_i u_i[index[t]] in double, directions in ascending order (the scalar order, so
// the result is bitwise that of the per-coordinate loop).
inline void estimate_block(const double* c, const std::uint64_t* keys, std::size_t num_dirs,
                           const std::uint64_t* index, std::size_t n, float* g) {
  double sum[kBlockBits];
  float u[kBlockBits];
  for (std::size_t t = 0; t < n; ++t) sum[t] = 0.0;
  for (std::size_t i = 0; i < num_dirs; ++i) {
    normal01_gather(keys[i], index, n, u);
    const double ci = c[i];
    for (std::size_t t = 0; t < n; ++t) sum[t] += ci * static_cast<double>(u[t]);
  }
  for (std::size_t t = 0; t < n; ++t) g[t] = static_cast<float>(sum[t]);
}

}  // namespace

std::uint64_t zo_direction_key(std::uint64_t seed, std::uint64_t step, int direction) {
  return stream_key({seed, step, static_cast<std::uint64_t>(direction)});
}

void zo_perturb(std::span<float> params, const Mask* mask, std::uint64_t key, float mu,
                float coef) {
  if (mask != nullptr && mask->size() != params.size())
    fail("zo perturb: mask has {} entries, params {}", mask->size(), params.size());
  float* w = params.data();
  for_each_kept_block(mask != nullptr ? mask->words() : nullptr, nullptr, params.size(),
                      [=](std::size_t, const std::uint64_t* index, std::size_t n) {
                        perturb_block(w, key, mu, coef, index, n, true, 0);
                      });
}

void zo_perturb(SparseParams& params, std::uint64_t key, float mu, float coef) {
  float* values = params.values().data();
  for_each_kept_block(params.mask().words(), params.block_offsets().data(), params.num_params(),
                      [=](std::size_t k_first, const std::uint64_t* index, std::size_t n) {
                        perturb_block(values, key, mu, coef, index, n, false, k_first);
                      });
}

ZoEstimator::ZoEstimator(const ZoSettings& settings) : settings_(settings) {
  if (settings_.num_directions < 1)
    fail("zo: num_directions {} must be >= 1", settings_.num_directions);
  if (settings_.directions_per_pass < 1)
    fail("zo: directions_per_pass {} must be >= 1", settings_.directions_per_pass);
  if (!(settings_.mu > 0.0f) || !std::isfinite(settings_.mu))
    fail("zo: mu {} must be positive and finite", settings_.mu);
}

template <class Perturb>
ZoProbe ZoEstimator::run_probe(std::uint64_t step, const LossFn& loss, Perturb perturb) const {
  const int q = settings_.num_directions;
  const bool central = settings_.difference == ZoDifference::kCentral;
  ZoProbe probe;
  probe.loss_diffs.assign(static_cast<std::size_t>(q), std::numeric_limits<float>::quiet_NaN());

  const double base = central ? 0.0 : loss();
  double loss_sum = 0.0;
  for (int i = 0; i < q; ++i) {
    const std::uint64_t key = zo_direction_key(settings_.seed, step, i);
    // Net perturbation applied so far, undone on an exception from `loss` so the caller's
    // parameters are never left perturbed.
    float applied = 0.0f;
    double plus = 0.0, minus = 0.0;
    try {
      perturb(key, 1.0f);
      applied = 1.0f;
      plus = loss();
      if (central) {
        perturb(key, -2.0f);
        applied = -1.0f;
        minus = loss();
      }
      perturb(key, -applied);
      applied = 0.0f;
    } catch (...) {
      if (applied != 0.0f) perturb(key, -applied);
      throw;
    }
    const double diff = central ? plus - minus : plus - base;
    if (!std::isfinite(diff)) {
      ++probe.num_dropped;
      continue;
    }
    probe.loss_diffs[static_cast<std::size_t>(i)] = static_cast<float>(diff);
    loss_sum += central ? 0.5 * (plus + minus) : 0.0;
  }
  if (probe.num_dropped == q)
    fail("zo: all {} directions of step {} gave a non-finite loss (base loss {})", q, step, base);
  probe.loss = central ? loss_sum / (q - probe.num_dropped) : base;
  return probe;
}

ZoProbe ZoEstimator::probe(std::span<float> params, const Mask* mask, std::uint64_t step,
                           const LossFn& loss) const {
  if (mask != nullptr && mask->size() != params.size())
    fail("zo probe: mask has {} entries, params {}", mask->size(), params.size());
  const float mu = settings_.mu;
  return run_probe(step, loss,
                   [&](std::uint64_t key, float coef) { zo_perturb(params, mask, key, mu, coef); });
}

ZoProbe ZoEstimator::probe(SparseParams& params, std::uint64_t step, const LossFn& loss) const {
  const float mu = settings_.mu;
  return run_probe(step, loss,
                   [&](std::uint64_t key, float coef) { zo_perturb(params, key, mu, coef); });
}

ZoProbe ZoEstimator::probe(std::uint64_t step, const LossFn& loss, const PerturbedLossFn& perturbed) const {
  const int q = settings_.num_directions;
  const bool central = settings_.difference == ZoDifference::kCentral;
  const auto per_pass = static_cast<std::size_t>(std::min(settings_.directions_per_pass, q));
  ZoProbe probe;
  probe.loss_diffs.assign(static_cast<std::size_t>(q), std::numeric_limits<float>::quiet_NaN());
  const double base = central ? 0.0 : loss();
  std::vector<std::uint64_t> keys(per_pass);
  std::vector<double> plus(per_pass), minus(per_pass);
  double loss_sum = 0.0;
  for (int first = 0; first < q; first += static_cast<int>(per_pass)) {
    const std::size_t count = std::min(per_pass, static_cast<std::size_t>(q - first));
    for (std::size_t i = 0; i < count; ++i) keys[i] = zo_direction_key(settings_.seed, step, first + static_cast<int>(i));
    const std::span<const std::uint64_t> block(keys.data(), count);
    perturbed({block, settings_.mu, 1.0f}, std::span<double>(plus.data(), count));
    if (central) perturbed({block, settings_.mu, -1.0f}, std::span<double>(minus.data(), count));
    for (std::size_t i = 0; i < count; ++i) {
      const double diff = central ? plus[i] - minus[i] : plus[i] - base;
      if (!std::isfinite(diff)) {
        ++probe.num_dropped;
        continue;
      }
      probe.loss_diffs[static_cast<std::size_t>(first) + i] = static_cast<float>(diff);
      loss_sum += central ? 0.5 * (plus[i] + minus[i]) : 0.0;
    }
  }
  if (probe.num_dropped == q)
    fail("zo: all {} directions of step {} gave a non-finite loss (base loss {})", q, step, base);
  probe.loss = central ? loss_sum / (q - probe.num_dropped) : base;
  return probe;
}

int ZoEstimator::coefficients(std::span<const float> loss_diffs, std::uint64_t step,
                              std::vector<double>& coef, std::vector<std::uint64_t>& keys) const {
  const int q = settings_.num_directions;
  if (loss_diffs.size() != static_cast<std::size_t>(q))
    fail("zo apply: got {} loss differences, expected q = {}", loss_diffs.size(), q);
  int kept = 0;
  for (const float dl : loss_diffs) kept += std::isfinite(dl) ? 1 : 0;
  if (kept == 0) fail("zo apply: all {} loss differences of step {} are dropped", q, step);
  const double denominator =
      (settings_.difference == ZoDifference::kCentral ? 2.0 : 1.0) * settings_.mu * kept;
  coef.clear();
  keys.clear();
  for (int i = 0; i < q; ++i) {
    if (!std::isfinite(loss_diffs[static_cast<std::size_t>(i)])) continue;
    coef.push_back(loss_diffs[static_cast<std::size_t>(i)] / denominator);
    keys.push_back(zo_direction_key(settings_.seed, step, i));
  }
  return kept;
}

int ZoEstimator::apply_estimate(std::span<const float> loss_diffs, std::uint64_t step,
                                const Mask* mask, std::span<float> grad) const {
  if (mask != nullptr && mask->size() != grad.size())
    fail("zo apply: mask has {} entries, grad {}", mask->size(), grad.size());
  std::vector<double> coef;
  std::vector<std::uint64_t> keys;
  const int kept = coefficients(loss_diffs, step, coef, keys);
  const double* c = coef.data();
  const std::uint64_t* k = keys.data();
  const std::size_t num_dirs = coef.size();
  float* g = grad.data();
  // Pruned coordinates get exactly 0; kept ones one block of normals per direction.
  if (mask != nullptr) std::fill(grad.begin(), grad.end(), 0.0f);
  for_each_kept_block(mask != nullptr ? mask->words() : nullptr, nullptr, grad.size(),
                      [=](std::size_t, const std::uint64_t* index, std::size_t n) {
                        float out[kBlockBits];
                        estimate_block(c, k, num_dirs, index, n, out);
                        for (std::size_t t = 0; t < n; ++t) g[index[t]] = out[t];
                      });
  return kept;
}

int ZoEstimator::apply_estimate(std::span<const float> loss_diffs, std::uint64_t step,
                                const SparseParams& layout, std::span<float> grad_values) const {
  if (grad_values.size() != layout.size())
    fail("zo apply: grad has {} values, layout nnz {}", grad_values.size(), layout.size());
  std::vector<double> coef;
  std::vector<std::uint64_t> keys;
  const int kept = coefficients(loss_diffs, step, coef, keys);
  const double* c = coef.data();
  const std::uint64_t* key = keys.data();
  const std::size_t num_dirs = coef.size();
  float* g = grad_values.data();
  for_each_kept_block(layout.mask().words(), layout.block_offsets().data(), layout.num_params(),
                      [=](std::size_t k_first, const std::uint64_t* index, std::size_t n) {
                        estimate_block(c, key, num_dirs, index, n, g + k_first);
                      });
  return kept;
}

}  // namespace lowsync::optim
