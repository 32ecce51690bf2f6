// ranks: 1 2 3 4
// Communicator collectives against plain MPI on random data, the byte ledger against hand-computed
// counts, the deterministic sum, and argument checks.
#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <numeric>
#include <thread>

namespace lowsync::comm {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

std::vector<float> random_floats(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = 2.0f * uniform01(seed, i) - 1.0f;
  return v;
}

TEST(Communicator, AllreduceMatchesPlainMpi) {
  Communicator comm(MPI_COMM_WORLD);
  for (std::size_t n : {1u, 7u, 1000u, 100003u}) {
    auto ours = random_floats(n, 100 + world_rank());
    auto theirs = ours;
    comm.allreduce(std::span<float>(ours), ReduceOp::sum, "test");
    MPI_Allreduce(MPI_IN_PLACE, theirs.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_EQ(ours, theirs) << n;
  }
  std::vector<double> d = {static_cast<double>(world_rank())};
  comm.allreduce(std::span<double>(d), ReduceOp::max, "test");
  EXPECT_EQ(d[0], world_size() - 1);
  std::vector<std::int64_t> i = {world_rank() + 5};
  comm.allreduce(std::span<std::int64_t>(i), ReduceOp::min, "test");
  EXPECT_EQ(i[0], 5);
}

TEST(Communicator, BroadcastAllgatherGatherMatchPlainMpi) {
  Communicator comm(MPI_COMM_WORLD);
  const int k = world_size(), me = world_rank();
  auto b = random_floats(33, 7 + me);
  auto expect = random_floats(33, 7 + (k - 1));
  comm.broadcast(std::span<float>(b), k - 1, "test");
  EXPECT_EQ(b, expect);

  auto mine = random_floats(5, 50 + me);
  std::vector<float> all(5 * k), ref(5 * k);
  comm.allgather(std::span<const float>(mine), std::span<float>(all), "test");
  MPI_Allgather(mine.data(), 5, MPI_FLOAT, ref.data(), 5, MPI_FLOAT, MPI_COMM_WORLD);
  EXPECT_EQ(all, ref);

  std::vector<std::int64_t> counts(k);
  for (int r = 0; r < k; ++r) counts[r] = r + 1;
  std::vector<std::uint16_t> vsend(me + 1, static_cast<std::uint16_t>(me)), vrecv(k * (k + 1) / 2);
  comm.allgatherv(std::span<const std::uint16_t>(vsend), std::span<std::uint16_t>(vrecv), counts, "test");
  std::size_t pos = 0;
  for (int r = 0; r < k; ++r)
    for (int j = 0; j <= r; ++j) EXPECT_EQ(vrecv[pos++], r);

  std::vector<std::int32_t> one = {me * 10}, gathered(me == 0 ? k : 0);
  comm.gather(std::span<const std::int32_t>(one), std::span<std::int32_t>(gathered), 0, "test");
  if (me == 0)
    for (int r = 0; r < k; ++r) EXPECT_EQ(gathered[r], r * 10);
}

TEST(Communicator, LedgerCountsWireBytesByFormula) {
  Communicator comm(MPI_COMM_WORLD);
  const std::uint64_t k = static_cast<std::uint64_t>(world_size());
  std::vector<float> grads(1000);
  comm.allreduce(std::span<float>(grads), ReduceOp::sum, "grad");
  comm.allreduce(std::span<float>(grads), ReduceOp::sum, "grad");
  std::vector<std::uint8_t> mine(10), all(10 * k);
  comm.allgather(std::span<const std::uint8_t>(mine), std::span<std::uint8_t>(all), "demo");
  comm.broadcast(std::span<float>(grads), 0, "model");
  std::vector<double> obs(4);
  comm.allreduce(std::span<double>(obs), ReduceOp::sum, "obs.metrics");

  const auto g = comm.ledger().by_traffic("grad");
  EXPECT_EQ(g.calls, 2u);
  EXPECT_EQ(g.payload_bytes, 8000u);
  EXPECT_EQ(g.wire_bytes, 2 * (2 * (k - 1) * 4000 / k));
  EXPECT_EQ(comm.ledger().by_traffic("demo").wire_bytes, (k - 1) * 10);
  EXPECT_EQ(comm.ledger().by_traffic("model").wire_bytes, (k - 1) * 4000 / k);
  // obs.* traffic is recorded but not part of the strategy's total.
  EXPECT_EQ(comm.ledger().by_traffic("obs.metrics").calls, 1u);
  EXPECT_EQ(comm.ledger().total().wire_bytes, g.wire_bytes + (k - 1) * 10 + (k - 1) * 4000 / k);
  EXPECT_EQ(comm.ledger().total().calls, 4u);
}

// Block r of every rank's send buffer lands on rank r, in sender order; the ledger charges the
// (N-1)/N of the buffer that leaves the rank.
TEST(Communicator, AlltoallExchangesBlocksAndCountsTheirBytes) {
  Communicator comm(MPI_COMM_WORLD);
  const int k = world_size(), me = world_rank();
  const std::size_t block = 3;
  std::vector<std::uint16_t> send(block * k), recv(block * k, 0xffff);
  for (int to = 0; to < k; ++to)
    for (std::size_t i = 0; i < block; ++i) send[to * block + i] = static_cast<std::uint16_t>(100 * me + 10 * to + i);
  comm.alltoall(std::span<const std::uint16_t>(send), std::span<std::uint16_t>(recv), "grad");
  for (int from = 0; from < k; ++from)
    for (std::size_t i = 0; i < block; ++i)
      EXPECT_EQ(recv[from * block + i], 100 * from + 10 * me + i) << "from rank " << from;
  const auto g = comm.ledger().by_traffic("grad");
  EXPECT_EQ(g.payload_bytes, 2 * block * k);
  EXPECT_EQ(g.wire_bytes, (static_cast<std::uint64_t>(k) - 1) * 2 * block);
  std::vector<std::uint16_t> longer(block * k + 1);  // the receive buffer must match the send buffer
  EXPECT_THROW(comm.alltoall(std::span<const std::uint16_t>(send), std::span<std::uint16_t>(longer), "grad"), Error);
}

TEST(Communicator, DeterministicSumIsRankOrderedAndIdenticalEverywhere) {
  Communicator det(MPI_COMM_WORLD, {true, 0.0});
  const int k = world_size();
  for (std::size_t n : {1u, 3u, 4097u}) {
    auto data = random_floats(n, 300 + world_rank());
    auto copy = data;
    det.allreduce(std::span<float>(data), ReduceOp::sum, "grad");
    // Reference: gather everything and sum in rank order 0..K-1.
    std::vector<float> all(n * k);
    MPI_Allgather(copy.data(), static_cast<int>(n), MPI_FLOAT, all.data(), static_cast<int>(n), MPI_FLOAT, MPI_COMM_WORLD);
    for (std::size_t i = 0; i < n; ++i) {
      float acc = all[i];
      for (int r = 1; r < k; ++r) acc += all[r * n + i];
      ASSERT_EQ(data[i], acc) << "n=" << n << " i=" << i;
    }
  }
  std::uint64_t ring_bytes = 0;
  for (std::uint64_t n : {1u, 3u, 4097u}) ring_bytes += wire_bytes(Collective::allreduce, 4 * n, k, false);
  EXPECT_EQ(det.ledger().by_traffic("grad").wire_bytes, ring_bytes) << "bytes of a ring allreduce";
}

TEST(Communicator, RejectsBadArguments) {
  Communicator comm(MPI_COMM_WORLD);
  std::vector<float> a(3), wrong(2);
  EXPECT_THROW(comm.allgather(std::span<const float>(a), std::span<float>(wrong), "test"), Error);
  EXPECT_THROW(comm.broadcast(std::span<float>(a), world_size(), "test"), Error);
  std::vector<std::int64_t> counts(world_size() + 1, 1);
  EXPECT_THROW(comm.allgatherv(std::span<const float>(a), std::span<float>(a), counts, "test"), Error);
}

// comm.separate_waits: the last rank arrives late; without the option the others book that wait
// as allreduce seconds, with it the wait lands in "obs.wait" and the allreduce holds the transfer.
// The 0.4 s lateness is ~100x a 4-float allreduce here, so the bounds have room for a loaded machine.
TEST(Communicator, SeparateWaitsBooksTheLateRankApart) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2+ ranks";
  const bool late = world_rank() == world_size() - 1;
  for (const bool separate : {false, true}) {
    Communicator comm(MPI_COMM_WORLD, {false, 60.0, separate});
    std::vector<float> v(4, 1.0f);
    if (late) std::this_thread::sleep_for(std::chrono::milliseconds(400));
    comm.allreduce(std::span<float>(v), ReduceOp::sum, "grad");
    comm.allreduce(std::span<float>(v), ReduceOp::sum, "obs.metrics");  // obs traffic: never waited for
    EXPECT_EQ(v[0], static_cast<float>(world_size() * world_size()));
    const LedgerEntry grad = comm.ledger().by_traffic("grad");
    const LedgerEntry wait = comm.ledger().by_traffic(kWaitTraffic);
    EXPECT_EQ(grad.calls, 1u);
    EXPECT_EQ(wait.calls, separate ? 1u : 0u) << "one barrier, before the grad allreduce only";
    if (late) continue;  // the late rank waits for nobody
    if (separate) {
      EXPECT_GT(wait.seconds, 0.3);
      EXPECT_LT(grad.seconds, 0.2);
    } else {
      EXPECT_GT(grad.seconds, 0.3);
    }
  }
}

TEST(Communicator, AnyAgreesOnAFlagSeenByOneRank) {
  Communicator comm(MPI_COMM_WORLD);
  EXPECT_FALSE(comm.any(false));
  EXPECT_TRUE(comm.any(world_rank() == world_size() - 1));
}

}  // namespace
}  // namespace lowsync::comm

namespace lowsync::comm {
namespace {

// Run by tests/integration/watchdog.sh (disabled in the normal suite): the last rank never joins
// the collective, so the others' watchdog must end the job with a message naming it.
TEST(Communicator, DISABLED_WatchdogEndsAHang) {
  Communicator comm(MPI_COMM_WORLD, {false, 2.0});
  comm.set_step(17);
  if (world_rank() == world_size() - 1) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
  } else {
    std::vector<float> x(10);
    comm.allreduce(std::span<float>(x), ReduceOp::sum, "grad");
  }
}

}  // namespace
}  // namespace lowsync::comm
