// The training loop of one rank. Per step (STYLE.md): loader.next, forward_backward,
// strategy.after_backward, optimizer.step (unless the strategy owns the update),
// strategy.after_update. Every log.every steps all ranks meet in one small "obs" allreduce that
// combines the loss, a non-finite flag and the ledger, so a NaN on any rank stops all of them at
// the same step. Evaluation uses the average of the replicas (the global model), split over ranks.
#include "lowsync/app/trainer.hpp"

#include "lowsync/app/zo_trainer.hpp"

#include "lowsync/comm/netmodel.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/data/partition.hpp"
#include "lowsync/io/metrics.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/sync/strategy.hpp"
#include "lowsync/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace lowsync::app {
namespace {

using Json = nlohmann::json;

// Steps excluded from samples_per_s (first-touch allocation, primitive JIT warm-up).
std::int64_t warmup_steps(std::int64_t steps) { return std::min<std::int64_t>(steps / 10, 20); }

class Progress {
 public:
  Progress(const std::string& mode, int rank, std::int64_t total) : total_(total) {
    const bool tty = ::isatty(::fileno(stderr)) != 0;
    enabled_ = rank == 0 && mode != "off";
    bar_ = enabled_ && (mode == "bar" || (mode == "auto" && tty));
  }
  void update(std::int64_t step, double loss, double samples_per_s, double elapsed, double acc) {
    if (!enabled_) return;
    const double eta = step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(total_ - step) : 0.0;
    const std::string acc_text = std::isnan(acc) ? "" : fmt::format("  test_acc {:.4f}", acc);
    const std::string line = fmt::format("step {:>6}/{}  loss {:.4f}  {:.0f} samples/s  ETA {:.0f}s{}", step, total_,
                                         loss, samples_per_s, eta, acc_text);
    if (bar_) fmt::print(stderr, "\r{:<100}", line);
    else fmt::print(stderr, "lowsync: {}\n", line);
    std::fflush(stderr);
  }
  void finish() {
    if (bar_) fmt::print(stderr, "\n");
  }

 private:
  std::int64_t total_;
  bool enabled_ = false;
  bool bar_ = false;
};

struct Evaluator {
  std::vector<float> images;  // this rank's slice of the test set, [n, 784]
  std::vector<std::int32_t> labels;
  memory::TrackedBuffer<float> saved_params;  // the local replica while the average is evaluated

  Evaluator(const data::Dataset& test, int rank, int size, std::size_t num_params) {
    const std::int64_t first = test.count * rank / size, last = test.count * (rank + 1) / size;
    images.resize(static_cast<std::size_t>(last - first) * test.sample_size());
    test.images_as_float(first, last - first, images.data());
    labels.assign(test.labels.begin() + first, test.labels.begin() + last);
    if (size > 1) saved_params = memory::TrackedBuffer<float>("eval.saved_params", num_params);
  }

