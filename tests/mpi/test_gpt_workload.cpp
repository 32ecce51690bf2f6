// ranks: 1 2
// The gpt workload end to end through app::train on a tiny model (T = 8, C = 16, L = 1, H = 2) and
// a small corpus the test writes: k steps + checkpoint + resume + k steps equal 2k uninterrupted
// steps bitwise (parameters, optimizer, strategy, the text-window cursor) for iid and by_source
// partitions; the summary's validation fields, each rank's sources, the val_bits_per_byte column;
// `lowsync eval` of the checkpoint agrees with the run; an untrained model scores ln 256 nats/byte;
// the launch checks (bad data.dir, zo with gpt, mismatched workloads) and the gpt context defaults.
#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/preflight.hpp"
#include "lowsync/app/trainer.hpp"
#include "lowsync/config/defaults.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/data/text.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/sync/strategy.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <numbers>
#include <set>
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
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// A scratch folder (rank 0 creates it) holding a corpus of four small text files.
class Scratch {
 public:
  Scratch() {
    char name[256] = {};
    if (world_rank() == 0) {
      std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
      std::replace(test.begin(), test.end(), '/', '_');
      const fs::path dir = fs::temp_directory_path() / fmt::format("lowsync-gpt-{}-{}", ::getpid(), test);
      fs::remove_all(dir);
      fs::create_directories(dir / "corpus");
      const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "past", "quietly", "home"};
      for (int f = 0; f < 4; ++f) {
        std::ofstream out(dir / "corpus" / fmt::format("topic{}", f), std::ios::binary);
        for (int i = 0; i < 300; ++i) out << words[(i * (f + 3) + f) % 12] << (i % 9 == 8 ? ".\n" : " ");
      }
      std::snprintf(name, sizeof name, "%s", dir.c_str());
    }
    MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = name;
  }
  ~Scratch() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(path_);
  }
  const fs::path& path() const { return path_; }
  fs::path corpus() const { return path_ / "corpus"; }

 private:
  fs::path path_;
};

config::Config gpt_config(const Scratch& s, const std::string& strategy, const std::string& partition,
                          std::int64_t steps) {
  config::Config c;
  c.set_text("model.arch=gpt");
  c.set_text("model.gpt.ctx=8");
  c.set_text("model.gpt.width=16");
  c.set_text("model.gpt.layers=1");
  c.set_text("model.gpt.heads=2");
  c.set_text("data.name=fortunes");
  c.set_text("data.dir=" + s.corpus().string());
  c.set_text("data.partition=" + partition);
  c.set_text("data.alpha=0.3");
  c.set_text("sync.strategy=" + strategy);
  c.set_text("sync.period=2");
  c.set_text("train.batch=4");
  c.set_text(fmt::format("train.steps={}", steps));
  c.set_text("eval.windows=16");
  c.set_text("eval.every=3");
  c.set_text("log.every=1");
  c.set_text("log.progress=off");
  c.set_text("comm.deterministic=true");
  config::apply_context_defaults(c);  // AdamW, lr 1e-3, betas 0.9 / 0.95, eval.batch
  return c;
}

std::string one_line_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Every per-rank buffer of two checkpoints, bitwise (timings and the ledger left out).
void expect_same_state(const fs::path& a, const fs::path& b) {
  comm::Communicator comm(MPI_COMM_WORLD);
  io::CheckpointReader ra(a, comm), rb(b, comm);
  const auto names = ra.dataset_names();
  ASSERT_EQ(names, rb.dataset_names());
  EXPECT_EQ(ra.attribute_int("step"), rb.attribute_int("step"));
  EXPECT_EQ(ra.attribute_double("last_test_loss"), rb.attribute_double("last_test_loss"));
  bool saw_cursor = false;
  for (const auto& name : names) {
    if (name == "trainer/loop" || name == "comm/ledger" || !ra.is_per_rank(name)) continue;
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
      if (name == "data/cursor") {
        saw_cursor = true;
        EXPECT_GT(x[1], 0);  // windows were drawn
      }
    }
  }
  EXPECT_TRUE(saw_cursor);
}

