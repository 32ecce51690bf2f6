// Per-tensor ranking of foresight-pruning scores (issue #22, prune.ntk.normalize): group targets
// by largest remainder, layer-wise top-k against a per-group sort, the one-weight-per-unit forcing
// kept, pruned weights staying pruned, mean normalisation, and the full NTK pruning of the mlp
// keeping the same density in every tensor with normalize = layer.
#include "lowsync/model/sparse_mlp.hpp"
#include "lowsync/optim/foresight.hpp"
#include "lowsync/optim/prune.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace lowsync::optim {
namespace {

TEST(PruneGroups, TargetsSumToGlobalCountByLargestRemainder) {
  const std::vector<ScoreGroup> groups = {{0, 7}, {7, 3}, {10, 10}};
  // density 0.25 of 20 -> 5: exact shares 1.75, 0.75, 2.5 -> floors 1, 0, 2 (3), remainders
  // 0.75 (g0), 0.75 (g1), 0.5 (g2) -> g0 and g1 get one more.
  EXPECT_EQ(group_targets(0.25, groups, 20), (std::vector<std::size_t>{2, 1, 2}));
  EXPECT_EQ(group_targets(1.0, groups, 20), (std::vector<std::size_t>{7, 3, 10}));
  EXPECT_THROW(group_targets(0.5, std::vector<ScoreGroup>{{0, 7}, {8, 12}}, 20), Error);
  EXPECT_THROW(group_targets(0.5, std::vector<ScoreGroup>{{0, 7}}, 20), Error);
}

TEST(PruneGroups, LayerwiseTopKMatchesPerGroupSort) {
  const std::size_t d = 300;
  const std::vector<ScoreGroup> groups = {{0, 200}, {200, 90}, {290, 10}};
  std::vector<float> scores(d);
  // Group 2 scores 100x larger: a global top-k would take it whole, the layer-wise one 10%.
  for (std::size_t j = 0; j < d; ++j) scores[j] = uniform01(5, j) * (j >= 290 ? 100.0f : 1.0f);
  const Mask kept = select_top_k_per_group(scores, 0.1, groups);
  const auto target = group_targets(0.1, groups, d);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    std::vector<std::size_t> idx(groups[g].count);
    std::iota(idx.begin(), idx.end(), groups[g].offset);
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return scores[a] > scores[b]; });
    for (std::size_t r = 0; r < idx.size(); ++r) EXPECT_EQ(kept.test(idx[r]), r < target[g]) << "group " << g << " rank " << r;
  }
  EXPECT_EQ(kept.nnz(), 30u);
  EXPECT_EQ(select_top_k(scores, 0.1).range_nnz(290, 10), 10u);  // the collapse the layer-wise form avoids
}

TEST(PruneGroups, LayerwiseKeepsUnitForcingAndWithin) {
  // 4 units (rows of a [4, 10] weight) in group 0, a 10-entry group 1; one unit has tiny scores.
  const std::size_t d = 50;
  const std::vector<ScoreGroup> groups = {{0, 40}, {40, 10}};
  std::vector<OutputUnit> units;
  append_row_units(units, 0, 4, 10, nullptr);
  std::vector<float> scores(d);
  for (std::size_t j = 0; j < d; ++j) scores[j] = 1.0f + uniform01(9, j) + (j >= 10 && j < 20 ? -1.0f : 0.0f);
  const Mask kept = select_top_k_per_group(scores, 0.2, groups, units);
  EXPECT_GE(kept.range_nnz(10, 10), 1u);  // the weak row keeps its best weight
  EXPECT_EQ(kept.range_nnz(0, 40), 8u);   // forced weight counts towards the group's 8
  EXPECT_EQ(kept.range_nnz(40, 10), 2u);
  // Within a previous mask: pruned entries stay pruned.
  const Mask narrower = select_top_k_per_group(scores, 0.1, groups, units, &kept);
  for (std::size_t j = 0; j < d; ++j)
    if (narrower.test(j)) EXPECT_TRUE(kept.test(j)) << j;
  EXPECT_EQ(narrower.nnz(), 5u);
}

