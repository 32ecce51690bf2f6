// DeMo strategy (ALGORITHMS.md section 5) on K ranks: two full steps against the fp64 scalar
// reference (tests/support/reference_demo.hpp, all K ranks simulated on every rank), replicas
// bitwise identical after many steps, the checksum catching a diverged replica, and a
// non-finite gradient skipping the step everywhere. Driven by synthetic tensors and gradients
// through DemoStrategy::step (what after_backward calls), so no model is needed.
// ranks: 1 3 4
#include "lowsync/sync/demo.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/error.hpp"

#include "../support/reference_demo.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace lowsync::sync {
namespace {

namespace ref = lowsync::reference;

// SplitMix64: a value in [-1, 1) for (seed, rank, step, i), the same on every rank that asks.
float synthetic(std::uint64_t seed, std::uint64_t rank, std::uint64_t step, std::uint64_t i) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + rank * 0xbf58476d1ce4e5b9ull +
                    step * 0x94d049bb133111ebull + i + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(static_cast<double>(z >> 40) / static_cast<double>(1ull << 23) - 1.0);
}

// Tensors laid out back to back in one flat buffer, like model::Model's.
std::vector<model::ParamInfo> layout(const std::vector<std::vector<std::int64_t>>& shapes) {
  std::vector<model::ParamInfo> infos;
  std::size_t offset = 0;
  for (std::size_t t = 0; t < shapes.size(); ++t) {
    std::size_t count = 1;
    for (const std::int64_t d : shapes[t]) count *= static_cast<std::size_t>(d);
    infos.push_back({"t" + std::to_string(t), shapes[t], offset, count});
    offset += count;
  }
  return infos;
}

std::size_t total(const std::vector<model::ParamInfo>& infos) {
  return infos.back().offset + infos.back().count;
}

// Mixed shapes: 2-D, 1-D, conv (flattened to 4 x 18), a dense one (11 is prime > chunk 8) and a
// tensor smaller than topk.
const std::vector<std::vector<std::int64_t>> kSmallShapes = {{12, 20}, {20}, {4, 2, 3, 3}, {2, 11}, {3}};

TEST(DemoStrategy, TwoStepsMatchScalarReference) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int world = comm.size(), rank = comm.rank();
  const std::vector<model::ParamInfo> infos = layout(kSmallShapes);
  const std::size_t n = total(infos);
  DemoOptions options;
  options.weight_decay = 0.1;
  options.beta = 0.9;
  options.topk = 4;
  options.chunk = 8;
  options.check_every = 1;
  const double lr = 0.01;
  DemoStrategy demo(options);

  std::vector<float> params(n), grads(n);
  std::vector<double> ref_params(n);
  for (std::size_t i = 0; i < n; ++i) ref_params[i] = params[i] = synthetic(1, 0, 0, i);
  std::vector<std::vector<double>> ref_deltas(world, std::vector<double>(n, 0.0));
  std::vector<ref::DemoTensor> ref_tensors;
  for (const auto& info : infos) ref_tensors.push_back({info.shape, info.offset});

  for (std::int64_t step = 1; step <= 2; ++step) {
    std::vector<std::vector<double>> ref_grads(world, std::vector<double>(n));
    for (int r = 0; r < world; ++r)
      for (std::size_t i = 0; i < n; ++i) ref_grads[r][i] = synthetic(2, r, step, i);
    for (std::size_t i = 0; i < n; ++i) grads[i] = synthetic(2, rank, step, i);

    ASSERT_TRUE(demo.step(comm, infos, params, grads, lr, step));
    ref::demo_step(ref_tensors, ref_params, ref_deltas, ref_grads, lr, options.weight_decay,
                   options.beta, options.chunk, options.topk);

    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(params[i], ref_params[i], 1e-6) << "param " << i << " step " << step;
      ASSERT_NEAR(demo.delta()[i], ref_deltas[rank][i], 1e-6) << "delta " << i << " step " << step;
    }
  }
  // Sanity: the step moved every parameter by about lr (sign step) or lr*wd-scaled amounts.
  std::size_t moved = 0;
  for (std::size_t i = 0; i < n; ++i) moved += std::fabs(params[i] - synthetic(1, 0, 0, i)) > 1e-3 ? 1 : 0;
  EXPECT_GT(moved, n / 2);
  EXPECT_EQ(demo.syncs(), 2);
  // Payload: sparse (8*4 + 4*4 + 3*4 + 3) * (u16 + fp32) + dense 22 * fp32.
  const std::size_t bytes = (8 * 4 + 4 * 4 + 3 * 4 + 3) * 6 + 22 * 4;
  ASSERT_NE(demo.codec(), nullptr);
  EXPECT_EQ(demo.codec()->block_bytes(), bytes);
  EXPECT_EQ(demo.metric_values().at(0), 8 * 4 + 4 * 4 + 3 * 4 + 3 + 22);
  EXPECT_EQ(comm.ledger().by_traffic("demo").calls, 2u);
  EXPECT_EQ(comm.ledger().by_traffic("demo").payload_bytes, 2 * bytes);
}

