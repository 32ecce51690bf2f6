// ranks: 1 2 4
// PowerSGD (ALGORITHMS.md §7) on K ranks: rank = min(n, m) reproduces the plain mean; two steps
// (P, Q, every rank's error, G_hat) against an fp64 reference that simulates all K ranks; error
// feedback delivers what a rank-1 step withholds; the byte ledger equals 4 r (n + m) per matrix
// plus the uncompressed tensors; replicas of a real MLP (fp32 and bf16 compute) stay bitwise
// identical for 40 steps; a checkpointed run resumes bitwise (error and Q restored).
#include "lowsync/sync/powersgd.hpp"

#include "support/training.hpp"

#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/trainer.hpp"
#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace lowsync::sync {
namespace {

using testing::world_rank;
using testing::world_size;
using Mat = std::vector<double>;

// Gradient value i of `rank` at `step` (a pure function, so every rank can rebuild all ranks').
float grad_value(std::uint64_t seed, int rank, std::int64_t step, std::size_t i) {
  return normal01(stream_key({seed, static_cast<std::uint64_t>(rank), static_cast<std::uint64_t>(step)}), i);
}

std::vector<float> grads_of(std::uint64_t seed, int rank, std::int64_t step, std::size_t n) {
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) g[i] = grad_value(seed, rank, step, i);
  return g;
}

std::size_t total_count(const std::vector<model::ParamInfo>& infos) {
  return infos.back().offset + infos.back().count;
}

double rel_l2(std::span<const float> got, std::span<const double> want) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

TEST(PowerSgd, FullRankReproducesThePlainMean) {
  // A matrix taller than wide, one wider than tall, a conv kernel (4, 3*2*2) and a bias.
  const std::vector<model::ParamInfo> infos = {
      {"a", {12, 7}, 0, 84}, {"b", {5, 16}, 84, 80}, {"c", {4, 3, 2, 2}, 164, 48}, {"bias", {9}, 212, 9}};
  PowerSgdOptions o;
  o.rank = 64;  // capped at min(n, m) per matrix
  o.start_iter = 0;
  o.min_compression_rate = 0.0;  // compress every matrix although full rank saves nothing
  PowerSgdStrategy s(o);
  comm::Communicator comm(MPI_COMM_WORLD);
  const std::size_t d = total_count(infos);
  Mat withheld(d, 0.0);  // what this rank keeps: sum over steps of (its gradient - the mean)
  for (std::int64_t step = 1; step <= 3; ++step) {  // steps 2, 3: warm-started Q, error near 0
    auto g = grads_of(21, comm.rank(), step, d);
    Mat mean(d, 0.0);
    for (int k = 0; k < comm.size(); ++k)
      for (std::size_t i = 0; i < d; ++i) mean[i] += grad_value(21, k, step, i);
    for (double& v : mean) v /= comm.size();
    for (std::size_t i = 0; i < d; ++i) withheld[i] += g[i] - mean[i];
    s.step(comm, infos, g, step);
    for (std::size_t t = 0; t < infos.size(); ++t) {
      EXPECT_EQ(s.plan()[t].rank, t < 3 ? std::min(s.plan()[t].rows, s.plan()[t].cols) : 0U);
      const auto got = std::span<const float>(g).subspan(infos[t].offset, infos[t].count);
      const auto want = std::span<const double>(mean).subspan(infos[t].offset, infos[t].count);
      EXPECT_LT(rel_l2(got, want), 1e-5) << infos[t].name << " step " << step;
    }
  }
  // Nothing was lost: each rank's error is exactly its own deviation from the mean (0 on one
  // rank); the uncompressed bias keeps no error.
  double e2 = 0.0, w2 = 0.0;
  for (std::size_t i = 0; i < 212; ++i) {
    e2 += (s.error()[i] - withheld[i]) * (s.error()[i] - withheld[i]);
    w2 += withheld[i] * withheld[i];
  }
  EXPECT_LT(std::sqrt(e2 / std::max(w2, 1.0)), 1e-5);
}

// ---- the fp64 reference of one step over all K ranks ------------------------------------

