// Zeroth-order (backprop-free) gradient estimator over masked parameters (ALGORITHMS.md §2):
// q Gaussian directions u_i regenerated from a counter-based seed, perturbation in place, forward
// or central differences. probe() returns the q scalar loss differences (what a FedSGD client
// sends, 4q bytes); apply_estimate() rebuilds the gradient estimate from them and the seed.
#pragma once

#include "lowsync/optim/prune.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace lowsync::optim {

enum class ZoDifference { kForward, kCentral };

struct ZoSettings {
  int num_directions = 64;  // q
  float mu = 1e-3f;         // smoothing; keep above fp32 weight/loss rounding (>= 1e-4)
  ZoDifference difference = ZoDifference::kForward;
  std::uint64_t seed = 0;  // shared by all ranks: directions are regenerated, never sent
  int directions_per_pass = 1;  // probe with a PerturbedLossFn: directions handed over per call
};

// Loss at the parameters as they are now (the estimator perturbs them in place before calling).
// Return the mean batch loss accumulated in fp32 or wider.
using LossFn = std::function<double()>;
// losses[i] = loss at the parameters perturbed by direction p.keys[i] (model::Perturbations: v +
// p.coef * (p.mu * u_i), formed by the callee; the stored parameters are not touched), for every
// i < p.keys.size(). Several directions per call let the model share one pass over its weights.
using PerturbedLossFn = std::function<void(const model::Perturbations& p, std::span<double> losses)>;

struct ZoProbe {
  // q entries. Forward: L(w + mu u_i m) - L(w). Central: L(w + mu u_i m) - L(w - mu u_i m).
  // A non-finite perturbed loss drops the direction: its entry is NaN (also on the wire, so the
  // server skips it).
  std::vector<float> loss_diffs;
  double loss = 0.0;  // forward: L(w); central: mean of (L+ + L-)/2 over kept directions
  int num_dropped = 0;
};

// Direction i of step `step`, coordinate j (flat index, also for compressed parameters):
// u_i[j] = normal01(stream_key({seed, step, i}), j).
std::uint64_t zo_direction_key(std::uint64_t seed, std::uint64_t step, int direction);

// In-place perturbation w[j] += coef * (mu * u[j]) at kept j (all j when mask is null); pruned
// coordinates are not touched. mu * u[j] is rounded to fp32 first and coef is +-1 or +-2, so every
// call adds a scaled copy of the same fp32 vector. Kokkos kernel over the d coordinates.
void zo_perturb(std::span<float> params, const Mask* mask, std::uint64_t key, float mu, float coef);
// Same on compressed parameters: values[k] += coef * (mu * u[j_k]) with j_k the flat index.
void zo_perturb(SparseParams& params, std::uint64_t key, float mu, float coef);

// Restore precision: subtracting the regenerated perturbation is not bitwise exact in fp32
// (fl(fl(w + a) - a) != w when the sum rounds), and an exact restore would need a saved copy of w
// (d floats, the memory ZO training avoids), so we store nothing. With a = mu * u[j] and ulp(x)
// the fp32 spacing at |x|, each rounding errs by at most ulp(|w| + 2|a|) / 2, so one direction
// leaves |w_restored - w| <= 1 ulp(|w| + 2|a|) (forward: 2 roundings) or 2 ulp (central: 3
// roundings, the last one's argument can exceed |w| + 2|a| by an ulp); in particular within 1 ulp
// of w in forward mode while |w| + 2|a| stays in w's binade. Drift over a step is the sum over
// directions. Pruned coordinates stay bitwise unchanged.
inline constexpr float kZoRestoreUlpsForward = 1.0f;
inline constexpr float kZoRestoreUlpsCentral = 2.0f;

class ZoEstimator {
 public:
  explicit ZoEstimator(const ZoSettings& settings);
  const ZoSettings& settings() const { return settings_; }

  // Runs q directions on `params` (d entries, masked by `mask` or dense when null), calling `loss`
  // q + 1 (forward) or 2q (central) times with the parameters perturbed in place; parameters are
  // restored (within kZoRestoreUlpsForward/Central) before returning, also when `loss` throws. Fails when every
  // direction is dropped (the step must be skipped).
  ZoProbe probe(std::span<float> params, const Mask* mask, std::uint64_t step,
                const LossFn& loss) const;
  // Same on compressed parameters (directions indexed by flat index, so results match the dense
  // form with params.mask()).
  ZoProbe probe(SparseParams& params, std::uint64_t step, const LossFn& loss) const;
  // Same without perturbing in place: `loss` gives L(w) (forward mode only), `perturbed` the
  // perturbed losses, settings().directions_per_pass directions per call (the last call fewer).
  // The directions are those of the in-place forms; each is applied to the unperturbed w, so there
  // is no restore rounding: direction i's loss is bitwise the in-place form's when direction i is
  // the first one (w not yet restored from earlier directions), and within the restore drift
  // (kZoRestoreUlps* per earlier direction) of it otherwise. Central differences use w - mu u
  // directly (the in-place form reaches it as (w + mu u) - 2 mu u). The parameters are exactly
  // unchanged on return.
  ZoProbe probe(std::uint64_t step, const LossFn& loss, const PerturbedLossFn& perturbed) const;

  // grad = (1 / q_kept) sum_{i kept} loss_diffs[i] / (mu or 2 mu) * u_i * m, over all d entries
  // (exactly 0 at pruned coordinates); NaN entries are skipped. loss_diffs has q entries (summed
  // over clients with weights n_k/n by the caller). Returns q_kept; fails when it is 0.
  int apply_estimate(std::span<const float> loss_diffs, std::uint64_t step, const Mask* mask,
                     std::span<float> grad) const;
  // Same into compressed gradient values (nnz entries in the order of `layout`).
  int apply_estimate(std::span<const float> loss_diffs, std::uint64_t step,
                     const SparseParams& layout, std::span<float> grad_values) const;

 private:
  // For kept directions only: c_i = loss_diffs[i] / ((mu or 2 mu) * q_kept) and their keys.
  int coefficients(std::span<const float> loss_diffs, std::uint64_t step, std::vector<double>& coef,
                   std::vector<std::uint64_t>& keys) const;
  template <class Perturb>
  ZoProbe run_probe(std::uint64_t step, const LossFn& loss, Perturb perturb) const;

  ZoSettings settings_;
};

}  // namespace lowsync::optim