std::vector<std::string> metrics_without_timing(const fs::path& csv) {
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

class GptResume : public ::testing::TestWithParam<std::string> {};

TEST_P(GptResume, ResumedRunEqualsUninterrupted) {
  const std::string param = GetParam();
  const auto u = param.find('_');
  const std::string strategy = param.substr(0, u), partition = param.substr(u + 1);
  Scratch s;
  const std::int64_t k = 3;
  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = gpt_config(s, strategy, partition, 2 * k);
    c.set_text(fmt::format("checkpoint.every={}", 2 * k));
    EXPECT_EQ(train(c, comm, s.path() / "full").exit_code, 0);
  }
  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = gpt_config(s, strategy, partition, k);
    c.set_text(fmt::format("checkpoint.every={}", k));
    train(c, comm, s.path() / "split");
  }
  const auto mid = io::checkpoint_path(s.path() / "split" / "checkpoints", k);
  {
    comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
    auto c = checkpoint_config(mid, comm);
    c.set_text(fmt::format("train.steps={}", 2 * k));
    EXPECT_EQ(train(c, comm, s.path() / "split", mid).exit_code, 0);
  }
  expect_same_state(io::checkpoint_path(s.path() / "full" / "checkpoints", 2 * k),
                    io::checkpoint_path(s.path() / "split" / "checkpoints", 2 * k));
  if (world_rank() == 0) {
    const auto a = metrics_without_timing(s.path() / "full" / "metrics.csv");
    EXPECT_EQ(a.size(), static_cast<std::size_t>(2 * k + 1));
    EXPECT_EQ(a, metrics_without_timing(s.path() / "split" / "metrics.csv"));
  }
}

INSTANTIATE_TEST_SUITE_P(Partitions, GptResume,
                         ::testing::Values("allreduce_iid", "allreduce_by_source", "periodic_by_source"),
                         [](const auto& info) { return info.param; });

// The summary and metrics of a gpt run, and `lowsync eval` of its checkpoint.
TEST(GptRun, SummaryMetricsAndEval) {
  Scratch s;
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
  auto c = gpt_config(s, "allreduce", "by_source", 4);
  c.set_text("checkpoint.every=4");
  const auto r = train(c, comm, s.path() / "run");
  ASSERT_EQ(r.exit_code, 0);
  const auto& j = r.summary;
  const double loss = j["final_val_loss"].get<double>();
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_GT(loss, 0.5);
  EXPECT_LT(loss, 6.0);
  EXPECT_DOUBLE_EQ(j["final_val_bits_per_byte"].get<double>(), loss / std::numbers::ln2);
  EXPECT_EQ(j["final_val_loss"], j["final_test_loss"]);
  EXPECT_EQ(j["final_val_accuracy"], j["final_test_accuracy"]);
  EXPECT_DOUBLE_EQ(j["tokens_per_s"].get<double>(), 8 * j["samples_per_s"].get<double>());
  EXPECT_GT(j["train_state_bytes"].get<double>(), 0.0);
  EXPECT_GT(j["peak_rss_bytes"].get<double>(), j["train_state_bytes"].get<double>());
  EXPECT_EQ(j["optimizer"], "adamw");
  ASSERT_EQ(j["data_sources"].size(), static_cast<std::size_t>(world_size()));
  std::set<std::string> all;
  std::size_t dealt = 0;
  for (const auto& rank_sources : j["data_sources"]) {
    EXPECT_GE(rank_sources.size(), 1u);
    for (const auto& name : rank_sources) all.insert(name.get<std::string>());
    dealt += rank_sources.size();
  }
  EXPECT_EQ(all.size(), 4u);
  EXPECT_EQ(dealt, 4u);  // by_source: each file to one rank
  EXPECT_FALSE(j.contains("label_histograms"));
  if (world_rank() == 0) {
    std::ifstream in(s.path() / "run" / "metrics.csv");
    std::string header;
    std::getline(in, header);
    EXPECT_NE(header.find("test_loss,test_acc"), std::string::npos) << header;
    EXPECT_NE(header.find("val_bits_per_byte"), std::string::npos) << header;
  }
  // Replicas are identical under allreduce: eval of the checkpoint is the run's last evaluation.
  const auto file = io::checkpoint_path(s.path() / "run" / "checkpoints", 4);
  const auto ev = evaluate_checkpoint(file, checkpoint_config(file, comm), comm);
  EXPECT_NEAR(ev["val_loss"].get<double>(), loss, 1e-6 * loss);
  EXPECT_NEAR(ev["val_accuracy"].get<double>(), j["final_val_accuracy"].get<double>(), 1e-9);
  EXPECT_DOUBLE_EQ(ev["val_bits_per_byte"].get<double>(), ev["val_loss"].get<double>() / std::numbers::ln2);
}

