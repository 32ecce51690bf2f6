// ranks: 3
// DeMo with precision.compute = bf16 through the trainer (ALGORITHMS.md §5 "compose": forward and
// backward in 16 bits, delta and the parameters fp32): the run trains to a finite loss with the
// strategy's replica checksum on, the saved parameters are bitwise identical on every rank and
// are an fp32 master (most of them off the bf16 grid: a sign step of lr would vanish on it), delta
// is fp32 too, and k steps + checkpoint + resume + k steps equal 2k steps bitwise (the checkpoint
// holds the master, not its 16-bit copy).
#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/trainer.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/tensor/half.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

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

int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

fs::path scratch() {
  char name[256] = {};
  if (world_rank() == 0) {
    const fs::path dir = fs::temp_directory_path() / fmt::format("lowsync-demo-bf16-{}", ::getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::snprintf(name, sizeof name, "%s", dir.c_str());
  }
  MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
  return name;
}

config::Config demo_bf16(std::int64_t steps) {
  config::Config c;
  for (const char* kv : {"model.arch=mlp", "data.train_limit=600", "train.batch=8", "log.every=2", "eval.every=4",
                         "eval.batch=500", "log.progress=off", "comm.deterministic=true", "sync.strategy=demo",
                         "optim.name=demo", "optim.lr=0.001", "optim.demo.value=bf16", "sync.check_every=2",
                         "precision.compute=bf16"})
    c.set_text(kv);
  c.set_text(fmt::format("train.steps={}", steps));
  c.set_text(fmt::format("checkpoint.every={}", steps));
  return c;
}

std::vector<float> row(const fs::path& file, const std::string& name, int r) {
  comm::Communicator comm(MPI_COMM_WORLD);
  io::CheckpointReader reader(file, comm);
  std::vector<float> x(reader.row_length(name));
  reader.read_row<float>(name, static_cast<std::size_t>(r), std::span<float>(x));
  return x;
}

std::size_t off_bf16_grid(const std::vector<float>& x) {
  std::size_t n = 0;
  for (const float v : x) n += tensor::bf16_round(v) != v ? 1 : 0;
  return n;
}

TEST(DemoBf16Compute, Fp32MasterIdenticalReplicasExactResume) {
  const fs::path dir = scratch();
  const std::int64_t k = 4;
  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    const auto r = train(demo_bf16(2 * k), comm, dir / "full");
    ASSERT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.summary["precision_compute"], "bf16");
    const double loss = r.summary["final_loss"].get<double>();
    EXPECT_TRUE(std::isfinite(loss) && loss < 2.5) << loss;
  }
  const auto full = io::checkpoint_path(dir / "full" / "checkpoints", 2 * k);
  const auto params = row(full, "model/params", world_rank());
  for (int r = 0; r < world_size(); ++r) {
    const auto other = row(full, "model/params", r);
    ASSERT_EQ(other.size(), params.size());
    EXPECT_EQ(0, std::memcmp(other.data(), params.data(), params.size() * sizeof(float)))
        << "rank " << r << " differs from rank " << world_rank();
  }
  EXPECT_GT(off_bf16_grid(params), params.size() / 2) << "parameters were rounded to bf16";
  EXPECT_GT(off_bf16_grid(row(full, "strategy/demo_delta", world_rank())), params.size() / 10)
      << "delta was rounded to bf16";

  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    ASSERT_EQ(train(demo_bf16(k), comm, dir / "split").exit_code, 0);
  }
  const auto mid = io::checkpoint_path(dir / "split" / "checkpoints", k);
  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = checkpoint_config(mid, comm);
    c.set_text(fmt::format("train.steps={}", 2 * k));
    c.set_text(fmt::format("checkpoint.every={}", 2 * k));
    ASSERT_EQ(train(c, comm, dir / "split", mid).exit_code, 0);
  }
  const auto resumed = row(io::checkpoint_path(dir / "split" / "checkpoints", 2 * k), "model/params", world_rank());
  ASSERT_EQ(resumed.size(), params.size());
  EXPECT_EQ(0, std::memcmp(resumed.data(), params.data(), params.size() * sizeof(float)))
      << "resume from the fp32 master differs from the uninterrupted run";

  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace lowsync::app
