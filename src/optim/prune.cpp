// Foresight pruning, model-independent parts (ALGORITHMS.md §2): density schedule, global top-k with one weight per output unit, baselines, and the
// data-free NTK residual and saliency.
#include "lowsync/optim/prune.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

namespace lowsync::optim {
namespace {

using HostRange = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;

}  // namespace

// ---- selection ----

double density_schedule(double final_sparsity, int round, int num_rounds) {
  if (!(final_sparsity >= 0.0 && final_sparsity < 1.0))
    fail("prune final sparsity {} outside [0, 1)", final_sparsity);
  if (num_rounds < 1) fail("prune rounds {} must be >= 1", num_rounds);
  if (round < 0 || round > num_rounds) fail("prune round {} outside [0, {}]", round, num_rounds);
  // Endpoints exact, so the last round hits the requested sparsity without pow rounding.
  if (round == 0) return 1.0;
  if (round == num_rounds) return 1.0 - final_sparsity;
  return std::pow(1.0 - final_sparsity, static_cast<double>(round) / num_rounds);
}

std::size_t kept_count(double density, std::size_t num_params) {
  if (!(density >= 0.0 && density <= 1.0)) fail("prune density {} outside [0, 1]", density);
  const double k = std::floor(density * static_cast<double>(num_params) + 0.5);
  return std::min(num_params, static_cast<std::size_t>(k));
}

Mask select_top_k(std::span<const float> scores, double density, std::span<const OutputUnit> units,
                  const Mask* within) {
  const std::size_t d = scores.size();
  if (within != nullptr && within->size() != d)
    fail("prune: mask has {} entries, scores {}", within->size(), d);
  for (std::size_t j = 0; j < d; ++j)
    if (std::isnan(scores[j])) fail("prune: NaN score at flat index {}", j);
  const auto candidate = [&](std::size_t j) { return within == nullptr || within->test(j); };
  // Strict total order: higher score first, ties -> lower flat index. The kept set is therefore
  // unique, whatever the selection algorithm does internally.
  const auto better = [&](std::size_t a, std::size_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  };

  Mask kept(d, false);
  std::size_t forced = 0;
  for (const OutputUnit& unit : units) {
    std::size_t best = d;
    for (const IndexRange& range : unit) {
      for (std::size_t c = 0; c < range.count; ++c) {
        const std::size_t j = range.offset + c * range.stride;
        if (j >= d) fail("prune: output unit index {} outside {} parameters", j, d);
        if (candidate(j) && (best == d || better(j, best))) best = j;
      }
    }
    if (best != d && !kept.test(best)) {
      kept.set(best, true);
      ++forced;
    }
  }

  const std::size_t num_candidates = within == nullptr ? d : within->nnz();
  const std::size_t target = std::max(forced, std::min(kept_count(density, d), num_candidates));
  const std::size_t fill = target - forced;
  if (fill == 0) return kept;

  std::vector<std::uint32_t> rest;
  rest.reserve(num_candidates - forced);
  for (std::size_t j = 0; j < d; ++j)
    if (candidate(j) && !kept.test(j)) rest.push_back(static_cast<std::uint32_t>(j));
  std::nth_element(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(fill - 1), rest.end(),
                   better);
  for (std::size_t i = 0; i < fill; ++i) kept.set(rest[i], true);
  return kept;
}

namespace {

void check_groups(std::span<const ScoreGroup> groups, std::size_t d) {
  std::size_t next = 0;
  for (const ScoreGroup& g : groups) {
    if (g.offset != next) fail("prune: score groups must tile the parameters in order (group at {}, expected {})", g.offset, next);
    next = g.offset + g.count;
  }
  if (next != d) fail("prune: score groups cover {} of {} parameters", next, d);
}

std::size_t group_candidates(const ScoreGroup& g, const Mask* within) {
  return within == nullptr ? g.count : within->range_nnz(g.offset, g.count);
}

}  // namespace

std::vector<std::size_t> group_targets(double density, std::span<const ScoreGroup> groups, std::size_t d,
                                       const Mask* within) {
  check_groups(groups, d);
  const std::size_t total = kept_count(density, d);
  std::vector<std::size_t> target(groups.size());
  std::vector<std::pair<double, std::size_t>> remainder;  // (fractional part, group)
  std::size_t assigned = 0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const double exact = static_cast<double>(total) * static_cast<double>(groups[g].count) / static_cast<double>(d);
    target[g] = static_cast<std::size_t>(std::floor(exact));
    assigned += target[g];
    remainder.emplace_back(exact - std::floor(exact), g);
  }
  std::stable_sort(remainder.begin(), remainder.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (std::size_t i = 0; assigned < total && i < remainder.size(); ++i, ++assigned) ++target[remainder[i].second];
  for (std::size_t g = 0; g < groups.size(); ++g) target[g] = std::min(target[g], group_candidates(groups[g], within));
  return target;
}

Mask select_top_k_per_group(std::span<const float> scores, double density, std::span<const ScoreGroup> groups,
                            std::span<const OutputUnit> units, const Mask* within) {
  const std::size_t d = scores.size();
  if (within != nullptr && within->size() != d) fail("prune: mask has {} entries, scores {}", within->size(), d);
  const auto target = group_targets(density, groups, d, within);
  // Forcing (one weight per unit) exactly as the global selection; density 0 keeps only those.
  Mask kept = select_top_k(scores, 0.0, units, within);
  const auto better = [&](std::size_t a, std::size_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  };
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const ScoreGroup& grp = groups[g];
    const std::size_t forced = kept.range_nnz(grp.offset, grp.count);
    if (target[g] <= forced) continue;
    const std::size_t fill = target[g] - forced;
    std::vector<std::uint32_t> rest;
    for (std::size_t j = grp.offset; j < grp.offset + grp.count; ++j)
      if ((within == nullptr || within->test(j)) && !kept.test(j)) rest.push_back(static_cast<std::uint32_t>(j));
    std::nth_element(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(fill - 1), rest.end(), better);
    for (std::size_t i = 0; i < fill; ++i) kept.set(rest[i], true);
  }
  return kept;
}