void ref_orthonormalize(Mat& pt, std::size_t r, std::size_t n) {
  for (std::size_t j = 0; j < r; ++j) {
    for (std::size_t k = 0; k < j; ++k) {
      double dp = 0.0;
      for (std::size_t i = 0; i < n; ++i) dp += pt[k * n + i] * pt[j * n + i];
      for (std::size_t i = 0; i < n; ++i) pt[j * n + i] -= dp * pt[k * n + i];
    }
    double s = 0.0;
    for (std::size_t i = 0; i < n; ++i) s += pt[j * n + i] * pt[j * n + i];
    for (std::size_t i = 0; i < n; ++i) pt[j * n + i] /= std::sqrt(s);
  }
}

// errors[k] [n, m] of every rank k, Q^T [r, m]: updated; returns G_hat, pt = P^T.
Mat ref_step(const std::vector<Mat>& g, std::vector<Mat>& errors, Mat& qt, std::size_t n, std::size_t m,
             std::size_t r, Mat& pt) {
  const std::size_t K = g.size();
  std::vector<Mat> mm(K, Mat(n * m));
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t i = 0; i < n * m; ++i) mm[k][i] = g[k][i] + errors[k][i];
  pt.assign(r * n, 0.0);  // mean over ranks of M_k Q
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t c = 0; c < r; ++c)
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) pt[c * n + i] += mm[k][i * m + j] * qt[c * m + j] / K;
  ref_orthonormalize(pt, r, n);
  qt.assign(r * m, 0.0);  // mean over ranks of M_k^T P
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t c = 0; c < r; ++c)
      for (std::size_t j = 0; j < m; ++j)
        for (std::size_t i = 0; i < n; ++i) qt[c * m + j] += mm[k][i * m + j] * pt[c * n + i] / K;
  Mat ghat(n * m, 0.0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < m; ++j)
      for (std::size_t c = 0; c < r; ++c) ghat[i * m + j] += pt[c * n + i] * qt[c * m + j];
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t i = 0; i < n * m; ++i) errors[k][i] = mm[k][i] - ghat[i];
  return ghat;
}

double max_rel(std::span<const float> got, const Mat& want) {
  double scale = 0.0, worst = 0.0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  return worst / scale;
}

TEST(PowerSgd, TwoStepsOnKRanksMatchTheReference) {
  const std::size_t n = 8, m = 10, r = 2;
  const std::vector<model::ParamInfo> infos = {{"w", {8, 10}, 0, n * m}, {"b", {8}, n * m, n}};
  PowerSgdOptions o;
  o.rank = 2;
  o.start_iter = 0;
  PowerSgdStrategy s(o);
  comm::Communicator comm(MPI_COMM_WORLD);
  const int K = comm.size();
  s.prepare(infos, n * m + n);
  ASSERT_EQ(s.plan()[0].rank, r);  // 2 * 18 * 2 = 72 < 80
  ASSERT_EQ(s.plan()[1].rank, 0U);
  EXPECT_TRUE(testing::same_value_on_all_ranks(s.q()[0]));
  Mat qt(s.q().begin(), s.q().end());
  std::vector<Mat> errors(static_cast<std::size_t>(K), Mat(n * m, 0.0));
  for (std::int64_t step = 1; step <= 2; ++step) {
    SCOPED_TRACE(step);
    std::vector<Mat> g(static_cast<std::size_t>(K));
    Mat bias_mean(n, 0.0);
    for (int k = 0; k < K; ++k) {
      for (std::size_t i = 0; i < n * m; ++i) g[k].push_back(grad_value(5, k, step, i));
      for (std::size_t i = 0; i < n; ++i) bias_mean[i] += grad_value(5, k, step, n * m + i) / K;
    }
    Mat pt;
    const Mat ghat = ref_step(g, errors, qt, n, m, r, pt);
    auto mine = grads_of(5, comm.rank(), step, n * m + n);
    s.step(comm, infos, mine, step);
    EXPECT_LT(max_rel(std::span<const float>(mine).first(n * m), ghat), 1e-5);
    EXPECT_LT(max_rel(s.q(), qt), 1e-5);
    EXPECT_LT(max_rel(s.p_pack().subspan(s.plan()[0].p_offset, r * n), pt), 1e-5);
    EXPECT_LT(max_rel(s.error().first(n * m), errors[static_cast<std::size_t>(comm.rank())]), 1e-5);
    EXPECT_LT(max_rel(std::span<const float>(mine).subspan(n * m, n), bias_mean), 1e-6);
  }
}