// An untrained model (lr 0: the initialisation, normal(0, 0.02)) predicts bytes almost uniformly:
// its validation loss is ln 256 nats per byte, 8 bits.
TEST(GptRun, UntrainedModelScoresLn256) {
  Scratch s;
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
  auto c = gpt_config(s, "allreduce", "iid", 1);
  c.set_text("optim.lr=0");
  const auto r = train(c, comm, s.path() / "run");
  EXPECT_NEAR(r.summary["final_val_loss"].get<double>(), std::log(256.0), 0.05);
  EXPECT_NEAR(r.summary["final_val_bits_per_byte"].get<double>(), 8.0, 0.08);
}

TEST(GptLaunchChecks, BadFoldersAndKeysAreOneLineErrors) {
  Scratch s;
  auto c = gpt_config(s, "allreduce", "iid", 2);
  c.set_text("data.dir=" + (s.path() / "nowhere").string());
  std::string e = one_line_error([&] { check_batch_fits_partition(c, world_size()); });
  EXPECT_NE(e.find((s.path() / "nowhere").string()), std::string::npos) << e;
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);

  c = gpt_config(s, "allreduce", "by_source", 2);
  e = one_line_error([&] { check_batch_fits_partition(c, 5); });  // 4 files for 5 ranks
  EXPECT_NE(e.find("by_source"), std::string::npos) << e;
  c.set_text("model.gpt.ctx=1500");  // longer than any file's training part
  e = one_line_error([&] { check_batch_fits_partition(c, 1); });
  EXPECT_NE(e.find("model.gpt.ctx"), std::string::npos) << e;

  c = gpt_config(s, "allreduce", "iid", 2);
  c.set_text("optim.name=zo");
  e = one_line_error([&] { check_workload(c); });
  EXPECT_NE(e.find("optim.name = zo"), std::string::npos) << e;
  EXPECT_NE(e.find("model.arch = gpt"), std::string::npos) << e;

  c = gpt_config(s, "allreduce", "dirichlet", 2);
  EXPECT_NE(one_line_error([&] { check_workload(c); }).find("data.partition = dirichlet"), std::string::npos);
  config::Config mlp;
  mlp.set_text("data.name=fortunes");
  EXPECT_NE(one_line_error([&] { check_workload(mlp); }).find("model.arch = gpt, not mlp"), std::string::npos);
  config::Config gpt_on_images;
  gpt_on_images.set_text("model.arch=gpt");
  EXPECT_NE(one_line_error([&] { check_workload(gpt_on_images); }).find("data.name = fashion-mnist"), std::string::npos);
  config::Config images_by_source;
  images_by_source.set_text("data.partition=by_source");
  EXPECT_NE(one_line_error([&] { check_workload(images_by_source); }).find("by_source"), std::string::npos);
}

