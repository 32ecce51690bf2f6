// FDA strategy (ALGORITHMS.md section 4) on K ranks: every rank takes the same decision every
// step while the local states differ by orders of magnitude, and V^ equals the estimator applied
// to all ranks' parameters gathered with plain MPI; Theta = 0 syncs every step (the average
// checked against the gathered mean), Theta = +inf never syncs; a non-finite state forces a sync
// and fails on every rank; the config keys and the Strategy hooks on a real model.
// ranks: 1 2 3 4
#include "lowsync/sync/fda.hpp"

#include "support/training.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace lowsync::sync {
namespace {

using testing::same_value_on_all_ranks;

constexpr std::size_t kNumParams = 257;

// Every rank's x, concatenated in rank order, by plain MPI (independent of the communicator).
std::vector<float> gather_all(std::span<const float> x) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  std::vector<float> all(x.size() * static_cast<std::size_t>(world));
  MPI_Allgather(x.data(), static_cast<int>(x.size()), MPI_FLOAT, all.data(),
                static_cast<int>(x.size()), MPI_FLOAT, MPI_COMM_WORLD);
  return all;
}


// Replicas start identical (drawn from a key shared by all ranks).
std::vector<float> initial_params(std::uint64_t seed) {
  std::vector<float> p(kNumParams);
  const std::uint64_t key = stream_key({seed, 0xf0da});
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = normal01(key, i);
  return p;
}

// A local "training step" whose size differs wildly between ranks: rank r moves by
// 10^(2r - 4) times a per-step factor in [0.1, 10], and stands still every fifth step.
void local_move(std::span<float> params, std::int64_t step, int rank, std::uint64_t seed) {
  if ((step + rank) % 5 == 0) return;
  const std::uint64_t key = stream_key({seed, static_cast<std::uint64_t>(step),
                                        static_cast<std::uint64_t>(rank)});
  const double scale = std::pow(10.0, 2.0 * rank - 4.0 + 2.0 * uniform01(key, 0) - 1.0);
  for (std::size_t i = 0; i < params.size(); ++i)
    params[i] += static_cast<float>(scale * normal01(key, i + 1));
}

FdaOptions options_for(fda::Estimator kind, double threshold) {
  FdaOptions o;
  o.estimator = {kind, 5, 64};
  o.threshold = threshold;
  o.seed = 17;
  return o;
}

// V^ recomputed from all ranks' parameters with the (unit-tested) estimator functions: the
// check that the strategy's allreduce sums the right states.
double reference_estimate(const FdaOptions& o, std::span<const float> all_params,
                          std::span<const float> w0, std::span<const float> xi, int world) {
  std::optional<fda::SketchHashes> hashes;
  if (o.estimator.kind == fda::Estimator::sketch)
    hashes.emplace(w0.size(), o.estimator.sketch_depth, o.estimator.sketch_width, o.seed);
  std::vector<double> sum(fda::state_size(o.estimator), 0.0), one(sum.size());
  for (int k = 0; k < world; ++k) {
    fda::local_state(o.estimator, all_params.subspan(k * w0.size(), w0.size()), w0, xi,
                     hashes ? &*hashes : nullptr, one);
    for (std::size_t j = 0; j < sum.size(); ++j) sum[j] += one[j];
  }
  return fda::variance_estimate(o.estimator, sum, world);
}

TEST(FdaStrategy, AllRanksTakeTheSameDecisionEveryStep) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int world = comm.size(), rank = comm.rank();
  for (fda::Estimator kind : {fda::Estimator::naive, fda::Estimator::linear, fda::Estimator::sketch}) {
    SCOPED_TRACE(std::string(fda::estimator_name(kind)));
    // Theta near three steps of the largest mover's naive drift, so both outcomes occur.
    const double big = std::pow(10.0, 2.0 * (world - 1) - 4.0);
    const FdaOptions o = options_for(kind, 3.0 * big * big * kNumParams / world);
    FdaStrategy fda(o);
    std::vector<float> params = initial_params(3);
    fda.begin(params);
    int synced_steps = 0;
    const int steps = 40;
    for (std::int64_t step = 1; step <= steps; ++step) {
      local_move(params, step, rank, 5);
      const std::vector<float> before = gather_all(params);
      const std::vector<float> w0(fda.w0().begin(), fda.w0().end());
      const std::vector<float> xi(fda.xi().begin(), fda.xi().end());
      const bool synced = fda.step(comm, step, params);

      ASSERT_TRUE(same_value_on_all_ranks(synced)) << "step " << step;
      ASSERT_TRUE(same_value_on_all_ranks(fda.syncs())) << "step " << step;
      ASSERT_TRUE(same_value_on_all_ranks(fda.last_estimate())) << "step " << step;
      const double ref = reference_estimate(o, before, w0, xi, world);
      // fp64 sums in another order: agree to 1e-9 of the drift scale (1/K) sum ||D_k||^2.
      const double scale = reference_estimate(options_for(fda::Estimator::naive, 0.0), before, w0,
                                              xi, world);
      ASSERT_NEAR(fda.last_estimate(), ref, 1e-9 * scale) << "step " << step;
      if (std::abs(ref - fda.threshold()) > 1e-9 * fda.threshold()) {
        ASSERT_EQ(synced, ref > fda.threshold()) << "step " << step;
      }
      synced_steps += synced;
      if (synced) {
        // Every replica now holds the mean of the gathered models, and w0 is that mean.
        for (std::size_t i = 0; i < kNumParams; ++i) {
          double mean = 0.0, scale = 0.0;
          for (int k = 0; k < world; ++k) {
            mean += before[k * kNumParams + i] / static_cast<double>(world);
            scale += std::abs(before[k * kNumParams + i]);
          }
          ASSERT_NEAR(params[i], mean, 1e-6 * scale + 1e-30) << "step " << step << " i " << i;
          ASSERT_EQ(fda.w0()[i], params[i]);
        }
      }
    }
    EXPECT_EQ(fda.syncs(), synced_steps);
    // Naive and linear see the full spread, so Theta is crossed on some steps and not others.
    // The sketch subtracts ~(1 - eps) of ||D_bar||^2, which for K = 1 leaves almost nothing.
    if (kind != fda::Estimator::sketch || world > 1) {
      EXPECT_GT(synced_steps, 0);
      EXPECT_LT(synced_steps, steps);
    }
  }
}

