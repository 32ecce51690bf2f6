// ranks: 2 4
// Trainer checkpoints (app/checkpointing.hpp) end to end on a small MLP: for allreduce, periodic,
// FDA and DeMo, fp8 wire (allreduce; periodic, FDA: the server model on rank 0), bf16/fp8
// compute (allreduce), native 16-bit periodic and FDA (u16 replicas, w0, w0_prev) and ZO (optim.name = zo, pruned FedSGD and FedAvg: mask, kept values, update state, counters),
// k steps + checkpoint + resume + k steps must equal 2k uninterrupted steps bitwise (every saved
// buffer: parameters, optimizer, strategy, loader) with the same metrics.csv values; a
// resume on half the ranks (4 -> 2) and on twice the ranks (2 -> 4) follows the reshard policy
// (also with an fp8 wire, whose fp32 server model on rank 0 must survive it).
#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/trainer.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/io/checkpoint_file.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
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

class ScratchDir {
 public:
  ScratchDir() {
    char name[256] = {};
    if (world_rank() == 0) {
      const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
      // A parameterized test's name is "Name/3": keep the '/' out so the whole dir is removed.
      std::string test_name = test->name();
      std::replace(test_name.begin(), test_name.end(), '/', '_');
      const fs::path dir = fs::temp_directory_path() / fmt::format("lowsync-restart-{}-{}", ::getpid(), test_name);
      fs::remove_all(dir);
      fs::create_directories(dir);
      std::snprintf(name, sizeof name, "%s", dir.c_str());
    }
    MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = name;
  }
  ~ScratchDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(path_);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// `name` is a strategy, optionally with a precision suffix: "periodic_fp8wire", "fda_fp8wire"
// (precision.wire = fp8_e4m3: the fp32 server model on rank 0 is checkpoint state), "allreduce_bf16", "allreduce_fp8"
// (precision.compute; bf16/fp16 run on native 16-bit storage under precision.storage = auto, also for periodic
// and FDA, whose u16 w0/w0_prev are checkpoint state).
config::Config small_config(const std::string& name, std::int64_t steps) {
  config::Config c;
  std::string strategy = name;
  if (name.starts_with("zo")) {  // "zo_fedsgd_ntk" / "zo_fedavg_magnitude": pruned ZO training
    strategy = "none";  // ignored by optim.name = zo
    c.set_text("optim.name=zo");
    c.set_text("optim.zo.q=4");
    c.set_text("prune.sparsity=0.9");
    if (name == "zo_fedsgd_ntk") {
      c.set_text("optim.zo.form=fedsgd");
      c.set_text("prune.method=ntk");
      c.set_text("prune.rounds=2");
      c.set_text("optim.zo.update=adam");
      c.set_text("optim.lr=0.01");
    } else {
      c.set_text("optim.zo.form=fedavg");
      c.set_text("sync.period=2");  // k = 3: the checkpoint falls between two averages
      c.set_text("prune.method=magnitude");
      c.set_text("optim.zo.difference=central");
      c.set_text("optim.lr=0.001");
    }
  } else if (const auto u = name.find('_'); u != std::string::npos) {
    strategy = name.substr(0, u);
    const std::string precision = name.substr(u + 1);
    if (precision == "fp8wire") c.set_text("precision.wire=fp8_e4m3");
    else c.set_text("precision.compute=" + precision);
  }
  c.set_text("model.arch=mlp");
  c.set_text("data.train_limit=600");
  c.set_text("train.batch=8");
  c.set_text(fmt::format("train.steps={}", steps));
  c.set_text("log.every=1");
  c.set_text("eval.every=3");
  c.set_text("eval.batch=500");
  c.set_text("log.progress=off");
  c.set_text("comm.deterministic=true");
  c.set_text(fmt::format("sync.strategy={}", strategy));
  if (strategy == "allreduce") {
    c.set_text("optim.name=sgd");
    c.set_text("optim.momentum=0.9");
  } else if (strategy == "periodic") {
    c.set_text("optim.name=adamw");
    c.set_text("optim.lr=0.001");
    c.set_text("sync.period=3");
    c.set_text("sync.average_optimizer_state=true");
  } else if (strategy == "fda") {
    c.set_text("optim.name=sgd");
    c.set_text("optim.momentum=0.9");
    c.set_text("sync.fda.threshold=0.02");
  } else if (strategy == "demo") {
    c.set_text("optim.lr=0.001");
    c.set_text("sync.check_every=2");
  }
  return c;
}

// Every buffer a rank restores (its own row), compared bitwise; trainer/loop (timings) and
// comm/ledger (seconds) are not deterministic and are left out.
void expect_same_state(const fs::path& a, const fs::path& b, MPI_Comm mpi_comm) {
  comm::Communicator comm(mpi_comm);
  io::CheckpointReader ra(a, comm), rb(b, comm);
  int rank = 0;
  MPI_Comm_rank(mpi_comm, &rank);
  const auto names = ra.dataset_names();
  ASSERT_EQ(names, rb.dataset_names());
  EXPECT_EQ(ra.attribute_int("step"), rb.attribute_int("step"));
  EXPECT_EQ(ra.attribute_int("optimizer_step_count"), rb.attribute_int("optimizer_step_count"));
  EXPECT_EQ(ra.attribute_double("last_loss"), rb.attribute_double("last_loss"));
  for (const auto& name : names) {
    if (name.starts_with("strategy/root/")) {  // rank 0's server model (wire formats), global
      const auto shape = ra.dataset_shape(name);
      ASSERT_EQ(shape, rb.dataset_shape(name)) << name;
      std::vector<float> x(shape.at(0)), y(shape.at(0));
      ra.read_global<float>(name, std::span<float>(x), {x.size()});
      rb.read_global<float>(name, std::span<float>(y), {y.size()});
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float))) << name << " differs";
      continue;
    }
    if (name == "trainer/loop" || name == "comm/ledger" || !ra.is_per_rank(name)) continue;
    const std::size_t n = ra.row_length(name);
    ASSERT_EQ(n, rb.row_length(name)) << name;
    if (ra.dataset_dtype(name) == DType::f32) {
      std::vector<float> x(n), y(n);
      ra.read_row<float>(name, static_cast<std::size_t>(rank), std::span<float>(x));
      rb.read_row<float>(name, static_cast<std::size_t>(rank), std::span<float>(y));
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), n * sizeof(float))) << name << " differs on rank " << rank;
    } else {
      std::vector<std::int64_t> x(n), y(n);
      ra.read_row<std::int64_t>(name, static_cast<std::size_t>(rank), std::span<std::int64_t>(x));
      rb.read_row<std::int64_t>(name, static_cast<std::size_t>(rank), std::span<std::int64_t>(y));
      EXPECT_EQ(x, y) << name << " differs on rank " << rank;
    }
  }
}

