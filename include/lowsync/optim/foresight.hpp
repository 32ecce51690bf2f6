// Foresight pruning of the MLP before training (ALGORITHMS.md §2): data-free NTK saliency summed
// over ranks (federated weighting), or the magnitude and random baselines, giving one mask that
// is identical on every rank. Selection and the NTK math are optim/prune.hpp; this file runs the
// rounds. The sum over ranks is a callback so optim/ stays below comm/ (STYLE.md §2).
#pragma once

#include "lowsync/model/mask.hpp"
#include "lowsync/optim/prune.hpp"

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace lowsync::optim {

struct PruneSettings {
  std::string method = "none";  // none | ntk | magnitude | random
  double sparsity = 0.9;
  int rounds = 10;
  int batch = 16;      // ntk: Gaussian inputs per rank and round
  float eps = 0.01f;   // ntk: std of delta
  std::uint64_t seed = 1;
  // ntk: how the summed saliency becomes a mask each round (issue #22). none: global top-k over
  // all tensors (ALGORITHMS.md §2 as written); mean: each tensor's scores divided by their mean,
  // then global top-k; layer: each tensor keeps its own top share (same density per tensor);
  // unit: each weight row (one output unit's fan-in) and each bias tensor keeps its own top share.
  std::string normalize = "none";  // the config key defaults to unit (chosen by measurement)
  // ntk: the weights w0 the saliency is taken at. fresh: a new initialisation per round and rank
  // (ALGORITHMS.md §2 as written); train: the initialisation training starts from (seed), the same
  // on every rank. With fresh w0 and Gaussian inputs the units of a layer are exchangeable, so the
  // expected saliency of every weight of a tensor is equal and the within-tensor choice is noise;
  // at the training init it refers to the weights that will be trained.
  std::string init = "fresh";
};

// Sums a buffer over all ranks in place (every rank calls it at the same point).
using SumOverRanks = std::function<void(std::span<float>)>;

// One rank's NTK saliency of round `round` (1-based): S = |m * dR/dm| at w0 (init drawn from
// (seed, round, rank), or the training init for settings.init = train), Gaussian inputs and delta
// from (seed, round, rank); 0 at pruned weights.
// Returns R. Deterministic in (settings, round, rank, mask).
double ntk_rank_saliency(const PruneSettings& settings, int round, int rank, const model::Mask& mask,
                         std::span<float> saliency);

// The pruning mask over the mlp's flat parameters, identical on every rank: ntk runs
// settings.rounds rounds of (local saliency times weight; sum_over_ranks; global top-k at
// density (1-s)^(t/P) within the previous mask, one weight per output unit); magnitude ranks
// |w_init| and random ranks uniform scores, once, at the final density. weight = this rank's
// share n_k/n of the data (the federated weighting of the local estimates).
// The tensors of the mlp (fc1.weight, fc1.bias, ...) as score groups.
std::vector<ScoreGroup> mlp_score_groups();
// One group per weight row (an output unit's fan-in) and one per bias tensor, in flat order.
std::vector<ScoreGroup> mlp_row_groups();

model::Mask foresight_prune(const PruneSettings& settings, int rank, const SumOverRanks& sum_over_ranks,
                            double weight);

}  // namespace lowsync::optim