TEST(FdaStrategy, ThetaZeroSyncsEveryStep) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int world = comm.size(), rank = comm.rank();
  for (fda::Estimator kind : {fda::Estimator::naive, fda::Estimator::linear, fda::Estimator::sketch}) {
    SCOPED_TRACE(std::string(fda::estimator_name(kind)));
    // With K = 1 the true variance is 0 and the sketch may rightly estimate 0: no sync needed.
    if (kind == fda::Estimator::sketch && world == 1) continue;
    const FdaOptions o = options_for(kind, 0.0);
    FdaStrategy fda(o);
    std::vector<float> params = initial_params(4);
    fda.begin(params);
    const auto monitor_before = comm.ledger().by_traffic("fda_monitor");
    const auto model_before = comm.ledger().by_traffic("model");
    const int steps = 12;
    for (std::int64_t step = 1; step <= steps; ++step) {
      // Every rank moves every step here, by a rank-dependent amount.
      const std::uint64_t key = stream_key({9, static_cast<std::uint64_t>(step),
                                            static_cast<std::uint64_t>(rank)});
      for (std::size_t i = 0; i < params.size(); ++i)
        params[i] += 0.01f * static_cast<float>(rank + 1) * normal01(key, i);
      const std::vector<float> before = gather_all(params);
      ASSERT_TRUE(fda.step(comm, step, params)) << "step " << step;
      EXPECT_GT(fda.last_estimate(), 0.0);
      for (std::size_t i = 0; i < kNumParams; ++i) {
        double mean = 0.0, scale = 0.0;
        for (int k = 0; k < world; ++k) {
          mean += before[k * kNumParams + i] / static_cast<double>(world);
          scale += std::abs(before[k * kNumParams + i]);
        }
        ASSERT_NEAR(params[i], mean, 1e-6 * scale) << "step " << step;
      }
    }
    EXPECT_EQ(fda.syncs(), steps);
    // Bytes: two monitoring allreduces per step (state in fp64 + one int), one model allreduce
    // per sync.
    const auto monitor = comm.ledger().by_traffic("fda_monitor");
    const auto model = comm.ledger().by_traffic("model");
    EXPECT_EQ(monitor.calls - monitor_before.calls, 2u * steps);
    EXPECT_EQ(monitor.payload_bytes - monitor_before.payload_bytes,
              steps * (8 * fda::state_size(o.estimator) + 4));
    EXPECT_EQ(model.calls - model_before.calls, static_cast<std::uint64_t>(steps));
    EXPECT_EQ(model.payload_bytes - model_before.payload_bytes, steps * 4 * kNumParams);
  }
}

TEST(FdaStrategy, ThetaInfinityNeverSyncs) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int rank = comm.rank();
  for (fda::Estimator kind : {fda::Estimator::naive, fda::Estimator::linear, fda::Estimator::sketch}) {
    SCOPED_TRACE(std::string(fda::estimator_name(kind)));
    FdaStrategy fda(options_for(kind, std::numeric_limits<double>::infinity()));
    std::vector<float> params = initial_params(6);
    fda.begin(params);
    const std::vector<float> w0_start(fda.w0().begin(), fda.w0().end());
    const auto model_before = comm.ledger().by_traffic("model");
    for (std::int64_t step = 1; step <= 20; ++step) {
      local_move(params, step, rank, 7);
      const std::vector<float> mine = params;
      ASSERT_FALSE(fda.step(comm, step, params)) << "step " << step;
      ASSERT_EQ(params, mine);  // untouched
      ASSERT_TRUE(std::isfinite(fda.last_estimate()));
    }
    EXPECT_EQ(fda.syncs(), 0);
    EXPECT_EQ(comm.ledger().by_traffic("model").calls, model_before.calls);
    EXPECT_TRUE(std::equal(w0_start.begin(), w0_start.end(), fda.w0().begin()));
  }
}