void normalize_per_group(std::span<float> scores, std::span<const ScoreGroup> groups, const Mask* within) {
  check_groups(groups, scores.size());
  for (const ScoreGroup& g : groups) {
    double sum = 0.0;
    std::size_t n = 0;
    for (std::size_t j = g.offset; j < g.offset + g.count; ++j)
      if (within == nullptr || within->test(j)) {
        sum += scores[j];
        ++n;
      }
    if (n == 0 || !(sum > 0.0)) continue;
    const double inv_mean = static_cast<double>(n) / sum;
    for (std::size_t j = g.offset; j < g.offset + g.count; ++j) scores[j] = static_cast<float>(scores[j] * inv_mean);
  }
}

void magnitude_scores(std::span<const float> params, std::span<float> scores) {
  if (params.size() != scores.size())
    fail("magnitude scores: {} params, {} scores", params.size(), scores.size());
  const float* w = params.data();
  float* s = scores.data();
  Kokkos::parallel_for("lowsync::optim::magnitude_scores", HostRange(0, scores.size()),
                       [=](const std::int64_t j) { s[j] = std::fabs(w[j]); });
}

void random_scores(std::uint64_t seed, std::uint64_t round, std::span<float> scores) {
  const std::uint64_t key = stream_key({seed, round, kRandomPruneTag});
  float* s = scores.data();
  Kokkos::parallel_for(
      "lowsync::optim::random_scores", HostRange(0, scores.size()),
      [=](const std::int64_t j) { s[j] = uniform01(key, static_cast<std::uint64_t>(j)); });
}

// ---- NTK saliency ----

namespace {

void check_ntk_sizes(std::span<const float> w0, std::span<const float> delta,
                     std::span<const float> m) {
  if (delta.size() != w0.size() || m.size() != w0.size())
    fail("ntk: w0 has {} entries, delta {}, mask {}", w0.size(), delta.size(), m.size());
}

// R for explicit masked weight vectors; out_a, out_b are [batch, output_size] scratch.
double residual_of(const NtkProblem& problem, std::span<const float> w_a,
                   std::span<const float> w_b, std::vector<float>& out_a,
                   std::vector<float>& out_b) {
  problem.forward(w_a, out_a);
  problem.forward(w_b, out_b);
  double sum = 0.0;
  for (std::size_t i = 0; i < out_a.size(); ++i) {
    const double diff = static_cast<double>(out_a[i]) - out_b[i];
    sum += diff * diff;
  }
  return sum / static_cast<double>(problem.batch);
}

}  // namespace