// model.arch = gpt alone brings its workload: fortunes from its own folder, AdamW lr 1e-3 betas
// 0.9 / 0.95, batch 16; a key set explicitly stays; DeMo keeps its own optimizer.
TEST(GptDefaults, ContextDefaultsOfTheWorkload) {
  config::Config c;
  c.set_text("model.arch=gpt");
  c.set_text("optim.beta1=0.8");
  config::apply_context_defaults(c);
  EXPECT_EQ(c.string("data.name"), "fortunes");
  EXPECT_EQ(c.string("data.dir"), "/usr/share/games/fortunes");
  EXPECT_EQ(c.string("optim.name"), "adamw");
  EXPECT_EQ(c.real("optim.lr"), 1e-3);
  EXPECT_EQ(c.real("optim.beta1"), 0.8);
  EXPECT_EQ(c.real("optim.beta2"), 0.95);
  EXPECT_EQ(c.integer("train.batch"), 16);
  config::Config d;
  d.set_text("model.arch=gpt");
  d.set_text("sync.strategy=demo");
  config::apply_context_defaults(d);
  EXPECT_EQ(d.string("optim.name"), "demo");
  config::Config mlp;
  config::apply_context_defaults(mlp);
  EXPECT_EQ(mlp.string("data.dir"), "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(mlp.string("optim.name"), "sgd");
}

// allreduce on 2 ranks x batch b equals 1 rank x batch 2b (the same 2b windows; mean loss over
// positions, so the averaged gradient is the big batch's): the change of the parameters over 3
// SGD steps (linear in the gradients; AdamW's normalisation would magnify rounding in near-zero
// gradients) agrees to relative L2 < 1e-5, and both replicas are bitwise equal.
TEST(GptAllreduce, TwoRanksOfBatchBEqualOneRankOfBatch2B) {
  if (world_size() != 2) GTEST_SKIP() << "needs 2 ranks";
  Scratch s;
  auto c = gpt_config(s, "allreduce", "iid", 3);
  c.set_text("optim.name=sgd");
  c.set_text("optim.lr=0.5");
  const data::TextCorpus corpus = data::read_text_corpus(s.corpus());
  const int context = 8, b = 4;
  const auto options = model::arch_options(8, 16, 1, 2);
  model::Model big("gpt", 2 * b, 5, model::Compute::fp32, model::Storage::float32, options);
  model::Model mine("gpt", b, 5, model::Compute::fp32, model::Storage::float32, options);
  const std::vector<float> start(big.params().begin(), big.params().end());
  auto big_opt = optim::make_optimizer(c, big.num_params(), false);
  auto my_opt = optim::make_optimizer(c, mine.num_params(), false);
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
  auto strategy = sync::make_strategy(c);
  sync::StepContext ctx{0, comm, mine, *my_opt, 0.0f};
  strategy->on_start(ctx);
  // The same 2b windows on both ranks (rank key 0 of the stream), a new set every step.
  data::TextWindows windows(corpus, {0, 1, 2, 3}, context, 2 * b, 9, 0);
  const int rank = world_rank();
  for (int step = 1; step <= 3; ++step) {
    const data::Batch all = windows.next();
    big.forward_backward(all);
    big_opt->step(big.param_store(), big.grad_store());
    const data::Batch half{all.images + rank * b * context, all.labels + rank * b * context, b};
    ctx.step = step;
    ctx.local_loss = mine.forward_backward(half);
    strategy->after_backward(ctx);
    my_opt->step(mine.param_store(), mine.grad_store());
    strategy->after_update(ctx);
  }
  const auto x = mine.params(), y = big.params();
  ASSERT_EQ(x.size(), y.size());
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    diff += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
    norm += (static_cast<double>(y[i]) - start[i]) * (static_cast<double>(y[i]) - start[i]);
  }
  ASSERT_GT(norm, 0.0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-5);
  std::vector<float> other(x.begin(), x.end());
  MPI_Bcast(other.data(), static_cast<int>(other.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  EXPECT_EQ(0, std::memcmp(other.data(), x.data(), x.size() * sizeof(float)));
}

}  // namespace
}  // namespace lowsync::app