TEST(PowerSgd, ErrorFeedbackDeliversWhatRankOneWithholds) {
  // A constant gradient per rank, rank 1 on a 6 x 5 matrix: one step sends a poor copy of the
  // mean, but the error carries the rest, so the sum of what was sent approaches T * mean and,
  // exactly, sum_t G_hat(t) + e_k(T) = T * G_k on every rank k.
  const std::size_t n = 6, m = 5, d = n * m;
  const std::vector<model::ParamInfo> infos = {{"w", {6, 5}, 0, d}};
  PowerSgdOptions o;
  o.rank = 1;
  o.start_iter = 0;
  PowerSgdStrategy s(o);
  comm::Communicator comm(MPI_COMM_WORLD);
  const auto mine = grads_of(9, comm.rank(), 1, d);
  Mat mean(d, 0.0);
  for (int k = 0; k < comm.size(); ++k)
    for (std::size_t i = 0; i < d; ++i) mean[i] += grad_value(9, k, 1, i) / comm.size();
  const int steps = 300;
  Mat sent(d, 0.0);
  double first_step_error = 0.0;
  for (int step = 1; step <= steps; ++step) {
    auto g = mine;
    s.step(comm, infos, g, step);
    for (std::size_t i = 0; i < d; ++i) sent[i] += g[i];
    if (step == 1) first_step_error = rel_l2(g, mean);
  }
  EXPECT_GT(first_step_error, 0.2);  // rank 1 of a random 6 x 5 matrix loses much
  std::vector<float> sent_f(sent.begin(), sent.end());
  Mat target(d);
  for (std::size_t i = 0; i < d; ++i) target[i] = steps * mean[i];
  EXPECT_LT(rel_l2(sent_f, target), 0.05);
  // The ledger of one rank: what it was given = what was sent + what it still holds.
  std::vector<float> books(d);
  Mat given(d);
  for (std::size_t i = 0; i < d; ++i) {
    books[i] = static_cast<float>(sent[i] + s.error()[i]);
    given[i] = static_cast<double>(steps) * mine[i];
  }
  EXPECT_LT(rel_l2(books, given), 1e-4);
}

TEST(PowerSgd, WireBytesEqualTheFormula) {
  model::Model mlp("mlp", 2, 1);
  const auto& infos = mlp.param_infos();
  const std::size_t d = mlp.num_params();
  PowerSgdOptions o;  // rank 4, rate 2
  o.start_iter = 3;
  PowerSgdStrategy s(o);
  comm::Communicator comm(MPI_COMM_WORLD);
  const int steps = 5;
  for (int step = 1; step <= steps; ++step) {
    auto g = grads_of(4, comm.rank(), step, d);
    s.step(comm, infos, g, step);
  }
  // The formula, from the shapes: 4 r (n + m) bytes per compressed matrix, 4 per other value.
  std::uint64_t p_floats = 0, q_floats = 0;
  for (const auto& info : infos) {
    if (info.shape.size() == 1) {
      p_floats += info.count;
    } else {
      p_floats += 4 * static_cast<std::uint64_t>(info.shape[0]);
      q_floats += 4 * (info.count / static_cast<std::uint64_t>(info.shape[0]));
    }
  }
  EXPECT_EQ(p_floats + q_floats, 778U + 4U * (512 + 784) + 4U * (256 + 512) + 4U * (10 + 256));
  const auto& ledger = comm.ledger();
  const auto check = [&](std::string_view traffic, std::uint64_t calls, std::uint64_t bytes_per_call) {
    const auto e = ledger.by_traffic(traffic);
    EXPECT_EQ(e.calls, calls) << traffic;
    EXPECT_EQ(e.payload_bytes, calls * bytes_per_call) << traffic;
    EXPECT_EQ(e.wire_bytes, calls * comm::wire_bytes(comm::Collective::allreduce, bytes_per_call, comm.size(),
                                                     comm.rank() == 0))
        << traffic;
  };
  check("grad", 3, 4 * d);
  check("powersgd.p", 2, 4 * p_floats);
  check("powersgd.q", 2, 4 * q_floats);
  EXPECT_EQ(ledger.total().calls, 3U + 2U + 2U);
  EXPECT_EQ(s.metric_values()[0], static_cast<double>(4 * (p_floats + q_floats)));
  // The target: >= 20x fewer bytes per step than the fp32 allreduce (53x here).
  EXPECT_GT(static_cast<double>(d) / static_cast<double>(p_floats + q_floats), 50.0);
}

