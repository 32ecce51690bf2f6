// ranks: 1 2 4
// Federated pruning and ZO training across ranks: the NTK saliency summed by one allreduce equals
// the single-process sum of the per-rank estimates (same seeds); pruning is deterministic, equal
// on every rank and hits the requested density exactly; FedSGD-ZO on K ranks x batch b equals
// 1 rank x batch K*b on the union batch (same direction seeds); FedAvg keeps masked weights at 0.
#include "support/training.hpp"

#include "lowsync/app/zo_trainer.hpp"
#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/model/sparse_mlp.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace lowsync::app {
namespace {

using testing::synthetic_batch;
using testing::world_rank;
using testing::world_size;

bool same_on_all_ranks(comm::Communicator& comm, std::span<const std::uint8_t> bytes) {
  std::vector<std::uint8_t> root(bytes.begin(), bytes.end());
  comm.broadcast(std::span<std::uint8_t>(root), 0, "obs.test");
  return !comm.any(std::memcmp(root.data(), bytes.data(), bytes.size()) != 0, "obs.test");
}

TEST(FederatedNtk, AllreduceSumEqualsSingleProcessSum) {
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});  // rank-ordered sums, like the reference
  const int K = comm.size();
  optim::PruneSettings s;
  s.method = "ntk";
  s.batch = 2;
  s.seed = 31;
  const std::size_t d = model::mlp_num_params();
  optim::Mask mask(d, true);
  std::vector<float> fed(d), ref(d, 0.0f), local(d);
  optim::ntk_rank_saliency(s, 1, comm.rank(), mask, fed);
  comm.allreduce(std::span<float>(fed), comm::ReduceOp::sum, "prune");
  for (int r = 0; r < K; ++r) {  // one process computing every rank's estimate
    optim::ntk_rank_saliency(s, 1, r, mask, local);
    for (std::size_t j = 0; j < d; ++j) ref[j] = r == 0 ? local[j] : ref[j] + local[j];
  }
  for (std::size_t j = 0; j < d; ++j) ASSERT_EQ(fed[j], ref[j]) << j;
  // Estimates of different ranks differ (independent draws), so the sum is not K copies of one.
  if (K > 1) {
    std::vector<float> r1(d);
    optim::ntk_rank_saliency(s, 1, 1, mask, r1);
    optim::ntk_rank_saliency(s, 1, 0, mask, local);
    EXPECT_NE(std::memcmp(r1.data(), local.data(), d * sizeof(float)), 0);
  }
  // Pruned weights score exactly 0.
  optim::Mask half(d, true);
  for (std::size_t j = 0; j < d; j += 2) half.set(j, false);
  optim::ntk_rank_saliency(s, 2, 0, half, local);
  for (std::size_t j = 0; j < d; j += 2) ASSERT_EQ(local[j], 0.0f);
}

TEST(ForesightPrune, DeterministicExactDensityEqualOnRanks) {
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
  const std::size_t d = model::mlp_num_params();
  const auto units = model::mlp_output_units();
  const optim::SumOverRanks sum = [&](std::span<float> v) { comm.allreduce(v, comm::ReduceOp::sum, "prune"); };
  for (const std::string method : {"ntk", "magnitude", "random"}) {
    optim::PruneSettings s;
    s.method = method;
    s.sparsity = 0.9;
    s.rounds = 2;
    s.batch = 2;
    s.seed = 5;
    const auto a = optim::foresight_prune(s, comm.rank(), sum, 1.0 / comm.size());
    const auto b = optim::foresight_prune(s, comm.rank(), sum, 1.0 / comm.size());
    EXPECT_TRUE(a == b) << method;
    EXPECT_EQ(a.nnz(), optim::kept_count(0.1, d)) << method;
    EXPECT_TRUE(same_on_all_ranks(comm, a.bytes())) << method;
    for (const auto& unit : units) {  // at least one weight per output unit
      std::size_t kept = 0;
      for (const auto& r : unit)
        for (std::size_t i = 0; i < r.count; ++i) kept += a.test(r.offset + i * r.stride) ? 1 : 0;
      ASSERT_GE(kept, 1u) << method;
    }
  }
}

