// Periodic averaging and FDA under native 16-bit storage (precision.storage = native; README
// "Precision"): a periodic sync on a real bf16/fp16 model equals the rank-order fp32 mean of the
// gathered u16 replicas, rounded back (parameters and AdamW state), and leaves every rank bitwise
// identical; native FDA takes the same decisions with bitwise the same V^ as float-storage FDA
// on the same 16-bit-grid values, for every estimator, and its u16 w0 is the float w0 rounded.
// ranks: 1 2 3 4
#include "support/training.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/sync/fda.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace lowsync::sync {
namespace {

using testing::same_value_on_all_ranks;
using testing::synthetic_batch;
using testing::world_rank;
using testing::world_size;

// Every rank's x, concatenated in rank order, by plain MPI (independent of the communicator).
std::vector<std::uint16_t> gather_all(std::span<const std::uint16_t> x) {
  std::vector<std::uint16_t> all(x.size() * static_cast<std::size_t>(world_size()));
  MPI_Allgather(x.data(), static_cast<int>(x.size()), MPI_UINT16_T, all.data(), static_cast<int>(x.size()),
                MPI_UINT16_T, MPI_COMM_WORLD);
  return all;
}

// True when every rank holds bitwise rank 0's x.
bool same_on_all_ranks(std::span<const std::uint16_t> x) {
  std::vector<std::uint16_t> root(x.begin(), x.end());
  MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_UINT16_T, 0, MPI_COMM_WORLD);
  int differ = std::memcmp(root.data(), x.data(), x.size() * sizeof(std::uint16_t)) != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &differ, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return differ == 0;
}


// The mean a native sync must produce, from the gathered replicas: decode, sum in fp32 in rank
// order, times the float 1/K, round to nearest-even. The fp32 wire's deterministic allreduce
// starts its sum from rank 0's value; the 16-bit wire's from +0 (which turns -0 into +0).
std::vector<std::uint16_t> rank_order_mean(std::span<const std::uint16_t> all, std::size_t d, bool bf16,
                                           bool from_zero) {
  const int world = world_size();
  std::vector<float> sum(d), one(d);
  for (int r = 0; r < world; ++r) {
    tensor::decode_16bit(all.subspan(static_cast<std::size_t>(r) * d, d), one, bf16);
    for (std::size_t i = 0; i < d; ++i) sum[i] = (r == 0 && !from_zero) ? one[i] : sum[i] + one[i];
  }
  const float inv = 1.0f / static_cast<float>(world);
  for (float& x : sum) x *= inv;
  std::vector<std::uint16_t> out(d);
  tensor::encode_16bit(sum, out, bf16);
  return out;
}