// True when every rank holds bitwise the same values (compared with rank 0's copy).
bool identical_on_all_ranks(comm::Communicator& comm, std::span<const float> x) {
  std::vector<float> root(x.begin(), x.end());
  comm.broadcast(std::span<float>(root), 0, "obs.test");
  const bool same = std::memcmp(root.data(), x.data(), x.size() * sizeof(float)) == 0;
  return !comm.any(!same, "obs.test");
}

TEST(PowerSgd, ReplicasStayBitwiseIdenticalOnARealMlp) {
  for (const model::Compute compute : {model::Compute::fp32, model::Compute::bf16}) {
    SCOPED_TRACE(compute == model::Compute::bf16 ? "bf16" : "fp32");
    comm::Communicator comm(MPI_COMM_WORLD);
    config::Config cfg;
    for (const char* s : {"sync.strategy=powersgd", "sync.powersgd.start_iter=3", "sync.powersgd.rank=2", "optim.lr=0.05",
                          "optim.momentum=0.9"})
      cfg.set_text(s);
    const int batch = 8;
    model::Model model("mlp", batch, 100 + static_cast<std::uint64_t>(world_rank()), compute);  // on_start must fix it
    auto opt = optim::make_optimizer(cfg, model.num_params());
    auto strategy = make_strategy(cfg);
    StepContext ctx{0, comm, model, *opt, 0.0f};
    strategy->on_start(ctx);
    bool identical = true;
    double first_loss = 0.0, last_loss = 0.0;
    for (int step = 1; step <= 40; ++step) {
      ctx.step = step;
      const auto b = testing::synthetic_batch(3, step, world_rank() * batch, batch);
      const float loss = model.forward_backward(b.batch());
      (step == 1 ? first_loss : last_loss) = loss;
      strategy->after_backward(ctx);
      model.round_to_compute(model.grads());  // as the learner does
      opt->step(model.params(), model.grads());
      strategy->after_update(ctx);
      model.round_to_compute(model.params());
      if (step % 10 == 0) identical = identical && identical_on_all_ranks(comm, model.params());
    }
    EXPECT_TRUE(identical);
    EXPECT_LT(last_loss, first_loss);  // it learns: the compressed steps are descent steps
    EXPECT_EQ(strategy->syncs(), 40);
    if (world_size() > 1) {
      // The error is local: ranks with different data hold different errors.
      auto* p = dynamic_cast<PowerSgdStrategy*>(strategy.get());
      ASSERT_NE(p, nullptr);
      EXPECT_FALSE(identical_on_all_ranks(comm, p->error()));
      EXPECT_TRUE(identical_on_all_ranks(comm, p->q()));
    }
  }
}

// ---- checkpoints through the trainer -----------------------------------------------------

namespace fs = std::filesystem;

fs::path scratch_dir(const std::string& tag) {
  char name[256] = {};
  if (world_rank() == 0) {
    const fs::path dir = fs::temp_directory_path() / fmt::format("lowsync-powersgd-{}-{}", ::getpid(), tag);
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::snprintf(name, sizeof name, "%s", dir.c_str());
  }
  MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
  return name;
}

