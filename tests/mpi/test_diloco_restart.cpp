// ranks: 2
// DiLoCo checkpoints end to end (app/train): k steps + checkpoint + resume + k steps equal 2k
// uninterrupted steps bitwise in every saved buffer (parameters, inner AdamW state, theta_g, the
// outer momentum, the rounds in flight) for plain DiLoCo, Streaming DiLoCo whose checkpoint falls
// while a fragment's non-blocking allreduce is in flight (fp32: re-issued on resume; bf16 wire:
// the reduced pseudo-gradient saved), with the real non-blocking path and the deterministic one.
#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/trainer.hpp"
#include "lowsync/io/checkpoint_file.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace lowsync::app {
namespace {
namespace fs = std::filesystem;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

fs::path scratch_dir(const std::string& name) {
  char buf[256] = {};
  if (world_rank() == 0) {
    const fs::path dir = fs::temp_directory_path() / fmt::format("lowsync-diloco-{}-{}", ::getpid(), name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::snprintf(buf, sizeof buf, "%s", dir.c_str());
  }
  MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

config::Config small_config(const std::string& variant, std::int64_t steps) {
  config::Config c;
  for (const char* s : {"model.arch=mlp", "data.train_limit=600", "train.batch=8", "log.every=1", "eval.every=3",
                        "eval.batch=500", "log.progress=off", "sync.strategy=diloco", "optim.name=adamw",
                        "optim.lr=0.003"})
    c.set_text(s);
  c.set_text(fmt::format("train.steps={}", steps));
  if (variant == "diloco") {
    c.set_text("sync.period=2");
  } else {  // "overlap*": H = 4, F = 2 (phases 0, 2), tau = 2: fragment 1's round starts at 2,
            // lands at 4, starts again at 6; fragment 0's starts at 4, lands at 6. A checkpoint at
            // step 3 holds fragment 1's round in flight.
    c.set_text("sync.period=4");
    c.set_text("sync.diloco.fragments=2");
    c.set_text("sync.diloco.overlap=2");
    if (variant.ends_with("_bf16")) c.set_text("precision.wire=bf16");
  }
  return c;
}

void expect_same_state(const fs::path& a, const fs::path& b) {
  comm::Communicator comm(MPI_COMM_WORLD);
  io::CheckpointReader ra(a, comm), rb(b, comm);
  const auto names = ra.dataset_names();
  ASSERT_EQ(names, rb.dataset_names());
  EXPECT_EQ(ra.attribute_int("step"), rb.attribute_int("step"));
  bool saw_global = false;
  for (const auto& name : names) {
    if (name == "trainer/loop" || name == "comm/ledger" || !ra.is_per_rank(name)) continue;
    saw_global = saw_global || name == "strategy/diloco_global";
    const std::size_t n = ra.row_length(name);
    ASSERT_EQ(n, rb.row_length(name)) << name;
    const auto row = static_cast<std::size_t>(world_rank());
    if (ra.dataset_dtype(name) == DType::f32) {
      std::vector<float> x(n), y(n);
      ra.read_row<float>(name, row, std::span<float>(x));
      rb.read_row<float>(name, row, std::span<float>(y));
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), n * sizeof(float))) << name << " differs on rank " << row;
    } else {
      std::vector<std::int64_t> x(n), y(n);
      ra.read_row<std::int64_t>(name, row, std::span<std::int64_t>(x));
      rb.read_row<std::int64_t>(name, row, std::span<std::int64_t>(y));
      EXPECT_EQ(x, y) << name << " differs on rank " << row;
    }
  }
  EXPECT_TRUE(saw_global);
}

struct Variant {
  std::string name;
  bool deterministic;
};

class DilocoRestart : public ::testing::TestWithParam<Variant> {};