// metrics.csv without the timing columns (wall_s, compute_s, comm_s, samples_per_s).
std::vector<std::string> deterministic_metrics(const fs::path& csv) {
  std::ifstream in(csv);
  std::vector<std::string> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string cell, kept;
    for (int col = 0; std::getline(ss, cell, ','); ++col)
      if (col != 2 && col != 3 && col != 4 && col != 11) kept += cell + ",";
    rows.push_back(kept);
  }
  return rows;
}

class Restart : public ::testing::TestWithParam<std::string> {};

TEST_P(Restart, ResumedRunEqualsUninterrupted) {
  const std::string strategy = GetParam();
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // The precision and ZO variants take the same code paths on 4 ranks as on 2; on 4 ranks (2
  // cores) only the fp32 strategies run, to keep the test inside its time limit.
  if (world > 2 && strategy.find('_') != std::string::npos) GTEST_SKIP() << "run on 2 ranks";
  ScratchDir dir;
  const std::int64_t k = 3;
  {  // a fresh communicator per run: the byte ledger is per process
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = small_config(strategy, 2 * k);
    c.set_text(fmt::format("checkpoint.every={}", 2 * k));
    const auto r = train(c, comm, dir.path() / "full");
    EXPECT_EQ(r.exit_code, 0);
    if (strategy.ends_with("_bf16") || strategy.ends_with("_fp16")) {
      EXPECT_EQ(r.summary["precision_storage"], "native");
      // FDA's w0 moved away from the start, so the checkpoint holds a real u16 w0/w0_prev.
      if (strategy.starts_with("fda")) {
        EXPECT_GE(r.summary["syncs"].get<std::int64_t>(), 1);
      }
    }
  }
  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = small_config(strategy, k);
    c.set_text(fmt::format("checkpoint.every={}", k));
    train(c, comm, dir.path() / "split");
  }
  const auto mid = io::checkpoint_path(dir.path() / "split" / "checkpoints", k);
  {
    // As main.cpp does it: the saved config, then overrides (train.steps counts total steps).
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = checkpoint_config(mid, comm);
    EXPECT_EQ(c.integer("train.steps"), k);
    c.set_text(fmt::format("train.steps={}", 2 * k));
    const auto r = train(c, comm, dir.path() / "split", mid);
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.summary["steps"], 2 * k);
  }
  expect_same_state(io::checkpoint_path(dir.path() / "full" / "checkpoints", 2 * k),
                    io::checkpoint_path(dir.path() / "split" / "checkpoints", 2 * k), MPI_COMM_WORLD);
  if (world_rank() == 0) {
    const auto a = deterministic_metrics(dir.path() / "full" / "metrics.csv");
    const auto b = deterministic_metrics(dir.path() / "split" / "metrics.csv");
    EXPECT_EQ(a.size(), static_cast<std::size_t>(2 * k + 1));
    EXPECT_EQ(a, b);
  }
}

INSTANTIATE_TEST_SUITE_P(Strategies, Restart, ::testing::Values("allreduce", "periodic", "fda", "demo", "periodic_fp8wire",
                                                           "fda_fp8wire", "allreduce_fp8wire", "allreduce_bf16", "allreduce_fp8",
                                                           "periodic_bf16", "fda_fp16", "fda_bf16",
                                                           "zo_fedsgd_ntk", "zo_fedavg_magnitude"),
                         [](const auto& info) { return info.param; });

