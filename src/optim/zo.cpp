// Zeroth-order gradient estimator (ALGORITHMS.md §2): in-place Gaussian perturbations regenerated
// from (seed, step, direction), forward/central loss differences with NaN directions dropped, and
// the rebuild g = (1/q) sum_i dL_i / (mu or 2 mu) * u_i * m.
#include "lowsync/optim/zo.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

#include <Kokkos_Core.hpp>

#include <cmath>
#include <limits>

namespace lowsync::optim {
namespace {

using HostRange = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;

}  // namespace

std::uint64_t zo_direction_key(std::uint64_t seed, std::uint64_t step, int direction) {
  return stream_key({seed, step, static_cast<std::uint64_t>(direction)});
}

void zo_perturb(std::span<float> params, const Mask* mask, std::uint64_t key, float mu,
                float coef) {
  if (mask != nullptr && mask->size() != params.size())
    fail("zo perturb: mask has {} entries, params {}", mask->size(), params.size());
  float* w = params.data();
  const std::uint64_t* words = mask != nullptr ? mask->words() : nullptr;
  Kokkos::parallel_for("lowsync::optim::zo_perturb", HostRange(0, params.size()),
                       [=](const std::int64_t j) {
                         if (words != nullptr && ((words[j >> 6] >> (j & 63)) & 1u) == 0) return;
                         // One fp32 rounding of mu*u, then an exact scaling by coef (+-1, +-2).
                         const float step = mu * normal01(key, static_cast<std::uint64_t>(j));
                         w[j] += coef * step;
                       });
}

void zo_perturb(SparseParams& params, std::uint64_t key, float mu, float coef) {
  float* values = params.values().data();
  for_each_kept(params, [=](std::size_t k, std::size_t j) {
    const float step = mu * normal01(key, j);
    values[k] += coef * step;
  });
}

ZoEstimator::ZoEstimator(const ZoSettings& settings) : settings_(settings) {
  if (settings_.num_directions < 1)
    fail("zo: num_directions {} must be >= 1", settings_.num_directions);
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
  const std::size_t n = coef.size();
  const std::uint64_t* words = mask != nullptr ? mask->words() : nullptr;
  float* g = grad.data();
  // Coordinate-outer so each gradient entry is written once; the q directions are regenerated
  // per coordinate (counter-based, so the order does not matter).
  Kokkos::parallel_for("lowsync::optim::zo_apply", HostRange(0, grad.size()),
                       [=](const std::int64_t j) {
                         if (words != nullptr && ((words[j >> 6] >> (j & 63)) & 1u) == 0) {
                           g[j] = 0.0f;
                           return;
                         }
                         double sum = 0.0;
                         for (std::size_t i = 0; i < n; ++i)
                           sum += c[i] * normal01(k[i], static_cast<std::uint64_t>(j));
                         g[j] = static_cast<float>(sum);
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
  const std::size_t n = coef.size();
  float* g = grad_values.data();
  for_each_kept(layout, [=](std::size_t k, std::size_t j) {
    double sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) sum += c[i] * normal01(key[i], j);
    g[k] = static_cast<float>(sum);
  });
  return kept;
}

}  // namespace lowsync::optim