TEST_P(DilocoRestart, ResumedRunEqualsUninterrupted) {
  const Variant v = GetParam();
  const fs::path dir = scratch_dir(v.name + (v.deterministic ? "_det" : ""));
  const std::int64_t k = 3;
  {
    comm::Communicator comm(MPI_COMM_WORLD, {v.deterministic, 60.0});
    auto c = small_config(v.name, 2 * k);
    c.set_text(fmt::format("checkpoint.every={}", k));  // also a checkpoint at k with a round in flight
    const auto r = train(c, comm, dir / "full");
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_GE(r.summary["syncs"].get<std::int64_t>(), 2);
  }
  {
    comm::Communicator comm(MPI_COMM_WORLD, {v.deterministic, 60.0});
    auto c = small_config(v.name, k);
    c.set_text(fmt::format("checkpoint.every={}", k));
    train(c, comm, dir / "split");
  }
  const auto mid = io::checkpoint_path(dir / "split" / "checkpoints", k);
  if (v.name != "diloco") {  // the round in flight is in the checkpoint
    comm::Communicator comm(MPI_COMM_WORLD);
    io::CheckpointReader r(mid, comm);
    std::int64_t started = 0;
    r.read_row<std::int64_t>("strategy/counters/inflight_f1", static_cast<std::size_t>(world_rank()), {&started, 1});
    EXPECT_EQ(started, 2);
  }
  {
    comm::Communicator comm(MPI_COMM_WORLD, {v.deterministic, 60.0});
    auto c = checkpoint_config(mid, comm);
    c.set_text(fmt::format("train.steps={}", 2 * k));
    const auto r = train(c, comm, dir / "split", mid);
    EXPECT_EQ(r.exit_code, 0);
  }
  expect_same_state(io::checkpoint_path(dir / "full" / "checkpoints", 2 * k),
                    io::checkpoint_path(dir / "split" / "checkpoints", 2 * k));
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Variants, DilocoRestart,
                         ::testing::Values(Variant{"diloco", true}, Variant{"overlap", true}, Variant{"overlap", false},
                                           Variant{"overlap_bf16", false}),
                         [](const auto& info) { return info.param.name + (info.param.deterministic ? "_det" : "_nb"); });

// 2 -> 1 rank with a round in flight (H = 4, F = 2, tau = 2: fragment 1's round landed at 4,
// fragment 0's started at 4 is in flight at the checkpoint at 5): theta_g and m survive the
// reshard bitwise (the mean of identical rows), the round in flight is dropped, training goes on.
TEST(DilocoReshard, KeepsGlobalModelAndMomentum) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world != 2) GTEST_SKIP() << "needs 2 ranks";
  const fs::path dir = scratch_dir("reshard");
  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = small_config("overlap", 5);
    c.set_text("checkpoint.every=5");
    train(c, comm, dir / "two");
  }
  const auto saved = io::checkpoint_path(dir / "two" / "checkpoints", 5);
  MPI_Comm one = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() == 0 ? 0 : MPI_UNDEFINED, 0, &one);
  if (one != MPI_COMM_NULL) {
    comm::Communicator comm(one, {true, 60.0});
    auto c = checkpoint_config(saved, comm);
    c.set_text("train.steps=6");  // step 6: fragment 1 starts a round; nothing lands (f0's was dropped)
    c.set_text("checkpoint.every=6");
    const auto r = train(c, comm, dir / "one", saved);
    EXPECT_EQ(r.summary["steps"], 6);
    EXPECT_TRUE(std::isfinite(r.summary["final_loss"].get<double>()));
    io::CheckpointReader before(saved, comm), after(io::checkpoint_path(dir / "one" / "checkpoints", 6), comm);
    for (const std::string name : {"strategy/diloco_global", "strategy/diloco_momentum"}) {
      const std::size_t n = before.row_length(name);
      std::vector<float> x(n), y(n);
      before.read_row<float>(name, 1, std::span<float>(x));
      after.read_row<float>(name, 0, std::span<float>(y));
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), n * sizeof(float))) << name;
      EXPECT_TRUE(std::any_of(x.begin(), x.end(), [](float v) { return v != 0.0f; })) << name << " is all zero";
    }
    std::int64_t f0 = -1, f1 = -1;
    after.read_row<std::int64_t>("strategy/counters/inflight_f0", 0, {&f0, 1});
    after.read_row<std::int64_t>("strategy/counters/inflight_f1", 0, {&f1, 1});
    EXPECT_EQ(f0, 0);  // dropped at the reshard
    EXPECT_EQ(f1, 6);  // started at step 6, in flight
    MPI_Comm_free(&one);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace lowsync::app