TEST(NativePeriodic, SyncEqualsTheRankOrderMeanAndRanksEndIdentical) {
  const int world = world_size(), rank = world_rank();
  const int batch = 8, period = 3, steps = 6;
  for (const model::Compute compute : {model::Compute::bf16, model::Compute::fp16}) {
    const bool bf16 = compute == model::Compute::bf16;
    for (const WireFormat wire : {WireFormat::fp32, bf16 ? WireFormat::bf16 : WireFormat::fp16}) {
      SCOPED_TRACE(std::string(bf16 ? "bf16" : "fp16") + " compute, " + std::string(wire_format_name(wire)) + " wire");
      comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});  // fp32 wire: rank-order sums
      config::Config cfg;
      cfg.set_text("optim.name=adamw");
      cfg.set_text("optim.lr=0.002");
      cfg.set_text(std::string("precision.compute=") + (bf16 ? "bf16" : "fp16"));
      // Different seeds: on_start must broadcast rank 0's replica.
      model::Model model("mlp", batch, 11 + static_cast<std::uint64_t>(rank), compute, model::Storage::native16);
      auto opt = optim::make_optimizer(cfg, model.num_params(), true);
      PeriodicStrategy strategy(period, true, wire);
      StepContext ctx{0, comm, model, *opt, 0.0f};
      strategy.on_start(ctx);
      ASSERT_TRUE(same_on_all_ranks(model.params16()));
      EXPECT_TRUE(strategy.root_state_buffers().empty());  // no fp32 server model
      const std::size_t d = model.num_params();
      const auto model_before = comm.ledger().by_traffic("model");
      for (int step = 1; step <= steps; ++step) {
        ctx.step = step;
        const auto b = synthetic_batch(5, step, rank * batch, batch);
        model.forward_backward(b.batch());
        opt->step(model.param_store(), model.grad_store());
        const bool sync = step % period == 0;
        std::vector<std::uint16_t> all_params, all_m;
        if (sync) {
          all_params = gather_all(model.params16());
          all_m = gather_all(opt->state().at(0).data.bits());
        }
        strategy.after_update(ctx);
        if (!sync) {
          // Replicas see different data between syncs.
          if (world > 1 && step == 1) {
            EXPECT_FALSE(same_on_all_ranks(model.params16()));
          }
          continue;
        }
        const auto expected = rank_order_mean(all_params, d, bf16, wire != WireFormat::fp32);
        ASSERT_EQ(0, std::memcmp(expected.data(), model.params16().data(), d * sizeof(std::uint16_t)))
            << "step " << step;
        // The optimizer state travels in fp32 whatever the wire.
        const auto expected_m = rank_order_mean(all_m, d, bf16, false);
        ASSERT_EQ(0, std::memcmp(expected_m.data(), opt->state().at(0).data.bits().data(), d * sizeof(std::uint16_t)));
        ASSERT_TRUE(same_on_all_ranks(model.params16())) << "step " << step;
        for (const auto& s : opt->state()) ASSERT_TRUE(same_on_all_ranks(s.data.bits())) << s.name;
      }
      EXPECT_EQ(strategy.syncs(), steps / period);
      // fp32 wire: 4 bytes a value into the allreduce. 16-bit wire: the finite flag, then per chunk
      // the alltoall of the padded chunk and the allgather of this rank's shard, 2 bytes a value.
      const auto sent = comm.ledger().by_traffic("model");
      std::uint64_t per_sync = 4 * d;
      if (wire != WireFormat::fp32) {
        const auto K = static_cast<std::size_t>(world);
        per_sync = 4;
        for (std::size_t first = 0; first < d; first += kNative16Chunk) {
          const std::size_t shard = (std::min(kNative16Chunk, d - first) + K - 1) / K;
          per_sync += 2 * (shard * K + shard);
        }
      }
      EXPECT_EQ(sent.payload_bytes - model_before.payload_bytes, (steps / period) * per_sync);
    }
  }
}

constexpr std::size_t kNumParams = 3 * fda::kStateChunk + 101;  // several decode chunks

// A local "training step" on the 16-bit grid: rank r moves by 0.01 (r + 1) times a per-step
// factor in [0.5, 1.5] (so some steps stay under the threshold and some cross it), skipping
// every fourth step, then rounds.
void local_move16(std::span<std::uint16_t> params, bool bf16, std::int64_t step, int rank) {
  if ((step + rank) % 4 == 0) return;
  const std::uint64_t key = stream_key({23, static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(rank)});
  const double scale = 0.01 * (rank + 1) * (0.5 + uniform01(key, 0));
  std::vector<float> x(params.size());
  tensor::decode_16bit(params, x, bf16);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += static_cast<float>(scale * normal01(key, i + 1));
  tensor::encode_16bit(x, params, bf16);
}

std::vector<float> decoded(std::span<const std::uint16_t> h, bool bf16) {
  std::vector<float> out(h.size());
  tensor::decode_16bit(h, out, bf16);
  return out;
}

std::vector<std::uint16_t> encoded(std::span<const float> x, bool bf16) {
  std::vector<std::uint16_t> out(x.size());
  tensor::encode_16bit(x, out, bf16);
  return out;
}