  // Loss and accuracy of the mean of the replicas over the whole test set.
  model::EvalResult run(model::Model& model, comm::Communicator& comm) {
    auto params = model.params();
    if (comm.size() > 1) {
      std::copy(params.begin(), params.end(), saved_params.data());
      comm.allreduce(params, comm::ReduceOp::sum, "obs.eval");
      const float inv = 1.0f / static_cast<float>(comm.size());
      for (float& p : params) p *= inv;
    }
    const auto local = model.evaluate(images.data(), labels.data(), static_cast<std::int64_t>(labels.size()));
    if (comm.size() > 1) std::copy(saved_params.data(), saved_params.data() + params.size(), params.begin());
    double sums[3] = {local.loss * static_cast<double>(local.samples), local.accuracy * static_cast<double>(local.samples),
                      static_cast<double>(local.samples)};
    comm.allreduce(std::span<double>(sums, 3), comm::ReduceOp::sum, "obs.eval");
    return {sums[0] / sums[2], sums[1] / sums[2], static_cast<std::int64_t>(sums[2])};
  }
};

// Keys declared in the schema for features that are not built yet: refuse rather than ignore.
void reject_unimplemented(const config::Config& cfg) {
  auto refuse = [](const std::string& what) { fail("{} is not implemented in this version of lowsync", what); };
  if (cfg.string("optim.name") == "zo" && cfg.string("precision.compute") == "fp8")
    fail("optim.name = \"zo\" cannot run with precision.compute = \"fp8\": loss differences of mu-sized perturbations vanish below fp8 resolution");
  if (cfg.string("precision.compute") != "fp32") refuse("precision.compute = \"" + cfg.string("precision.compute") + "\"");
  if (cfg.string("precision.wire") != "fp32") refuse("precision.wire = \"" + cfg.string("precision.wire") + "\"");
  if (cfg.string("prune.method") != "none" && cfg.string("optim.name") != "zo")
    refuse("prune.method = \"" + cfg.string("prune.method") + "\" with backprop (optim.name = \"zo\" only)");
  if (cfg.integer("checkpoint.every") > 0 || cfg.real("checkpoint.every_seconds") > 0.0) refuse("checkpointing");
  if (cfg.real("train.max_seconds") > 0.0) refuse("train.max_seconds");
}

}  // namespace