TEST(Restart, RefusesADifferentModel) {
  ScratchDir dir;
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
  auto c = small_config("allreduce", 2);
  c.set_text("checkpoint.every=2");
  train(c, comm, dir.path() / "a");
  const auto file = io::checkpoint_path(dir.path() / "a" / "checkpoints", 2);
  auto other = c;
  other.set_text("model.arch=cnn");
  try {
    check_compatible(file, checkpoint_config(file, comm), other);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.arch is \"mlp\" there, \"cnn\" here"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
  }
  EXPECT_EQ(resolve_checkpoint(dir.path() / "a", comm), file);
}

// Half the ranks (world 4 -> 2 via a sub-communicator) and back (2 -> 4): the reshard policy.
TEST(Reshard, HalfAndDoubleTheRanks) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world != 4) GTEST_SKIP() << "needs 4 ranks";
  ScratchDir dir;
  const int rank = world_rank();
  MPI_Comm half = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : MPI_UNDEFINED, rank, &half);

  for (const std::string strategy : {"periodic", "fda", "demo", "allreduce", "periodic_fp8wire", "fda_fp8wire", "fda_bf16"}) {
    SCOPED_TRACE(strategy);
    const fs::path four = dir.path() / (strategy + "-4"), two = dir.path() / (strategy + "-2"),
                   back = dir.path() / (strategy + "-back");
    {
      comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
      auto c = small_config(strategy, 3);
      c.set_text("checkpoint.every=3");
      train(c, comm, four);
    }
    const auto saved = io::checkpoint_path(four / "checkpoints", 3);
    if (half != MPI_COMM_NULL) {  // 4 -> 2, then 2 more steps
      comm::Communicator comm(half, {true, 60.0});
      auto c = checkpoint_config(saved, comm);
      c.set_text("train.steps=5");
      c.set_text("checkpoint.every=5");
      const auto r = train(c, comm, two, saved);
      EXPECT_EQ(r.summary["ranks"], 2);
      EXPECT_TRUE(std::isfinite(r.summary["final_loss"].get<double>()));
      // Parameters at the resume point: the mean of the 4 saved replicas, checked against a
      // direct read of the old file (periodic syncs at step 3, so all replicas are equal there).
      const auto mean = checkpoint_mean_params(saved, comm, static_cast<std::size_t>(r.summary["num_params"].get<std::int64_t>()));
      io::CheckpointReader old(saved, comm);
      std::vector<float> row(mean.size());
      old.read_row<float>("model/params", 3, std::span<float>(row));
      if (!strategy.starts_with("fda")) {
        // Compared by value: an fp8-wire model holds -0.0 (a small negative weight decoded to
        // zero) where the fp64 mean of four -0.0 gives +0.0.
        std::size_t differ = 0;
        for (std::size_t i = 0; i < row.size(); ++i) differ += row[i] != mean[i] ? 1 : 0;
        EXPECT_EQ(differ, 0U);
      }
      if (strategy == "periodic_fp8wire") {
        // The fp32 server model (rank 0's, not a replica) survives the reshard unchanged: no
        // average falls on steps 4-5 (period 3), so the 2-rank checkpoint holds the saved one.
        io::CheckpointReader after(io::checkpoint_path(two / "checkpoints", 5), comm);
        for (const std::string name : {"strategy/root/server_master", "strategy/root/server_broadcast"}) {
          std::vector<float> before_server(row.size()), after_server(row.size());
          old.read_global<float>(name, std::span<float>(before_server), {row.size()});
          after.read_global<float>(name, std::span<float>(after_server), {row.size()});
          EXPECT_EQ(0, std::memcmp(before_server.data(), after_server.data(), row.size() * sizeof(float))) << name;
        }
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    {  // 2 -> 4
      comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
      const auto file = io::checkpoint_path(two / "checkpoints", 5);
      auto c = checkpoint_config(file, comm);
      c.set_text("train.steps=7");
      c.set_text("checkpoint.every=7");
      const auto r = train(c, comm, back, file);
      EXPECT_EQ(r.summary["ranks"], 4);
      EXPECT_EQ(r.summary["steps"], 7);
      EXPECT_TRUE(std::isfinite(r.summary["final_loss"].get<double>()));
      // Counters continue (syncs from old rank 0), the loader starts a fresh epoch.
      io::CheckpointReader now(io::checkpoint_path(back / "checkpoints", 7), comm);
      std::int64_t syncs = 0;
      now.read_row<std::int64_t>("strategy/counters/syncs", static_cast<std::size_t>(rank), {&syncs, 1});
      EXPECT_GE(syncs, strategy == "allreduce" || strategy == "demo" ? 7 : 1);
    }
  }
  if (half != MPI_COMM_NULL) MPI_Comm_free(&half);
}

}  // namespace
}  // namespace lowsync::app
