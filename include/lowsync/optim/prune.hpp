// Foresight pruning, model-independent parts (ALGORITHMS.md §2): the exponential density
// schedule (the mask and its compressed storage are model/mask.hpp), global top-k
// selection with one weight kept per output unit, magnitude/random baselines, and the data-free
// NTK residual R(m) with its saliency |m * dR/dm|.
#pragma once

#include "lowsync/core/memory.hpp"
#include "lowsync/model/mask.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace lowsync::optim {

// The mask types live with the model's buffers (model/mask.hpp); optim:: names kept for callers.
using model::Mask;
using model::SparseParams;
using model::for_each_kept;
using model::IndexRange;
using model::OutputUnit;
using model::append_row_units;

// ---- selection ----

// Target density of pruning round t of P: rho_t = (1 - s)^(t/P); rho_0 = 1, rho_P = 1 - s.
double density_schedule(double final_sparsity, int round, int num_rounds);

// Number of kept weights for a density: round(density * d) with halves rounded up (computed in
// double), clamped to [0, d].
std::size_t kept_count(double density, std::size_t num_params);



// Global top-k over `scores` (all layers ranked together). Order: higher score first, ties ->
// lower flat index. Candidates are all indices, or only those kept in `within` (so pruned weights
// stay pruned across rounds). Count: k = kept_count(density, d), clamped to the candidate count.
// Each unit first keeps its best candidate (same order); those forced weights always win, and the
// remaining k - forced slots go to the best other candidates, so nnz == max(k, forced) exactly.
// A unit with no candidate forces nothing. NaN scores fail.
Mask select_top_k(std::span<const float> scores, double density,
                  std::span<const OutputUnit> units = {}, const Mask* within = nullptr);

// A contiguous block of flat indices ranked as one tensor (fc1.weight, fc1.bias, ...).
struct ScoreGroup {
  std::size_t offset = 0;
  std::size_t count = 0;
};

// Per-group kept counts: kept_count(density, d) split in proportion to the group sizes by largest
// remainder (ties -> lower group), so they sum to the global count; each clamped to the group's
// candidate count (all indices, or those kept in `within`). Groups must tile [0, d) in order.
std::vector<std::size_t> group_targets(double density, std::span<const ScoreGroup> groups, std::size_t d,
                                       const Mask* within = nullptr);

// Layer-wise top-k (proposal of issue #22, prune.ntk.normalize = layer): as select_top_k, but each
// group keeps its own group_targets() count of its best candidates, so every tensor ends at the
// same density (as random pruning does) and only the choice within a tensor follows the scores.
// The one-weight-per-unit forcing is the same; a group's forced weights count towards its target,
// so nnz == sum over groups of max(target, forced) (== the global count unless forcing exceeds it).
Mask select_top_k_per_group(std::span<const float> scores, double density, std::span<const ScoreGroup> groups,
                            std::span<const OutputUnit> units = {}, const Mask* within = nullptr);

// Divides each group's scores by their mean over its candidates (prune.ntk.normalize = mean): a
// global ranking then compares weights by how far they stand above their own tensor's typical
// score, not across tensors whose saliency scales differ by orders of magnitude. A group whose
// mean is 0 is left unchanged.
void normalize_per_group(std::span<float> scores, std::span<const ScoreGroup> groups, const Mask* within = nullptr);

// Magnitude baseline: scores[j] = |w[j]|.
void magnitude_scores(std::span<const float> params, std::span<float> scores);
// Random baseline: scores[j] = uniform01(stream_key({seed, round, kRandomPruneTag}), j).
inline constexpr std::uint64_t kRandomPruneTag = 0x7072756e65ULL;  // "prune"
void random_scores(std::uint64_t seed, std::uint64_t round, std::span<float> scores);

// ---- data-free NTK saliency ----

// The network on a fixed batch of Gaussian inputs the callable owns: writes f(x_b; w) for b < batch
// into out, [batch, output_size] flat. w is the masked weight vector (d entries).
struct NtkProblem {
  std::function<void(std::span<const float> w, std::span<float> out)> forward;
  std::size_t batch = 0;
  std::size_t output_size = 0;
};

// delta[j] = eps * normal01(key, j): the weight perturbation of one draw.
void draw_delta(std::uint64_t key, float eps, std::span<float> delta);

// One-draw residual R = (1/batch) sum_b ||f(x_b; w0*m) - f(x_b; (w0+delta)*m)||^2, m a 0/1 (or
// relaxed) float mask. E_delta[R] ~ eps^2 * tr Theta (exact for f linear in w).
double ntk_residual(const NtkProblem& problem, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m);

// Monte-Carlo tr Theta: mean over `draws` deltas (key stream_key({seed, draw})) of R / eps^2.
double ntk_trace_estimate(const NtkProblem& problem, std::span<const float> w0,
                          std::span<const float> m, float eps, std::uint64_t seed, int draws);

// Backprop form: given w_a = w0*m and w_b = (w0+delta)*m, returns R and writes dR/dw_a, dR/dw_b
// (each d entries). The model supplies it (two backward passes seeded by +-2(f_a - f_b)/batch).
using ResidualGradFn = std::function<double(std::span<const float> w_a, std::span<const float> w_b,
                                            std::span<float> grad_a, std::span<float> grad_b)>;

// S_j = |m_j * dR/dm_j| with dR/dm_j = grad_a_j * w0_j + grad_b_j * (w0_j + delta_j) (chain rule
// through w*m). Returns R. Pruned weights (m_j = 0) score exactly 0.
double ntk_saliency(const ResidualGradFn& residual_grad, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m,
                    std::span<float> saliency);

// Reference without backprop: dR/dm_j by central differences in m_j with step h (2 forward pairs
// per kept weight; tiny models and tests only). Pruned weights score 0.
void ntk_saliency_fd(const NtkProblem& problem, std::span<const float> w0,
                     std::span<const float> delta, std::span<const float> m, float h,
                     std::span<float> saliency);

}  // namespace lowsync::optim