TrainResult train(const config::Config& cfg, comm::Communicator& comm, const std::filesystem::path& out_dir) {
  cfg.validate();
  reject_unimplemented(cfg);
  if (cfg.string("optim.name") == "zo") return train_zo(cfg, comm, out_dir);  // backprop-free path
  const int rank = comm.rank(), world = comm.size();
  const Timer wall;
  const std::int64_t steps = cfg.integer("train.steps");
  const int batch = static_cast<int>(cfg.integer("train.batch"));
  const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  const std::int64_t log_every = cfg.integer("log.every"), eval_every = cfg.integer("eval.every");

  if (rank == 0) {
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) fail("cannot create output folder '{}': {}", out_dir.string(), ec.message());
    io::write_file_atomic(out_dir / "config.toml", cfg.to_toml());
  }

  // Data: every rank reads the files and computes the same partition.
  const auto fm = data::load_fashion_mnist(cfg.string("data.dir"), cfg.integer("data.train_limit"));
  data::PartitionSpec spec{cfg.string("data.partition"), cfg.real("data.alpha"),
                           static_cast<int>(cfg.integer("data.shards_per_rank")), seed};
  auto parts = data::partition(fm.train.labels, world, spec);
  Json histograms = Json::array();
  for (int r = 0; r < world; ++r) histograms.push_back(data::label_histogram(parts[r], fm.train.labels));
  if (world > 1) {
    for (int r = 0; r < std::min(world, 8); ++r)
      log::info("rank {} labels {}", r, histograms[r].dump());
    if (world > 8) log::info("... ({} ranks; all histograms in summary.json)", world);
  }
  data::Loader loader(fm.train, std::move(parts[rank]), batch, seed, rank);

  model::Model model(cfg.string("model.arch"), batch, seed);
  model.set_eval_batch(static_cast<int>(cfg.integer("eval.batch")));
  auto optimizer = optim::make_optimizer(cfg, model.num_params());
  auto strategy = sync::make_strategy(cfg);
  Evaluator evaluator(fm.test, rank, world, model.num_params());
  log::info("{} ({} parameters), {} ranks x batch {}, strategy {}, optimizer {}, {} steps, output {}",
            model.arch(), model.num_params(), world, batch, strategy->name(), optimizer->name(), steps,
            out_dir.string());

  std::vector<std::string> columns = {"step", "epoch", "wall_s", "compute_s", "comm_s", "loss", "test_loss",
                                      "test_acc", "bytes_sent", "payload_bytes", "syncs", "samples_per_s"};
  for (const auto& m : strategy->metric_names()) columns.push_back(m);
  io::MetricsCsv csv;
  if (rank == 0) csv = io::MetricsCsv(out_dir / "metrics.csv", columns);

  sync::StepContext ctx{0, comm, model, *optimizer, 0.0f};
  strategy->on_start(ctx);

  Progress progress(cfg.string("log.progress"), rank, steps);
  double compute_s = 0.0, train_s = 0.0, timed_s = 0.0;
  double loss_window = 0.0;
  std::int64_t window_steps = 0, timed_steps = 0;
  double window_train_s = 0.0;
  bool nonfinite = false;
  double last_loss = NAN, last_test_acc = NAN, last_test_loss = NAN;
  const std::int64_t warmup = warmup_steps(steps);

  for (std::int64_t step = 1; step <= steps; ++step) {
    comm.set_step(step);
    ctx.step = step;
    const Timer step_timer;
    const data::Batch b = loader.next();
    const Timer compute_timer;
    const float loss = model.forward_backward(b);
    double step_compute = compute_timer.seconds();
    ctx.local_loss = loss;
    strategy->after_backward(ctx);
    if (!strategy->owns_update()) {
      const Timer t;
      optimizer->step(model.params(), model.grads());
      step_compute += t.seconds();
    }
    strategy->after_update(ctx);
    const double step_s = step_timer.seconds();
    compute_s += step_compute;
    train_s += step_s;
    window_train_s += step_s;
    if (step > warmup) {
      timed_s += step_s;
      ++timed_steps;
    }
    nonfinite = nonfinite || !std::isfinite(loss);
    loss_window += loss;
    ++window_steps;

    const bool eval_now = step == steps || (eval_every > 0 && step % eval_every == 0);
    if (step % log_every != 0 && !eval_now) continue;

    // One "obs" allreduce: loss sum, non-finite flag, bytes (for the rank mean).
    const auto total = comm.ledger().total();
    double obs[5] = {loss_window / static_cast<double>(window_steps), nonfinite ? 1.0 : 0.0,
                     static_cast<double>(total.wire_bytes), static_cast<double>(total.payload_bytes), total.seconds};
    comm.allreduce(std::span<double>(obs, 5), comm::ReduceOp::sum, "obs.metrics");
    if (obs[1] > 0.0)
      fail("non-finite training loss at step {} on {} rank(s) (lower optim.lr?)", step, static_cast<int>(obs[1]));
    last_loss = obs[0] / world;
    std::optional<double> test_loss, test_acc;
    if (eval_now) {
      const auto ev = evaluator.run(model, comm);
      test_loss = last_test_loss = ev.loss;
      test_acc = last_test_acc = ev.accuracy;
    }
    const double now = wall.seconds();
    const double window_rate = static_cast<double>(window_steps * batch * world) / std::max(window_train_s, 1e-9);
    std::vector<std::optional<double>> row = {static_cast<double>(step), loader.epoch_progress(), now, compute_s,
                                              obs[4] / world, last_loss, test_loss, test_acc, obs[2] / world,
                                              obs[3] / world, static_cast<double>(strategy->syncs()), window_rate};
    for (double v : strategy->metric_values()) row.emplace_back(v);
    csv.write_row(row);
    progress.update(step, last_loss, window_rate, now, test_acc.value_or(NAN));
    loss_window = 0.0;
    window_steps = 0;
    window_train_s = 0.0;
  }
  progress.finish();

  // Aggregate the run over ranks: means of bytes and times, maxima of memory.
  const auto total = comm.ledger().total();
  double sums[4] = {static_cast<double>(total.wire_bytes), static_cast<double>(total.payload_bytes), total.seconds,
                    compute_s};
  comm.allreduce(std::span<double>(sums, 4), comm::ReduceOp::sum, "obs.summary");
  std::int64_t maxima[4] = {memory::peak_rss_bytes(), memory::peak_bytes(), static_cast<std::int64_t>(total.wire_bytes),
                            static_cast<std::int64_t>(timed_s * 1e6)};
  comm.allreduce(std::span<std::int64_t>(maxima, 4), comm::ReduceOp::max, "obs.summary");
  Json by_traffic = Json::object();
  for (const auto& [key, e] : comm.ledger().entries())
    if (!key.second.starts_with("obs")) by_traffic[key.second] = by_traffic.value(key.second, 0.0) + static_cast<double>(e.wire_bytes);
  Json by_collective = Json::object();
  for (const auto& [key, e] : comm.ledger().entries())
    if (!key.second.starts_with("obs"))
      by_collective[std::string(comm::collective_name(key.first))] =
          by_collective.value(std::string(comm::collective_name(key.first)), 0.0) + static_cast<double>(e.calls);

  Json ledger = Json::array();
  for (const auto& [key, e] : comm.ledger().entries())
    if (!key.second.starts_with("obs"))
      ledger.push_back({{"collective", std::string(comm::collective_name(key.first))}, {"traffic", key.second},
                        {"calls", e.calls}, {"payload_bytes", e.payload_bytes}, {"wire_bytes", e.wire_bytes},
                        {"seconds", e.seconds}});
  const comm::NetworkModel net{cfg.real("net.alpha_us") * 1e-6, cfg.real("net.beta_gbps") * 1e9 / 8.0};
  const double slowest_timed_s = static_cast<double>(maxima[3]) * 1e-6;
  Json cfg_json = Json::object();
  for (const auto& [k, v] : cfg.values()) std::visit([&](const auto& x) { cfg_json[k] = x; }, v);
  Json summary = {
      {"lowsync_version", LOWSYNC_VERSION},
      {"arch", model.arch()},
      {"strategy", std::string(strategy->name())},
      {"optimizer", std::string(optimizer->name())},
      {"precision_compute", cfg.string("precision.compute")},
      {"precision_wire", cfg.string("precision.wire")},
      {"partition", cfg.string("data.partition")},
      {"ranks", world},
      {"steps", steps},
      {"batch_per_rank", batch},
      {"num_params", model.num_params()},
      {"final_test_accuracy", last_test_acc},
      {"final_test_loss", last_test_loss},
      {"final_loss", last_loss},
      {"samples_per_s", timed_steps > 0 ? static_cast<double>(timed_steps * batch * world) / slowest_timed_s : 0.0},
      {"wall_s", wall.seconds()},
      {"compute_s", sums[3] / world},
      {"compute_s_per_step", steps > 0 ? sums[3] / world / static_cast<double>(steps) : 0.0},
      {"comm_s", sums[2] / world},
      {"bytes_sent_per_rank", sums[0] / world},
      {"bytes_sent_max_rank", maxima[2]},
      {"payload_bytes_per_rank", sums[1] / world},
      {"bytes_by_traffic", by_traffic},
      {"ledger", ledger},
      {"net_alpha_s", net.alpha_seconds},
      {"net_beta_Bps", net.beta_bytes_per_s},
      {"modeled_comm_s", net.ledger_seconds(comm.ledger(), world)},
      {"calls_by_collective", by_collective},
      {"syncs", strategy->syncs()},
      {"peak_rss_bytes", maxima[0]},
      {"train_state_bytes", maxima[1]},
      {"forward_flops_per_sample", model.forward_flops_per_sample()},
      {"label_histograms", histograms},
      {"config", cfg_json},
  };
  if (rank == 0) io::write_file_atomic(out_dir / "summary.json", summary.dump(2) + "\n");
  log::info("done: test accuracy {:.4f}, loss {:.4f}, {:.0f} samples/s, {:.2f} MB sent per rank, {:.1f} s -> {}",
            last_test_acc, last_loss, summary["samples_per_s"].get<double>(), sums[0] / world / 1e6, wall.seconds(),
            (out_dir / "summary.json").string());
  return {summary, 0};
}

}  // namespace lowsync::app