config::Config small_config(std::int64_t steps, const std::string& compute) {
  config::Config c;
  for (const std::string s : {"model.arch=mlp", "data.train_limit=600", "train.batch=8", "log.every=1", "eval.every=0",
                              "eval.batch=500", "log.progress=off", "comm.deterministic=true", "sync.strategy=powersgd",
                              "sync.powersgd.start_iter=2", "optim.momentum=0.9"})
    c.set_text(s);
  c.set_text("precision.compute=" + compute);
  c.set_text(fmt::format("train.steps={}", steps));
  return c;
}

// Every per-rank float or int buffer of two checkpoints, bitwise (timings and the ledger's
// seconds left out).
void expect_same_state(const fs::path& a, const fs::path& b) {
  comm::Communicator comm(MPI_COMM_WORLD);
  io::CheckpointReader ra(a, comm), rb(b, comm);
  const auto names = ra.dataset_names();
  ASSERT_EQ(names, rb.dataset_names());
  bool saw_error = false, saw_q = false;
  for (const auto& name : names) {
    if (name == "trainer/loop" || name == "comm/ledger" || !ra.is_per_rank(name)) continue;
    saw_error = saw_error || name == "strategy/powersgd_error";
    saw_q = saw_q || name == "strategy/powersgd_q";
    const std::size_t n = ra.row_length(name);
    ASSERT_EQ(n, rb.row_length(name)) << name;
    const auto row = static_cast<std::size_t>(world_rank());
    if (ra.dataset_dtype(name) == DType::f32) {
      std::vector<float> x(n), y(n);
      ra.read_row<float>(name, row, std::span<float>(x));
      rb.read_row<float>(name, row, std::span<float>(y));
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), n * sizeof(float))) << name << " differs";
    } else {
      std::vector<std::int64_t> x(n), y(n);
      ra.read_row<std::int64_t>(name, row, std::span<std::int64_t>(x));
      rb.read_row<std::int64_t>(name, row, std::span<std::int64_t>(y));
      EXPECT_EQ(x, y) << name << " differs";
    }
  }
  EXPECT_TRUE(saw_error && saw_q);
}

TEST(PowerSgdCheckpoint, ResumedRunEqualsUninterrupted) {
  for (const std::string compute : {"fp32", "bf16"}) {
    SCOPED_TRACE(compute);
    const fs::path dir = scratch_dir("resume-" + compute);
    const std::int64_t k = 3;  // compressed steps 3..6 on both sides of the checkpoint
    {
      comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
      auto c = small_config(2 * k, compute);
      c.set_text(fmt::format("checkpoint.every={}", 2 * k));
      const auto r = app::train(c, comm, dir / "full");
      EXPECT_EQ(r.exit_code, 0);
      EXPECT_EQ(r.summary["precision_storage"], "float");  // bf16: P, Q, e fp32 on float storage
      EXPECT_EQ(r.summary["syncs"], 2 * k);
    }
    {
      comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
      auto c = small_config(k, compute);
      c.set_text(fmt::format("checkpoint.every={}", k));
      app::train(c, comm, dir / "split");
    }
    const auto mid = io::checkpoint_path(dir / "split" / "checkpoints", k);
    {
      comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
      auto c = app::checkpoint_config(mid, comm);
      c.set_text(fmt::format("train.steps={}", 2 * k));
      const auto r = app::train(c, comm, dir / "split", mid);
      EXPECT_EQ(r.exit_code, 0);
    }
    expect_same_state(io::checkpoint_path(dir / "full" / "checkpoints", 2 * k),
                      io::checkpoint_path(dir / "split" / "checkpoints", 2 * k));
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(dir);
  }
}

TEST(PowerSgdCheckpoint, NativeStorageIsRefusedByName) {
  comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
  auto c = small_config(1, "bf16");
  c.set_text("precision.storage=native");
  const fs::path dir = scratch_dir("native");
  try {
    app::train(c, comm, dir / "run");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("powersgd"), std::string::npos) << e.what();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace lowsync::sync