TEST(PruneGroups, MeanNormalisationOverCandidates) {
  std::vector<float> scores = {1, 3, 10, 30, 50, 7};
  const std::vector<ScoreGroup> groups = {{0, 2}, {2, 4}};
  Mask within(6, true);
  within.set(5, false);  // group 1's mean over candidates: (10 + 30 + 50) / 3 = 30
  normalize_per_group(scores, groups, &within);
  EXPECT_FLOAT_EQ(scores[0], 0.5f);
  EXPECT_FLOAT_EQ(scores[1], 1.5f);
  EXPECT_FLOAT_EQ(scores[2], 1.0f / 3.0f);
  EXPECT_FLOAT_EQ(scores[4], 50.0f / 30.0f);
}

TEST(PruneGroups, NtkLayerPruningOfTheMlpKeepsEveryTensorAtTheDensity) {
  PruneSettings s;
  s.method = "ntk";
  s.rounds = 2;
  s.batch = 2;
  s.normalize = "layer";
  const Mask mask = foresight_prune(s, 0, [](std::span<float>) {}, 1.0);
  EXPECT_EQ(mask.nnz(), kept_count(0.1, model::mlp_num_params()));
  for (const auto& info : model::mlp_param_infos())
    EXPECT_NEAR(mask.range_density(info.offset, info.count), 0.1, info.count >= 256 ? 0.01 : 0.11) << info.name;
  s.normalize = "bogus";
  EXPECT_THROW(foresight_prune(s, 0, [](std::span<float>) {}, 1.0), Error);
}

// normalize = unit: every weight row (output unit's fan-in) keeps the round's share of its inputs.
TEST(PruneGroups, NtkUnitPruningGivesEveryRowTheSameFanIn) {
  PruneSettings s;
  s.method = "ntk";
  s.rounds = 2;
  s.batch = 2;
  s.normalize = "unit";
  const Mask mask = foresight_prune(s, 0, [](std::span<float>) {}, 1.0);
  // A bias group whose target is below its forced entries keeps them: a few above the count.
  EXPECT_GE(mask.nnz(), kept_count(0.1, model::mlp_num_params()));
  EXPECT_LE(mask.nnz(), kept_count(0.1, model::mlp_num_params()) + 10);
  for (const auto& l : model::mlp_layer_specs())
    for (std::size_t o = 0; o < l.out; ++o) {
      const std::size_t kept = mask.range_nnz(l.weight_offset + o * l.in, l.in);
      // 0.1 * fan-in, rounded either way by the largest-remainder split.
      EXPECT_LE(std::abs(static_cast<double>(kept) - 0.1 * static_cast<double>(l.in)), 1.0) << l.in << " row " << o;
    }
}

// prune.ntk.init = train takes the saliency at the training initialisation (seed), the same at
// every call, not at a fresh draw; since |m dR/dm| carries a factor w0, the large training-init
// weights of fc3 score higher than the small ones.
TEST(PruneGroups, NtkInitTrainUsesTheTrainingInitialisation) {
  PruneSettings s;
  s.method = "ntk";
  s.batch = 2;
  s.seed = 11;
  const std::size_t d = model::mlp_num_params();
  const Mask full(d, true);
  std::vector<float> fresh(d), train(d), train_again(d);
  ntk_rank_saliency(s, 1, 0, full, fresh);
  s.init = "train";
  ntk_rank_saliency(s, 1, 0, full, train);
  ntk_rank_saliency(s, 1, 0, full, train_again);
  EXPECT_EQ(train, train_again);
  EXPECT_NE(train, fresh);
  double big = 0.0, small = 0.0;
  std::size_t nb = 0, ns = 0;
  const auto fc3 = model::mlp_layer_specs()[2];
  for (std::size_t j = fc3.weight_offset; j < fc3.bias_offset; ++j) {
    const float w = std::fabs(model::mlp_initial_value(11, j));
    if (w > 0.75f / 16.0f) { big += train[j]; ++nb; }
    if (w < 0.25f / 16.0f) { small += train[j]; ++ns; }
  }
  EXPECT_GT(big / nb, 2.0 * small / ns);
  s.init = "bogus";
  EXPECT_THROW(ntk_rank_saliency(s, 1, 0, full, train), Error);
}

}  // namespace
}  // namespace lowsync::optim