void draw_delta(std::uint64_t key, float eps, std::span<float> delta) {
  float* dst = delta.data();
  Kokkos::parallel_for(
      "lowsync::optim::ntk_delta", HostRange(0, delta.size()),
      [=](const std::int64_t j) { dst[j] = eps * normal01(key, static_cast<std::uint64_t>(j)); });
}

double ntk_residual(const NtkProblem& problem, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m) {
  check_ntk_sizes(w0, delta, m);
  if (problem.batch == 0) fail("ntk: batch must be > 0");
  std::vector<float> w_a(w0.size()), w_b(w0.size());
  for (std::size_t j = 0; j < w0.size(); ++j) {
    w_a[j] = w0[j] * m[j];
    w_b[j] = (w0[j] + delta[j]) * m[j];
  }
  std::vector<float> out_a(problem.batch * problem.output_size);
  std::vector<float> out_b(out_a.size());
  return residual_of(problem, w_a, w_b, out_a, out_b);
}

double ntk_trace_estimate(const NtkProblem& problem, std::span<const float> w0,
                          std::span<const float> m, float eps, std::uint64_t seed, int draws) {
  if (draws < 1) fail("ntk: draws {} must be >= 1", draws);
  if (!(eps > 0.0f)) fail("ntk: eps {} must be > 0", eps);
  std::vector<float> delta(w0.size());
  double sum = 0.0;
  for (int t = 0; t < draws; ++t) {
    draw_delta(stream_key({seed, static_cast<std::uint64_t>(t)}), eps, delta);
    sum += ntk_residual(problem, w0, delta, m);
  }
  return sum / draws / (static_cast<double>(eps) * eps);
}

double ntk_saliency(const ResidualGradFn& residual_grad, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m,
                    std::span<float> saliency) {
  check_ntk_sizes(w0, delta, m);
  if (saliency.size() != w0.size())
    fail("ntk: saliency has {} entries, expected {}", saliency.size(), w0.size());
  const std::size_t d = w0.size();
  std::vector<float> w_a(d), w_b(d), grad_a(d), grad_b(d);
  for (std::size_t j = 0; j < d; ++j) {
    w_a[j] = w0[j] * m[j];
    w_b[j] = (w0[j] + delta[j]) * m[j];
  }
  const double r = residual_grad(w_a, w_b, grad_a, grad_b);
  for (std::size_t j = 0; j < d; ++j) {
    const double dr_dm = static_cast<double>(grad_a[j]) * w0[j] +
                         static_cast<double>(grad_b[j]) * (static_cast<double>(w0[j]) + delta[j]);
    saliency[j] = static_cast<float>(std::fabs(m[j] * dr_dm));
  }
  return r;
}

void ntk_saliency_fd(const NtkProblem& problem, std::span<const float> w0,
                     std::span<const float> delta, std::span<const float> m, float h,
                     std::span<float> saliency) {
  check_ntk_sizes(w0, delta, m);
  if (saliency.size() != w0.size())
    fail("ntk: saliency has {} entries, expected {}", saliency.size(), w0.size());
  if (!(h > 0.0f)) fail("ntk: finite-difference step {} must be > 0", h);
  std::vector<float> m_step(m.begin(), m.end());
  for (std::size_t j = 0; j < w0.size(); ++j) {
    if (m[j] == 0.0f) {
      saliency[j] = 0.0f;
      continue;
    }
    m_step[j] = m[j] + h;
    const double r_plus = ntk_residual(problem, w0, delta, m_step);
    m_step[j] = m[j] - h;
    const double r_minus = ntk_residual(problem, w0, delta, m_step);
    m_step[j] = m[j];
    saliency[j] = static_cast<float>(std::fabs(m[j] * (r_plus - r_minus) / (2.0 * h)));
  }
}

}  // namespace lowsync::optim