TEST(NativeFda, SameDecisionsAndEstimatesAsFloatStorageOnTheSameValues) {
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
  const int world = comm.size(), rank = comm.rank();
  for (const bool bf16 : {true, false}) {
    for (fda::Estimator kind : {fda::Estimator::naive, fda::Estimator::linear, fda::Estimator::sketch}) {
      SCOPED_TRACE(std::string(bf16 ? "bf16 " : "fp16 ") + std::string(fda::estimator_name(kind)));
      FdaOptions o;
      o.estimator = {kind, 5, 64};
      // About two steps of the mean drift's squared norm: both outcomes occur.
      const double mover = 0.01 * (world + 1) / 2.0;
      o.threshold = 2.0 * mover * mover * kNumParams;
      o.seed = 17;
      FdaStrategy native(o), reference(o);
      std::vector<std::uint16_t> p16(kNumParams);
      {
        const std::uint64_t key = stream_key({3, 0xf0da});
        std::vector<float> init(kNumParams);
        for (std::size_t i = 0; i < init.size(); ++i) init[i] = normal01(key, i);
        tensor::encode_16bit(init, p16, bf16);
      }
      native.begin({p16, bf16});
      std::vector<float> start = decoded(p16, bf16);
      reference.begin(start);
      ASSERT_TRUE(native.w0().empty());  // no fp32 copy of the model
      int synced_steps = 0;
      const int steps = 24;
      for (std::int64_t step = 1; step <= steps; ++step) {
        local_move16(p16, bf16, step, rank);
        std::vector<float> pf = decoded(p16, bf16);  // the float run holds the same values
        const bool synced_ref = reference.step(comm, step, pf);
        const bool synced = native.step(comm, step, {p16, bf16});
        ASSERT_EQ(synced, synced_ref) << "step " << step;
        // Bitwise: the same local states, summed by the same deterministic allreduce.
        ASSERT_EQ(native.last_estimate(), reference.last_estimate()) << "step " << step;
        ASSERT_TRUE(same_value_on_all_ranks(native.last_estimate()));
        ASSERT_EQ(native.syncs(), reference.syncs());
        if (!synced) continue;
        ++synced_steps;
        // Both averaged in fp32 with the same sums; native stores the mean rounded to 16 bits,
        // and that is its w0 and what every rank holds.
        ASSERT_EQ(encoded(pf, bf16), std::vector<std::uint16_t>(p16.begin(), p16.end())) << "step " << step;
        ASSERT_EQ(encoded(reference.w0(), bf16), std::vector<std::uint16_t>(native.w0_16().begin(), native.w0_16().end()));
        ASSERT_TRUE(std::equal(p16.begin(), p16.end(), native.w0_16().begin()));
        ASSERT_TRUE(same_on_all_ranks(p16));
        // Float storage rounds its parameters to the compute grid after the update (trainer), and
        // here w0 and w0_prev too, so both runs go on from the same values; xi must then agree.
        const auto w0 = decoded(native.w0_16(), bf16), w0_prev = decoded(native.w0_prev16(), bf16);
        std::copy(w0.begin(), w0.end(), reference.w0().begin());
        std::copy(w0_prev.begin(), w0_prev.end(), reference.w0_prev().begin());
        if (kind == fda::Estimator::linear) {
          fda::last_move_direction(reference.w0(), reference.w0_prev(), o.seed, reference.xi());
          ASSERT_EQ(0, std::memcmp(reference.xi().data(), native.xi().data(), kNumParams * sizeof(float)));
        }
      }
      // The threshold sits where some steps cross it and some do not (the sketch subtracts most
      // of the shared move, so on one rank it rarely syncs).
      if (kind != fda::Estimator::sketch || world > 1) {
        EXPECT_GT(synced_steps, 0);
        EXPECT_LT(synced_steps, steps);
      }
    }
  }
}

TEST(NativeFda, SixteenBitWireSyncIsTheRankOrderMean) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int rank = comm.rank();
  for (const bool bf16 : {true, false}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp16");
    FdaOptions o;
    o.estimator = {fda::Estimator::linear, 5, 64};
    o.threshold = 0.0;  // every step with any drift syncs
    o.wire = bf16 ? WireFormat::bf16 : WireFormat::fp16;
    FdaStrategy fda(o);
    std::vector<std::uint16_t> p16(kNumParams, 0);
    fda.begin({p16, bf16});
    EXPECT_TRUE(fda.root_state_buffers().empty());
    for (std::int64_t step = 1; step <= 3; ++step) {
      local_move16(p16, bf16, step * 4 + 1, rank);  // (step + rank) % 4 != 0 on rank 0: moves
      const auto all = gather_all(p16);
      ASSERT_TRUE(fda.step(comm, step, {p16, bf16}));
      const auto expected = rank_order_mean(all, kNumParams, bf16, true);
      ASSERT_EQ(expected, std::vector<std::uint16_t>(p16.begin(), p16.end())) << "step " << step;
      ASSERT_TRUE(std::equal(p16.begin(), p16.end(), fda.w0_16().begin()));
    }
    EXPECT_EQ(fda.syncs(), 3);
    // Other wires do not apply to native storage: refused naming the key.
    FdaOptions fp8 = o;
    fp8.wire = WireFormat::fp8_e4m3;
    FdaStrategy refused(fp8);
    try {
      refused.begin({p16, bf16});
      FAIL() << "fp8 wire accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("precision.wire"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace lowsync::sync
