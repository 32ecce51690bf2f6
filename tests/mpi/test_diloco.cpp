// ranks: 1 2 4
// DiLoCo / Streaming DiLoCo (sync/diloco.hpp, ALGORITHMS.md §6) on the MLP with synthetic data:
// outer_lr 1 + momentum 0 is periodic averaging bitwise; the outer Nesterov step and the delayed
// merge of the overlap against scalar references computed here (replica mean in double by plain
// MPI); the fragment plan and schedule (which tensors sync at which step); a non-finite
// pseudo-gradient on one rank makes every rank skip the outer step; the non-blocking allreduce
// against plain MPI and in the ledger.
#include "support/training.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/sync/diloco.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace lowsync::sync {
namespace {

using testing::synthetic_batch;
using testing::world_rank;
using testing::world_size;

config::Config make_cfg(std::vector<std::string> sets) {
  config::Config cfg;
  for (const auto& s : sets) cfg.set_text(s);
  return cfg;
}

// The replicas' mean in double, by plain MPI (the reference, independent of the Communicator).
std::vector<double> mean_over_ranks(std::span<const float> x) {
  std::vector<double> m(x.begin(), x.end());
  MPI_Allreduce(MPI_IN_PLACE, m.data(), static_cast<int>(m.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  for (double& v : m) v /= world_size();
  return m;
}

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

// A small training harness: the strategy's hooks as the learner calls them, with a callback
// before and after after_update (to inject faults and record references).
struct Harness {
  comm::Communicator comm;
  model::Model model;
  std::unique_ptr<optim::Optimizer> opt;
  std::unique_ptr<Strategy> strategy;
  StepContext ctx;
  Harness(const config::Config& cfg, bool deterministic = false)
      : comm(MPI_COMM_WORLD, {deterministic, 60.0}),
        model("mlp", 4, 11 + world_rank()),
        opt(optim::make_optimizer(cfg, model.num_params())),
        strategy(make_strategy(cfg)),
        ctx{0, comm, model, *opt, 0.0f} {
    strategy->on_start(ctx);
  }
  DilocoStrategy& diloco() { return dynamic_cast<DilocoStrategy&>(*strategy); }
  template <class Before, class After> void step(std::int64_t t, Before before, After after) {
    ctx.step = t;
    const auto b = synthetic_batch(7, t, world_rank() * 4, 4);
    model.forward_backward(b.batch());
    strategy->after_backward(ctx);
    opt->step(model.params(), model.grads());
    before(t);
    strategy->after_update(ctx);
    after(t);
  }
  void step(std::int64_t t) {
    step(t, [](std::int64_t) {}, [](std::int64_t) {});
  }
};

TEST(Diloco, OuterLrOneMomentumZeroIsPeriodicAveragingBitwise) {
  const std::vector<std::string> common = {"optim.name=adamw", "optim.lr=0.003", "sync.period=3"};
  auto with = [&](std::vector<std::string> extra) {
    auto sets = common;
    sets.insert(sets.end(), extra.begin(), extra.end());
    return make_cfg(sets);
  };
  Harness periodic(with({"sync.strategy=periodic"}));
  Harness diloco(with({"sync.strategy=diloco", "sync.diloco.outer_lr=1", "sync.diloco.outer_momentum=0"}));
  Harness nesterov(with({"sync.strategy=diloco"}));  // the defaults 0.7 / 0.9: must differ
  for (int t = 1; t <= 7; ++t) {
    periodic.step(t);
    diloco.step(t);
    nesterov.step(t);
  }
  EXPECT_TRUE(bitwise_equal(periodic.model.params(), diloco.model.params()));
  EXPECT_EQ(diloco.strategy->syncs(), 2);
  if (world_size() > 1) {
    EXPECT_FALSE(bitwise_equal(periodic.model.params(), nesterov.model.params()));
  }
}

TEST(Diloco, OuterNesterovStepMatchesScalarReference) {
  // The element-wise kernels on chosen numbers, three steps in a row (momentum carried).
  const float lr = 0.7f, mu = 0.9f;
  std::vector<float> g = {1.0f, -2.0f, 0.5f, 3.0f}, m(4, 0.0f), g2 = g, m2 = m;
  std::vector<double> gr(g.begin(), g.end()), mr(4, 0.0);
  const std::vector<std::vector<float>> means = {{0.9f, -1.5f, 0.5f, 2.0f}, {0.7f, -1.0f, 0.6f, 2.5f}, {0.2f, -0.4f, 0.1f, 1.0f}};
  for (const auto& mean : means) {
    std::vector<float> delta(4);
    for (int i = 0; i < 4; ++i) delta[i] = g2[i] - mean[i];
    outer_step_from_mean(g, m, mean, lr, mu);
    outer_step_from_delta(g2, m2, delta, lr, mu);
    for (int i = 0; i < 4; ++i) {
      const double d = gr[i] - mean[i];
      mr[i] = 0.9 * mr[i] + d;
      gr[i] = gr[i] - 0.7 * (d + 0.9 * mr[i]);
      EXPECT_NEAR(g[i], gr[i], 1e-5) << i;
      EXPECT_NEAR(m[i], mr[i], 1e-5) << i;
      EXPECT_NEAR(g2[i], gr[i], 1e-5) << i;
    }
  }
  // The first step by hand: theta 1, mean 0.9: Delta 0.1, m 0.1, theta = 1 - 0.7 (0.1 + 0.09) = 0.867.
  {
    std::vector<float> g1 = {1.0f}, m1 = {0.0f};
    const std::vector<float> mean1 = {0.9f};
    outer_step_from_mean(g1, m1, mean1, lr, mu);
    EXPECT_NEAR(g1[0], 0.867, 1e-6);
    EXPECT_NEAR(m1[0], 0.1, 1e-6);
  }

  // In training: theta_g after each round against the reference fed with the replicas' mean.
  Harness h(make_cfg({"sync.strategy=diloco", "optim.name=adamw", "optim.lr=0.003", "sync.period=2"}));
  const auto& start = h.diloco().global_model();
  std::vector<double> ref(start.begin(), start.end()), mom(ref.size(), 0.0);
  for (int t = 1; t <= 6; ++t) {
    h.step(
        t,
        [&](std::int64_t s) {
          if (s % 2 != 0) return;
          const auto mean = mean_over_ranks(h.model.params());
          for (std::size_t i = 0; i < ref.size(); ++i) {
            const double d = ref[i] - mean[i];
            mom[i] = 0.9 * mom[i] + d;
            ref[i] -= 0.7 * (d + 0.9 * mom[i]);
          }
        },
        [&](std::int64_t s) {
          if (s % 2 != 0) return;
          const auto g = h.diloco().global_model();
          double worst = 0.0;
          for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(g[i] - ref[i]));
          EXPECT_LT(worst, 2e-6) << "step " << s;
          EXPECT_TRUE(bitwise_equal(h.model.params(), g)) << "replica = theta_g after the round, step " << s;
        });
  }
}

TEST(Diloco, FragmentPlanAndScheduleWhichTensorsSyncWhen) {
  // The MLP's tensors: fc1 w/b, fc2 w/b, fc3 w/b. Whole tensors, contiguous, largest minimised.
  const std::vector<std::size_t> mlp = {401408, 512, 131072, 256, 2560, 10};
  const auto four = plan_fragments(mlp, 4, 8);
  ASSERT_EQ(four.size(), 4U);
  // fc1.weight alone is 75% of the model: it is the largest fragment whatever the cut.
  EXPECT_EQ(four[0].first_tensor, 0U);
  EXPECT_EQ(four[0].num_tensors, 1U);
  EXPECT_EQ(four[0].count, 401408U);
  std::size_t covered = 0;
  for (std::size_t f = 0; f < 4; ++f) {
    EXPECT_EQ(four[f].offset, covered);
    EXPECT_GE(four[f].num_tensors, 1U);
    covered += four[f].count;
    EXPECT_EQ(four[f].phase, static_cast<std::int64_t>(f) * 2);  // floor(f * 8 / 4)
  }
  EXPECT_EQ(covered, 535818U);
  const std::vector<std::size_t> even = {10, 10, 10, 10, 10, 10};
  const auto three = plan_fragments(even, 3, 50);
  for (const auto& f : three) EXPECT_EQ(f.num_tensors, 2U);
  EXPECT_EQ(three[1].phase, 16);  // floor(50 / 3)
  EXPECT_EQ(three[2].phase, 33);
  EXPECT_THROW(plan_fragments(mlp, 7, 50), Error);  // more fragments than tensors
  EXPECT_THROW(plan_fragments(mlp, 4, 3), Error);   // more fragments than steps per round

  // Which fragment syncs at which step (H = 8, F = 4): an exhaustive table.
  const std::vector<std::vector<int>> expected = {{8, 16, 24}, {2, 10, 18}, {4, 12, 20}, {6, 14, 22}};
  for (std::size_t f = 0; f < 4; ++f) {
    std::vector<int> got;
    for (int t = 1; t <= 24; ++t)
      if (fragment_syncs_at(four[f], 8, t)) got.push_back(t);
    EXPECT_EQ(got, expected[f]) << "fragment " << f;
  }

  // In training: after each step, a fragment's replica equals theta_g (bitwise) exactly when the
  // fragment synced at that step (the replicas train on between rounds, so it differs otherwise).
  Harness h(make_cfg({"sync.strategy=diloco", "optim.name=adamw", "optim.lr=0.003", "sync.period=8",
                      "sync.diloco.fragments=4"}));
  const auto& frags = h.diloco().fragments();
  for (int t = 1; t <= 16; ++t) {
    h.step(t);
    for (std::size_t f = 0; f < frags.size(); ++f) {
      const auto p = h.model.params().subspan(frags[f].offset, frags[f].count);
      const auto g = h.diloco().global_model().subspan(frags[f].offset, frags[f].count);
      const bool synced = std::find(expected[f].begin(), expected[f].end(), t) != expected[f].end();
      EXPECT_EQ(bitwise_equal(p, g), synced) << "step " << t << " fragment " << f;
    }
  }
  EXPECT_EQ(h.strategy->syncs(), 8);  // 2 + 2 + 2 + 2 rounds in 16 steps
}

TEST(Diloco, OverlapMatchesScalarReferenceOfTheDelayedMerge) {
  // H = 4, tau = 2, alpha = 0.25, one fragment: the round started at t0 = 4 lands at 6.
  const double lr = 0.7, mu = 0.9, alpha = 0.25;
  Harness h(make_cfg({"sync.strategy=diloco", "optim.name=adamw", "optim.lr=0.003", "sync.period=4",
                      "sync.diloco.overlap=2", "sync.diloco.mix=0.25"}));
  const auto& start = h.diloco().global_model();
  std::vector<double> ref(start.begin(), start.end()), mom(ref.size(), 0.0);
  std::vector<float> global_before;
  std::vector<float> local_at_merge;
  for (int t = 1; t <= 10; ++t) {
    h.step(
        t,
        [&](std::int64_t s) {
          global_before.assign(h.diloco().global_model().begin(), h.diloco().global_model().end());
          if (s % 4 == 0) {  // the round starts: the reference pseudo-gradient of theta_k(t0)
            const auto mean = mean_over_ranks(h.model.params());
            for (std::size_t i = 0; i < ref.size(); ++i) {
              const double d = ref[i] - mean[i];
              mom[i] = mu * mom[i] + d;
              ref[i] -= lr * (d + mu * mom[i]);
            }
          }
          if (s % 4 == 2) local_at_merge.assign(h.model.params().begin(), h.model.params().end());
        },
        [&](std::int64_t s) {
          const auto g = h.diloco().global_model();
          if (s % 4 != 2 || s < 6) {  // no merge lands: theta_g untouched
            EXPECT_TRUE(bitwise_equal(g, global_before)) << "step " << s;
            return;
          }
          double worst_g = 0.0, worst_p = 0.0;
          const auto p = h.model.params();
          for (std::size_t i = 0; i < ref.size(); ++i) {
            worst_g = std::max(worst_g, std::abs(g[i] - ref[i]));
            const double merged = alpha * local_at_merge[i] + (1.0 - alpha) * ref[i];
            worst_p = std::max(worst_p, std::abs(p[i] - merged));
          }
          EXPECT_LT(worst_g, 2e-6) << "step " << s;
          EXPECT_LT(worst_p, 2e-6) << "step " << s;
        });
  }
  // Rounds started at 4 and 8 (landed at 6 and 10): two allreduces in the ledger, d floats each.
  const auto e = h.comm.ledger().by_traffic("diloco");
  EXPECT_EQ(e.calls, 2U);
  EXPECT_EQ(e.payload_bytes, 2U * 4U * h.model.num_params());
  EXPECT_EQ(h.strategy->syncs(), 2);
}

TEST(Diloco, NonFinitePseudoGradientOnOneRankSkipsTheOuterStepEverywhere) {
  for (const char* wire : {"precision.wire=fp32", "precision.wire=bf16"}) {
    for (const char* overlap : {"sync.diloco.overlap=0", "sync.diloco.overlap=1"}) {
      SCOPED_TRACE(std::string(wire) + " " + overlap);
      Harness h(make_cfg({"sync.strategy=diloco", "optim.name=adamw", "optim.lr=0.003", "sync.period=2", wire, overlap}));
      const bool delayed = std::string(overlap).back() == '1';
      const std::int64_t lands = delayed ? 5 : 4;  // the round started at step 4
      std::vector<float> global_before;
      for (int t = 1; t <= 5; ++t) {
        h.step(
            t,
            [&](std::int64_t s) {
              global_before.assign(h.diloco().global_model().begin(), h.diloco().global_model().end());
              if (s == 4 && world_rank() == world_size() - 1) h.model.params()[123] = std::numeric_limits<float>::quiet_NaN();
            },
            [&](std::int64_t s) {
              if (s != lands) return;
              EXPECT_EQ(h.diloco().outer_skipped(), 1);
              EXPECT_TRUE(bitwise_equal(h.diloco().global_model(), global_before));
              if (!delayed) {
                EXPECT_TRUE(bitwise_equal(h.model.params(), h.diloco().global_model()));
              }
            });
      }
      // The skip was agreed: every rank counts it, every replica is finite again.
      EXPECT_TRUE(testing::same_value_on_all_ranks(h.diloco().outer_skipped()));
      EXPECT_EQ(h.diloco().outer_skipped(), 1);
      EXPECT_TRUE(std::all_of(h.model.params().begin(), h.model.params().end(), [](float v) { return std::isfinite(v); }));
    }
  }
}

TEST(Diloco, NonBlockingAllreduceEqualsPlainMpiAndIsCounted) {
  comm::Communicator comm(MPI_COMM_WORLD, {false, 60.0});
  std::vector<float> a(1000), b(7);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(world_rank() + 1) * 0.001f * static_cast<float>(i);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(world_rank()) - static_cast<float>(i);
  std::vector<float> ra(a.size()), rb(b.size()), ea = a, eb = b;
  MPI_Allreduce(MPI_IN_PLACE, ea.data(), static_cast<int>(ea.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, eb.data(), static_cast<int>(eb.size()), MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
  // Two in flight at once, a blocking collective between start and wait.
  auto pa = comm.start_allreduce(std::span<const float>(a), std::span<float>(ra), comm::ReduceOp::sum, "test_nb");
  auto pb = comm.start_allreduce(std::span<const float>(b), std::span<float>(rb), comm::ReduceOp::max, "test_nb");
  EXPECT_TRUE(pa.active());
  EXPECT_FALSE(comm.any(false));
  comm.wait(pa);
  comm.wait(pb);
  EXPECT_FALSE(pa.active());
  EXPECT_EQ(ra, ea);
  EXPECT_EQ(rb, eb);
  EXPECT_THROW(comm.wait(pa), Error);  // nothing in flight
  const auto e = comm.ledger().by_traffic("test_nb");
  EXPECT_EQ(e.calls, 2U);
  EXPECT_EQ(e.payload_bytes, 4U * 1007U);
  EXPECT_EQ(e.wire_bytes, comm::wire_bytes(comm::Collective::allreduce, 4000, world_size(), false) +
                              comm::wire_bytes(comm::Collective::allreduce, 28, world_size(), false));
}

}  // namespace
}  // namespace lowsync::sync