// K ranks x batch b (rank r gets samples [r b, (r+1) b) of the union) against one process with
// the union batch, both in the FedSGD form with the same seed.
TEST(ZoFedSgd, KRanksEqualOneRankWithUnionBatch) {
  comm::Communicator world(MPI_COMM_WORLD);
  comm::Communicator self(MPI_COMM_SELF);
  const int K = world.size(), b = 4, steps = 3;
  config::Config cfg;
  // SGD, not Adam: Adam's first steps are lr * g / |g|, so entries with g ~ eps flip on fp32
  // rounding of the per-rank means and the comparison would measure that, not the protocol.
  cfg.set_text("optim.lr=0.01");
  cfg.set_text("optim.zo.update=sgd");
  optim::ZoSettings zs;
  zs.num_directions = 6;
  zs.mu = 1e-3f;
  zs.seed = 99;
  const std::size_t d = model::mlp_num_params();
  auto mask = std::make_shared<optim::Mask>(d, true);
  for (std::size_t j = 0; j < d; ++j)
    if (uniform01(3, j) < 0.8f) mask->set(j, false);
  model::SparseMlp fed_model(b, 7, mask), ref_model(K * b, 7, mask);
  ZoTrainer fed(fed_model, zs, ZoTrainer::Form::kFedSgd, 1, optim::make_zo_update(cfg, fed_model.nnz()), world);
  ZoTrainer ref(ref_model, zs, ZoTrainer::Form::kFedSgd, 1, optim::make_zo_update(cfg, ref_model.nnz()), self);
  for (int step = 1; step <= steps; ++step) {
    const auto mine = synthetic_batch(11, step, world.rank() * b, b);
    const auto all = synthetic_batch(11, step, 0, K * b);
    fed.step(mine.batch(), step);
    ref.step(all.batch(), step);
  }
  const auto v = fed_model.params().values(), r = ref_model.params().values();
  ASSERT_EQ(v.size(), r.size());
  double max_diff = 0.0, max_move = 0.0;
  for (std::size_t k = 0; k < v.size(); ++k) max_diff = std::max(max_diff, std::fabs(double(v[k]) - r[k]));
  // The estimate's loss differences differ only by fp32 rounding of the per-rank means; compare
  // against the largest movement of a weight.
  model::SparseMlp init(b, 7, mask);
  for (std::size_t k = 0; k < v.size(); ++k) max_move = std::max(max_move, std::fabs(double(v[k]) - init.params().values()[k]));
  EXPECT_GT(max_move, 1e-3);
  EXPECT_LT(max_diff, 1e-3 * max_move + 1e-6) << "max diff " << max_diff << " vs movement " << max_move;
  // Replicas stay identical across ranks (every rank applies the same rebuilt update).
  EXPECT_TRUE(same_on_all_ranks(world, {reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * 4}));
}

TEST(ZoFedAvg, AveragesKeptValuesEveryPeriod) {
  comm::Communicator world(MPI_COMM_WORLD);
  config::Config cfg;
  cfg.set_text("optim.lr=0.001");
  optim::ZoSettings zs;
  zs.num_directions = 4;
  zs.seed = 5;
  const std::size_t d = model::mlp_num_params();
  auto mask = std::make_shared<optim::Mask>(d, true);
  for (std::size_t j = 0; j < d; ++j)
    if (uniform01(4, j) < 0.9f) mask->set(j, false);
  model::SparseMlp m(4, 3, mask);
  ZoTrainer zo(m, zs, ZoTrainer::Form::kFedAvg, 2, optim::make_zo_update(cfg, m.nnz()), world);
  const auto v = m.params().values();
  const auto bytes = std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * 4);
  zo.step(synthetic_batch(2, 1, world.rank() * 4, 4).batch(), 1);
  if (world.size() > 1) {
    EXPECT_FALSE(same_on_all_ranks(world, bytes));  // local steps diverge
  }
  zo.step(synthetic_batch(2, 2, world.rank() * 4, 4).batch(), 2);
  EXPECT_TRUE(same_on_all_ranks(world, bytes));  // averaged at step 2
  EXPECT_EQ(zo.syncs(), world.size() > 1 ? 1 : 0);
  EXPECT_EQ(world.ledger().total().wire_bytes > 0, world.size() > 1);
}

}  // namespace
}  // namespace lowsync::app