TEST(FdaStrategy, NonFiniteStateForcesSyncAndFailsEverywhere) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int world = comm.size(), rank = comm.rank();
  FdaStrategy fda(options_for(fda::Estimator::linear, std::numeric_limits<double>::infinity()));
  std::vector<float> params = initial_params(8);
  fda.begin(params);
  const auto model_before = comm.ledger().by_traffic("model");
  if (rank == world - 1) params[5] = std::numeric_limits<float>::quiet_NaN();
  // Every rank throws at the same point (after the forced sync), so none is left waiting.
  EXPECT_THROW(fda.step(comm, 1, params), lowsync::Error);
  EXPECT_EQ(comm.ledger().by_traffic("model").calls, model_before.calls + 1);
  EXPECT_TRUE(std::isinf(fda.last_estimate()));
}

TEST(FdaStrategy, ReadsItsConfigKeys) {
  config::Config cfg;
  cfg.set_text("sync.strategy=fda");
  cfg.set_text("sync.fda.estimator=sketch");
  cfg.set_text("sync.fda.sketch_depth=3");
  cfg.set_text("sync.fda.sketch_width=100");
  cfg.set_text("sync.fda.threshold_per_param=2e-3");
  cfg.set_text("train.seed=42");
  FdaStrategy fda(cfg);
  EXPECT_EQ(fda.name(), "fda");
  EXPECT_EQ(fda.options().estimator.kind, fda::Estimator::sketch);
  EXPECT_EQ(fda.options().estimator.sketch_depth, 3);
  EXPECT_EQ(fda.options().estimator.sketch_width, 100);
  EXPECT_EQ(fda.options().seed, 42u);
  EXPECT_EQ(fda.options().estimator.sketch_eps, -1.0);  // default: 1.5 / sqrt(width)
  EXPECT_DOUBLE_EQ(fda::sketch_eps(fda.options().estimator), 0.15);
  std::vector<float> params(1000, 0.5f);
  fda.begin(params);
  EXPECT_DOUBLE_EQ(fda.threshold(), 2e-3 * 1000);  // threshold unset (-1): per-param rule
  EXPECT_TRUE(fda.xi().empty());

  cfg.set_text("sync.fda.threshold=7.5");
  cfg.set_text("sync.fda.estimator=linear");
  FdaStrategy absolute(cfg);
  absolute.begin(params);
  EXPECT_EQ(absolute.threshold(), 7.5);
  ASSERT_EQ(absolute.xi().size(), params.size());
  double norm2 = 0.0;
  for (float x : absolute.xi()) norm2 += static_cast<double>(x) * x;
  EXPECT_NEAR(norm2, 1.0, 1e-6);  // first round: the shared Gaussian
  EXPECT_EQ(std::vector<float>(absolute.xi().begin(), absolute.xi().end()),
            fda::shared_gaussian_unit(params.size(), 42));

  const std::vector<std::string> names = absolute.metric_names();
  ASSERT_EQ(names.size(), absolute.metric_values().size());
  EXPECT_EQ(names[0], "fda_vhat");

  cfg.set_text("sync.fda.sketch_eps=0.063");  // the spec's 1/sqrt(250)
  EXPECT_EQ(FdaStrategy(cfg).options().estimator.sketch_eps, 0.063);
  EXPECT_THROW(cfg.set_text("sync.fda.sketch_eps=-2"), lowsync::Error);

  // Beyond the 15-bit bucket codes: the schema refuses it, naming the key.
  EXPECT_THROW(cfg.set_text("sync.fda.sketch_width=40000"), lowsync::Error);
}

TEST(FdaStrategy, HooksOnARealModel) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int world = comm.size(), rank = comm.rank();
  config::Config cfg;
  cfg.set_text("sync.strategy=fda");
  cfg.set_text("sync.fda.threshold=0");
  model::Model model("mlp", 8, 100 + static_cast<std::uint64_t>(rank));  // replicas differ
  auto optimizer = optim::make_optimizer(cfg, model.num_params());
  StepContext ctx{1, comm, model, *optimizer};
  FdaStrategy fda(cfg);
  fda.on_start(ctx);  // broadcast from rank 0, then w0 = params
  const std::vector<float> rank0 = gather_all(model.params());
  for (int k = 1; k < world; ++k)
    ASSERT_TRUE(std::equal(rank0.begin(), rank0.begin() + model.num_params(),
                           rank0.begin() + k * model.num_params()));
  EXPECT_TRUE(std::equal(fda.w0().begin(), fda.w0().end(), model.params().begin()));
  EXPECT_DOUBLE_EQ(fda.threshold(), 0.0);

  // One rank-dependent move, then after_update averages (Theta = 0).
  model.params()[0] += static_cast<float>(rank + 1);
  fda.after_update(ctx);
  EXPECT_EQ(fda.syncs(), 1);
  const float expected = fda.w0_prev()[0] + static_cast<float>(world + 1) / 2.0f;
  EXPECT_NEAR(model.params()[0], expected, 1e-5f * (1.0f + std::abs(expected)));
  EXPECT_TRUE(same_value_on_all_ranks(model.params()[0]));
}

}  // namespace
}  // namespace lowsync::sync
