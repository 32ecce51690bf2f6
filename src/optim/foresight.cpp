// Foresight pruning rounds (optim/foresight.hpp, ALGORITHMS.md §2) for the MLP of
// model/sparse_mlp.hpp: NTK saliency through its dense reference network, magnitude and random.
#include "lowsync/optim/foresight.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/sparse_mlp.hpp"
#include "lowsync/optim/prune.hpp"

#include <cmath>

namespace lowsync::optim {
namespace {

constexpr std::uint64_t kTagW0 = 0x6e746b77ULL, kTagX = 0x6e746b78ULL, kTagDelta = 0x6e746b64ULL;

}  // namespace


double ntk_rank_saliency(const PruneSettings& s, int round, int rank, const model::Mask& mask,
                         std::span<float> saliency) {
  const std::size_t d = model::mlp_num_params();
  if (mask.size() != d || saliency.size() != d) fail("ntk saliency: mask/saliency sizes {} {} != {}", mask.size(), saliency.size(), d);
  const auto r = static_cast<std::uint64_t>(round), k = static_cast<std::uint64_t>(rank);
  memory::TrackedBuffer<float> w0("prune.w0", d), delta("prune.delta", d), m("prune.mask", d);
  if (s.init != "fresh" && s.init != "train") fail("prune.ntk.init = '{}' is not one of fresh|train", s.init);
  const std::uint64_t w0_seed = s.init == "train" ? s.seed : stream_key({s.seed, kTagW0, r, k});
  for (std::size_t j = 0; j < d; ++j) w0[j] = model::mlp_initial_value(w0_seed, j);
  draw_delta(stream_key({s.seed, kTagDelta, r, k}), s.eps, delta.span());
  mask.to_floats(m.span());
  const std::size_t n = static_cast<std::size_t>(s.batch);
  const auto specs = model::mlp_layer_specs();
  const std::size_t inputs = specs.front().in, outputs = specs.back().out;  // 784, 10
  memory::TrackedBuffer<float> x("prune.x", n * inputs), fa("prune.fa", n * outputs), fb("prune.fb", n * outputs),
      dout("prune.dout", n * outputs);
  const std::uint64_t x_key = stream_key({s.seed, kTagX, r, k});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal01(x_key, i);
  model::DenseMlpRef net(s.batch);
  // dR/dw_a and dR/dw_b: R = (1/n) sum ||f_a - f_b||^2, so dout_a = 2 (f_a - f_b) / n = -dout_b.
  const ResidualGradFn residual_grad = [&](std::span<const float> w_a, std::span<const float> w_b,
                                                  std::span<float> grad_a, std::span<float> grad_b) {
    net.forward(w_a, x.data(), fa.span());
    net.forward(w_b, x.data(), fb.span());
    double res = 0.0;
    for (std::size_t i = 0; i < fa.size(); ++i) {
      const float diff = fa[i] - fb[i];
      res += static_cast<double>(diff) * diff;
      dout[i] = -2.0f * diff / static_cast<float>(n);
    }
    net.backward(w_b, x.data(), dout.span(), grad_b);  // activations of the last forward (w_b)
    for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = -dout[i];
    net.forward(w_a, x.data(), fa.span());
    net.backward(w_a, x.data(), dout.span(), grad_a);
    return res / static_cast<double>(n);
  };
  return ntk_saliency(residual_grad, w0.span(), delta.span(), m.span(), saliency);
}

std::vector<ScoreGroup> mlp_score_groups() {
  std::vector<ScoreGroup> groups;
  for (const auto& info : model::mlp_param_infos()) groups.push_back({info.offset, info.count});
  return groups;
}

std::vector<ScoreGroup> mlp_row_groups() {
  std::vector<ScoreGroup> groups;
  for (const auto& l : model::mlp_layer_specs()) {
    for (std::size_t o = 0; o < l.out; ++o) groups.push_back({l.weight_offset + o * l.in, l.in});
    groups.push_back({l.bias_offset, l.out});
  }
  return groups;
}

model::Mask foresight_prune(const PruneSettings& s, int rank, const SumOverRanks& sum_over_ranks, double weight) {
  const std::size_t d = model::mlp_num_params();
  const auto units = model::mlp_output_units();
  const double final_density = 1.0 - s.sparsity;
  if (s.method == "none") return Mask(d, true);
  memory::TrackedBuffer<float> scores("prune.scores", d);
  if (s.method == "magnitude") {
    // |w_init| of the real initialisation (the weights training starts from): static across
    // rounds, so one selection at the final density equals the iterative schedule.
    for (std::size_t j = 0; j < d; ++j) scores[j] = std::fabs(model::mlp_initial_value(s.seed, j));
    return select_top_k(scores.span(), final_density, units);
  }
  if (s.method == "random") {
    random_scores(s.seed, 0, scores.span());
    return select_top_k(scores.span(), final_density, units);
  }
  if (s.method != "ntk") fail("prune.method = '{}' is not one of none|ntk|magnitude|random", s.method);
  if (s.normalize != "none" && s.normalize != "mean" && s.normalize != "layer" && s.normalize != "unit")
    fail("prune.ntk.normalize = '{}' is not one of none|mean|layer|unit", s.normalize);
  const auto groups = s.normalize == "unit" ? mlp_row_groups() : mlp_score_groups();
  Mask mask(d, true);
  for (int t = 1; t <= s.rounds; ++t) {
    const double residual = ntk_rank_saliency(s, t, rank, mask, scores.span());
    const auto w = static_cast<float>(weight);
    for (std::size_t j = 0; j < d; ++j) scores[j] *= w;
    sum_over_ranks(scores.span());
    const double density = density_schedule(s.sparsity, t, s.rounds);
    if (s.normalize == "layer" || s.normalize == "unit") {
      mask = select_top_k_per_group(scores.span(), density, groups, units, &mask);
    } else {
      if (s.normalize == "mean") normalize_per_group(scores.span(), groups, &mask);
      mask = select_top_k(scores.span(), density, units, &mask);
    }
    log::info("prune round {}/{}: residual R {:.4g} on rank 0, density {:.4f}", t, s.rounds, residual, mask.density());
  }
  return mask;
}

}  // namespace lowsync::optim