TEST(DemoStrategy, ReplicasBitwiseIdenticalAfterManySteps) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const int world = comm.size(), rank = comm.rank();
  // Default chunk/topk on realistic shapes, bf16 values, u16 indices.
  const std::vector<model::ParamInfo> infos = layout({{128, 200}, {128}, {16, 4, 5, 5}, {67}, {10, 128}});
  const std::size_t n = total(infos);
  DemoOptions options;
  options.weight_decay = 0.01;
  options.wire.value = DType::bf16;
  options.check_every = 10;  // the strategy's own checksum runs 6 times too
  DemoStrategy demo(options);

  std::vector<float> params(n), grads(n);
  for (std::size_t i = 0; i < n; ++i) params[i] = synthetic(3, 0, 0, i);
  const std::vector<float> start = params;
  for (std::int64_t step = 1; step <= 60; ++step) {
    for (std::size_t i = 0; i < n; ++i) grads[i] = synthetic(4, rank, step, i);
    ASSERT_TRUE(demo.step(comm, infos, params, grads, 1e-3, step));
  }
  EXPECT_NE(params, start);

  std::vector<float> all(n * world);
  comm.allgather<float>(std::span<const float>(params), std::span<float>(all), "test");
  for (int r = 0; r < world; ++r)
    EXPECT_EQ(std::memcmp(all.data() + r * n, params.data(), n * sizeof(float)), 0)
        << "rank " << r << " differs from rank " << rank;

  // Momentum stays local: with different gradients, deltas must differ across ranks.
  if (world > 1) {
    std::vector<float> deltas(n * world);
    comm.allgather<float>(std::span<const float>(demo.delta().data(), n), std::span<float>(deltas), "test");
    EXPECT_NE(std::memcmp(deltas.data(), deltas.data() + n, n * sizeof(float)), 0);
  }
}

TEST(DemoStrategy, ChecksumCatchesDivergedReplica) {
  comm::Communicator comm(MPI_COMM_WORLD);
  if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
  const std::vector<model::ParamInfo> infos = layout(kSmallShapes);
  const std::size_t n = total(infos);
  DemoOptions options;
  options.chunk = 8;
  options.topk = 4;
  options.check_every = 2;
  DemoStrategy demo(options);
  std::vector<float> params(n, 0.5f), grads(n);
  for (std::size_t i = 0; i < n; ++i) grads[i] = synthetic(5, comm.rank(), 1, i);
  ASSERT_TRUE(demo.step(comm, infos, params, grads, 0.01, 1));  // no check at step 1
  if (comm.rank() == 1) params[7] = std::nextafter(params[7], 2.0f);  // one ulp on one rank
  try {
    demo.step(comm, infos, params, grads, 0.01, 2);
    ADD_FAILURE() << "expected the replica check to throw at step 2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DeMo: replicas differ at step 2"), std::string::npos) << e.what();
  }
}

TEST(DemoStrategy, NonFiniteGradientOnOneRankSkipsEverywhere) {
  comm::Communicator comm(MPI_COMM_WORLD);
  const std::vector<model::ParamInfo> infos = layout(kSmallShapes);
  const std::size_t n = total(infos);
  DemoOptions options;
  options.chunk = 8;
  options.topk = 4;
  DemoStrategy demo(options);
  std::vector<float> params(n, 0.25f), grads(n);
  for (std::size_t i = 0; i < n; ++i) grads[i] = synthetic(6, comm.rank(), 1, i);
  ASSERT_TRUE(demo.step(comm, infos, params, grads, 0.01, 1));
  const std::vector<float> params_before = params;
  const std::vector<float> delta_before(demo.delta().data(), demo.delta().data() + n);
  if (comm.rank() == comm.size() - 1) grads[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(demo.step(comm, infos, params, grads, 0.01, 2));
  EXPECT_EQ(params, params_before);
  EXPECT_EQ(std::vector<float>(demo.delta().data(), demo.delta().data() + n), delta_before);
  EXPECT_EQ(demo.skipped_steps(), 1);
  EXPECT_EQ(demo.syncs(), 1);
}

}  // namespace
}  // namespace lowsync::sync
