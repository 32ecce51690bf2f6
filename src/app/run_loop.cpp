// The training loop shared by every learner (app/run_loop.hpp). Per step: learner.step, then one
// "obs.control" allreduce in which every rank learns what any rank saw (stop signal, time limit,
// checkpoint due, non-finite loss), so all ranks stop, log, evaluate and checkpoint at the same
// step. Every log.every steps one "obs.metrics" allreduce averages the loss and the bytes.
#include "lowsync/app/run_loop.hpp"

#include "lowsync/app/signals.hpp"
#include "lowsync/comm/netmodel.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/data/partition.hpp"
#include "lowsync/data/registry.hpp"
#include "lowsync/data/text.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/io/metrics.hpp"
#include "lowsync/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <numbers>

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
  // `tokens_per_sample` > 0 (text): throughput in tokens/s and the validation loss in its place.
  void update(std::int64_t step, double loss, double samples_per_s, double elapsed, double acc, double test_loss,
              int tokens_per_sample) {
    if (!enabled_) return;
    const double eta = step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(total_ - step) : 0.0;
    std::string eval_text, rate_text;
    if (tokens_per_sample > 0) {
      rate_text = fmt::format("{:.0f} tokens/s", samples_per_s * tokens_per_sample);
      if (!std::isnan(test_loss))
        eval_text = fmt::format("  val_loss {:.4f} ({:.3f} bits/byte)  val_acc {:.4f}", test_loss,
                                test_loss / std::numbers::ln2, acc);
    } else {
      rate_text = fmt::format("{:.0f} samples/s", samples_per_s);
      if (!std::isnan(acc)) eval_text = fmt::format("  test_acc {:.4f}", acc);
    }
    const std::string line = fmt::format("step {:>6}/{}  loss {:.4f}  {}  ETA {:.0f}s{}", step, total_, loss,
                                         rate_text, eta, eval_text);
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

// A word a POSIX shell reads back unchanged: as is when it has only safe characters, else in
// single quotes (a quote inside becomes '\'').
std::string shell_quote(const std::string& word) {
  const bool safe = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || std::string_view("_-./=:,+@%").find(c) != std::string_view::npos;
  });
  if (safe) return word;
  std::string quoted = "'";
  for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// Control flags agreed by all ranks at every step boundary (one small "obs.control" allreduce).
enum Control : std::size_t { kStopSignal, kTimeLimit, kCheckpointDue, kNonfiniteLoss, kControlCount };

// The slowest rank's seconds in each non-obs ledger entry (in entries() order), or nothing when
// the ranks' ledgers do not list the same entries. A one-way collective returns on its root as
// soon as the data is handed to the network, so the root's seconds understate the transfer; the
// slowest rank's are the collective's completion time, what the network model predicts.
std::vector<double> slowest_rank_seconds(comm::Communicator& comm) {
  std::vector<double> seconds;
  std::uint64_t shape = 1469598103934665603ull;  // FNV-1a over the entries' names
  for (const auto& [key, e] : comm.ledger().entries()) {
    if (key.second.starts_with("obs")) continue;
    seconds.push_back(e.seconds);
    for (const char c : std::string(comm::collective_name(key.first)) + "/" + key.second + ";")
      shape = (shape ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  }
  const auto count = static_cast<std::int64_t>(seconds.size()), hash = static_cast<std::int64_t>(shape >> 1);
  std::int64_t agree[4] = {count, -count, hash, -hash};
  comm.allreduce(std::span<std::int64_t>(agree, 4), comm::ReduceOp::max, "obs.summary");
  if (agree[0] != -agree[1] || agree[2] != -agree[3]) return {};  // every rank sees the same verdict
  comm.allreduce(std::span<double>(seconds), comm::ReduceOp::max, "obs.summary");
  return seconds;
}

// The ledger as summary.json reports it: everything but our own "obs.*" traffic.
Json ledger_fields(const comm::ByteLedger& ledger, std::span<const double> slowest) {
  Json by_traffic = Json::object(), by_collective = Json::object(), entries = Json::array();
  for (const auto& [key, e] : ledger.entries()) {
    if (key.second.starts_with("obs")) continue;
    const std::string collective(comm::collective_name(key.first));
    by_traffic[key.second] = by_traffic.value(key.second, 0.0) + static_cast<double>(e.wire_bytes);
    by_collective[collective] = by_collective.value(collective, 0.0) + static_cast<double>(e.calls);
    entries.push_back({{"collective", collective}, {"traffic", key.second}, {"calls", e.calls},
                       {"payload_bytes", e.payload_bytes}, {"wire_bytes", e.wire_bytes}, {"seconds", e.seconds}});
    if (entries.size() <= slowest.size()) entries.back()["seconds_max_rank"] = slowest[entries.size() - 1];
  }
  // Monitoring (traffic classes "*_monitor", e.g. FDA's variance state) versus everything else
  // the strategy sends (model, grad, optimizer state, ...): rank 0's wire bytes, summing to its
  // bytes_sent.
  double monitor_bytes = 0.0, sync_bytes = 0.0;
  for (const auto& [traffic, bytes] : by_traffic.items())
    (traffic.ends_with("_monitor") ? monitor_bytes : sync_bytes) += bytes.get<double>();
  return {{"bytes_by_traffic", by_traffic}, {"calls_by_collective", by_collective}, {"ledger", entries},
          {"monitor_bytes", monitor_bytes}, {"sync_bytes", sync_bytes}};
}

}  // namespace

bool text_workload(const config::Config& cfg) {
  return data::dataset_entry(cfg.string("data.name")).kind == data::DataKind::text;
}

model::ArchOptions model_options(const config::Config& cfg) {
  return model::arch_options(cfg.integer("model.gpt.ctx"), cfg.integer("model.gpt.width"), cfg.integer("model.gpt.layers"),
                             cfg.integer("model.gpt.heads"));
}

int text_context(const config::Config& cfg) { return static_cast<int>(cfg.integer("model.gpt.ctx")); }

namespace {

// Text (gpt): this rank's sources (data.partition iid | by_source), its window stream and its
// slice of the validation windows.
void load_text_data(const config::Config& cfg, const comm::Communicator& comm, TrainingData& data) {
  const int rank = comm.rank(), world = comm.size();
  const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  const int context = text_context(cfg);
  data.text = data::dataset_entry(cfg.string("data.name")).load_text(cfg.string("data.dir"));
  const data::TextCorpus& corpus = data.text;
  const data::PartitionSpec spec{cfg.string("data.partition"), cfg.real("data.alpha"),
                                 static_cast<int>(cfg.integer("data.shards_per_rank")), seed};
  const auto windows = corpus.train_windows(context);
  auto parts = data::partition_sources(windows, world, spec);
  data.sources = Json::array();
  std::int64_t all_windows = 0;
  for (std::int64_t w : windows) all_windows += w;
  std::int64_t mine = 0;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> names;
    std::int64_t bytes = 0;
    for (int s : parts[static_cast<std::size_t>(r)]) {
      names.push_back(corpus.sources[static_cast<std::size_t>(s)].name);
      bytes += corpus.sources[static_cast<std::size_t>(s)].train_bytes;
      if (r == rank) mine += windows[static_cast<std::size_t>(s)];
    }
    if (world > 1 && r < 8)
      log::info("rank {} sources ({}, {} training bytes): {}", r, names.size(), bytes, fmt::join(names, " "));
    data.sources.push_back(names);
  }
  if (world > 8) log::info("... ({} ranks; all sources in summary.json)", world);
  data.positions = context;
  data.share = static_cast<double>(mine) / static_cast<double>(all_windows);
  data.loader = std::make_unique<data::TextWindows>(corpus, std::move(parts[static_cast<std::size_t>(rank)]), context,
                                                    static_cast<int>(cfg.integer("train.batch")), seed, rank);
  data.test = validation_slice(corpus, context, cfg.integer("eval.windows"), rank, world);
}

}  // namespace

std::unique_ptr<TrainingData> load_training_data(const config::Config& cfg, const comm::Communicator& comm) {
  auto data = std::make_unique<TrainingData>();
  if (text_workload(cfg)) {
    load_text_data(cfg, comm, *data);
    return data;
  }
  const int rank = comm.rank(), world = comm.size();
  const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  data->files = data::dataset_entry(cfg.string("data.name")).load(cfg.string("data.dir"), cfg.integer("data.train_limit"));
  const data::Dataset& train = data->files.train;
  const data::PartitionSpec spec{cfg.string("data.partition"), cfg.real("data.alpha"),
                                 static_cast<int>(cfg.integer("data.shards_per_rank")), seed};
  auto parts = data::partition(train.labels, world, spec);
  data->label_histograms = Json::array();
  for (int r = 0; r < world; ++r) data->label_histograms.push_back(data::label_histogram(parts[r], train.labels));
  if (world > 1) {
    for (int r = 0; r < std::min(world, 8); ++r) log::info("rank {} labels {}", r, data->label_histograms[r].dump());
    if (world > 8) log::info("... ({} ranks; all histograms in summary.json)", world);
  }
  data->share = static_cast<double>(parts[rank].size()) / static_cast<double>(train.labels.size());
  data->loader = std::make_unique<data::Loader>(train, std::move(parts[rank]), static_cast<int>(cfg.integer("train.batch")),
                                                seed, rank);
  data->test = test_slice(data->files.test, rank, world);
  return data;
}

TestSlice test_slice(const data::Dataset& test, int rank, int world) {
  const std::int64_t first = test.count * rank / world, last = test.count * (rank + 1) / world;
  TestSlice slice;
  slice.images.resize(static_cast<std::size_t>(last - first) * test.sample_size());
  test.images_as_float(first, last - first, slice.images.data());
  slice.labels.assign(test.labels.begin() + first, test.labels.begin() + last);
  slice.count = last - first;
  return slice;
}

TestSlice validation_slice(const data::TextCorpus& corpus, int context, std::int64_t windows, int rank, int world) {
  const auto all = data::validation_windows(corpus, context, windows);
  const auto n = static_cast<std::int64_t>(all.size());
  const std::int64_t first = n * rank / world, last = n * (rank + 1) / world;
  TestSlice slice;
  slice.count = last - first;
  slice.images.resize(static_cast<std::size_t>(slice.count * context));
  slice.labels.resize(static_cast<std::size_t>(slice.count * context));
  for (std::int64_t i = first; i < last; ++i) {
    const auto at = static_cast<std::size_t>((i - first) * context);
    data::fill_window(corpus, all[static_cast<std::size_t>(i)], context, slice.images.data() + at, slice.labels.data() + at);
  }
  return slice;
}

model::EvalResult combine_over_ranks(const model::EvalResult& local, comm::Communicator& comm) {
  double sums[3] = {local.loss * static_cast<double>(local.samples), local.accuracy * static_cast<double>(local.samples),
                    static_cast<double>(local.samples)};
  comm.allreduce(std::span<double>(sums, 3), comm::ReduceOp::sum, "obs.eval");
  return {sums[0] / sums[2], sums[1] / sums[2], static_cast<std::int64_t>(sums[2])};
}

RunLoop::RunLoop(const config::Config& cfg, comm::Communicator& comm, std::filesystem::path out_dir, const Timer& started)
    : cfg_(cfg), comm_(comm), out_dir_(std::move(out_dir)), wall_(started) {}

TrainResult RunLoop::run(Learner& learner, const std::optional<std::filesystem::path>& resume) {
  const config::Config& cfg = cfg_;
  comm::Communicator& comm = comm_;
  const int rank = comm.rank(), world = comm.size();
  const Timer& wall = wall_;  // this segment of the run
  const StopSignals signals;
  const std::int64_t steps = cfg.integer("train.steps");
  const int batch = learner.batch_per_rank();
  const std::int64_t log_every = cfg.integer("log.every"), eval_every = cfg.integer("eval.every");
  const std::int64_t ckpt_every = cfg.integer("checkpoint.every");
  const double ckpt_every_s = cfg.real("checkpoint.every_seconds"), max_seconds = cfg.real("train.max_seconds");
  const bool checkpointing = ckpt_every > 0 || ckpt_every_s > 0.0;
  const std::filesystem::path ckpt_dir =
      cfg.string("checkpoint.dir").empty() ? out_dir_ / "checkpoints" : std::filesystem::path(cfg.string("checkpoint.dir"));
  const std::int64_t hang_rank = cfg.integer("debug.hang_rank"), hang_step = cfg.integer("debug.hang_step");

  LoopState loop;
  if (resume) {
    learner.load(*resume, loop);
    log::info("resumed from {} at step {} of {}", resume->string(), loop.step, steps);
    if (loop.step > steps) fail("checkpoint {} is at step {}, beyond train.steps = {}", resume->string(), loop.step, steps);
  }

  std::vector<std::string> columns = {"step", "epoch", "wall_s", "compute_s", "comm_s", "loss", "test_loss",
                                      "test_acc", "bytes_sent", "payload_bytes", "syncs", "samples_per_s"};
  // Text (gpt): test_loss and test_acc are the validation windows' nats per byte and next-byte
  // accuracy; val_bits_per_byte follows them.
  const int tokens = learner.tokens_per_sample();
  if (tokens > 0) columns.push_back("val_bits_per_byte");
  for (const auto& m : learner.metric_names()) columns.push_back(m);
  io::MetricsCsv csv;
  if (rank == 0) {
    if (resume) truncate_metrics(out_dir_ / "metrics.csv", loop.step);
    csv = io::MetricsCsv(out_dir_ / "metrics.csv", columns, resume.has_value());
  }

  const double elapsed_before = loop.elapsed_s;
  // Checkpoint after step loop.step; parameters are checked first so a diverged model never
  // replaces a good checkpoint (all ranks decide together).
  std::int64_t last_saved = resume ? loop.step : -1;
  double last_saved_s = 0.0;
  auto checkpoint = [&] {
    if (const auto bad = learner.first_nonfinite_tensor())
      fail("non-finite parameters in tensor '{}' at step {}; not checkpointing (last good checkpoint kept in {})", *bad,
           loop.step, ckpt_dir.string());
    loop.elapsed_s = elapsed_before + wall.seconds();
    last_saved_s = wall.seconds();
    const Timer t;
    const auto path = io::checkpoint_path(ckpt_dir, loop.step);
    learner.save(path, loop);
    const auto pruned = io::prune_checkpoints(ckpt_dir, static_cast<int>(cfg.integer("checkpoint.keep")), comm);
    log::info("checkpoint {} ({:.2f} s{})", path.string(), t.seconds(),
              pruned.empty() ? "" : fmt::format(", removed {} old", pruned.size()));
    last_saved = loop.step;
  };

  Progress progress(cfg.string("log.progress"), rank, steps);
  const std::int64_t warmup = warmup_steps(steps);
  std::string stop_reason;

  for (std::int64_t step = loop.step + 1; step <= steps; ++step) {
    comm.set_step(step);
    if (hang_rank == rank && hang_step == step) {  // test-only (debug.hang_*): a rank stuck in a step
      log::warn("debug.hang_rank: rank {} hangs at step {}", rank, step);
      for (;;) ::pause();
    }
    const Timer step_timer;
    const StepReport report = learner.step(step);
    loop.step = step;
    const double step_s = step_timer.seconds();
    loop.compute_s += report.compute_s;
    loop.train_s += step_s;
    loop.window_train_s += step_s;
    if (step > warmup) {
      loop.timed_s += step_s;
      ++loop.timed_steps;
    }
    loop.loss_window += report.loss;
    ++loop.window_steps;

    // Step boundary: every rank learns what any rank saw (signal, clock, non-finite loss).
    std::int32_t control[kControlCount] = {};
    control[kStopSignal] = StopSignals::received() > 0 ? StopSignals::last_signal() : 0;
    control[kTimeLimit] = max_seconds > 0.0 && wall.seconds() >= max_seconds ? 1 : 0;
    control[kCheckpointDue] = (ckpt_every > 0 && step % ckpt_every == 0) ||
                              (ckpt_every_s > 0.0 && wall.seconds() - last_saved_s >= ckpt_every_s);
    control[kNonfiniteLoss] = report.nonfinite || !std::isfinite(report.loss) ? 1 : 0;
    comm.allreduce(std::span<std::int32_t>(control, kControlCount), comm::ReduceOp::max, "obs.control");
    if (control[kNonfiniteLoss] != 0) {
      const auto bad = learner.first_nonfinite_tensor();
      fail("non-finite training loss or weights at step {}{} (precision.compute = {}; lower optim.lr?); last good "
           "checkpoint kept in {}",
           step, bad ? fmt::format(", non-finite parameters in tensor '{}'", *bad) : "",
           cfg.string("precision.compute"), checkpointing ? ckpt_dir.string() : "(checkpointing off)");
    }

    const bool eval_now = step == steps || (eval_every > 0 && step % eval_every == 0);
    if (step % log_every == 0 || eval_now) {
      // One "obs" allreduce: loss sum and bytes (for the rank mean).
      const auto total = comm.ledger().total();
      double obs[4] = {loop.loss_window / static_cast<double>(loop.window_steps), static_cast<double>(total.wire_bytes),
                       static_cast<double>(total.payload_bytes), total.seconds};
      comm.allreduce(std::span<double>(obs, 4), comm::ReduceOp::sum, "obs.metrics");
      loop.last_loss = obs[0] / world;
      std::optional<double> test_loss, test_acc;
      if (eval_now) {
        const auto ev = learner.evaluate();
        test_loss = loop.last_test_loss = ev.loss;
        test_acc = loop.last_test_acc = ev.accuracy;
      }
      const double now = elapsed_before + wall.seconds();
      const double window_rate =
          static_cast<double>(loop.window_steps * batch * world) / std::max(loop.window_train_s, 1e-9);
      std::vector<std::optional<double>> row = {static_cast<double>(step), learner.epoch_progress(), now, loop.compute_s,
                                                obs[3] / world, loop.last_loss, test_loss, test_acc, obs[1] / world,
                                                obs[2] / world, static_cast<double>(learner.syncs()), window_rate};
      if (tokens > 0)
        row.push_back(test_loss ? std::optional<double>(*test_loss / std::numbers::ln2) : std::nullopt);
      for (double v : learner.metric_values()) row.emplace_back(v);
      csv.write_row(row);
      progress.update(step, loop.last_loss, window_rate, now, test_acc.value_or(NAN), test_loss.value_or(NAN), tokens);
      loop.loss_window = 0.0;
      loop.window_steps = 0;
      loop.window_train_s = 0.0;
    }

    if (control[kStopSignal] != 0 || control[kTimeLimit] != 0) {
      stop_reason = control[kStopSignal] != 0 ? fmt::format("signal {}", control[kStopSignal])
                                              : fmt::format("train.max_seconds = {} reached", max_seconds);
      progress.finish();
      log::info("stopping after step {} ({}): writing a checkpoint", step, stop_reason);
      checkpoint();
      break;
    }
    if (control[kCheckpointDue] != 0) checkpoint();
  }
  progress.finish();
  // The last state of a run that checkpoints is always saved, so it can be continued further.
  if (checkpointing && stop_reason.empty() && last_saved != loop.step) checkpoint();

  // Aggregate the run over ranks: means of bytes and times, maxima of memory.
  const auto total = comm.ledger().total();
  double sums[4] = {static_cast<double>(total.wire_bytes), static_cast<double>(total.payload_bytes), total.seconds,
                    loop.compute_s};
  comm.allreduce(std::span<double>(sums, 4), comm::ReduceOp::sum, "obs.summary");
  std::int64_t maxima[4] = {memory::peak_rss_bytes(), memory::peak_bytes(), static_cast<std::int64_t>(total.wire_bytes),
                            static_cast<std::int64_t>(loop.timed_s * 1e6)};
  comm.allreduce(std::span<std::int64_t>(maxima, 4), comm::ReduceOp::max, "obs.summary");
  const comm::NetworkModel net{cfg.real("net.alpha_us") * 1e-6, cfg.real("net.beta_gbps") * 1e9 / 8.0};
  const double slowest_timed_s = static_cast<double>(maxima[3]) * 1e-6;
  Json cfg_json = Json::object();
  for (const auto& [k, v] : cfg.values()) std::visit([&](const auto& x) { cfg_json[k] = x; }, v);
  Json summary = {
      {"lowsync_version", LOWSYNC_VERSION},
      {"precision_compute", cfg.string("precision.compute")},
      {"precision_wire", cfg.string("precision.wire")},
      {"partition", cfg.string("data.partition")},
      {"ranks", world},
      {"steps", loop.step},
      {"stopped_early", !stop_reason.empty()},
      {"stop_reason", stop_reason},
      {"resumed_from", resume ? resume->string() : std::string()},
      {"batch_per_rank", batch},
      {"final_test_accuracy", loop.last_test_acc},
      {"final_test_loss", loop.last_test_loss},
      {"final_loss", loop.last_loss},
      {"samples_per_s", loop.timed_steps > 0 ? static_cast<double>(loop.timed_steps * batch * world) / slowest_timed_s : 0.0},
      {"wall_s", elapsed_before + wall.seconds()},
      {"compute_s", sums[3] / world},
      {"compute_s_per_step", loop.step > 0 ? sums[3] / world / static_cast<double>(loop.step) : 0.0},
      {"comm_s", sums[2] / world},
      {"bytes_sent_per_rank", sums[0] / world},
      {"bytes_sent_max_rank", maxima[2]},
      {"payload_bytes_per_rank", sums[1] / world},
      {"net_alpha_s", net.alpha_seconds},
      {"net_beta_Bps", net.beta_bytes_per_s},
      {"modeled_comm_s", net.ledger_seconds(comm.ledger(), world)},
      {"syncs", learner.syncs()},
      {"peak_rss_bytes", maxima[0]},
      {"train_state_bytes", maxima[1]},
      {"config", cfg_json},
  };
  if (tokens > 0) {
    // The gpt workload (ALGORITHMS.md §8): the validation windows' loss (lower is better).
    summary["final_val_loss"] = loop.last_test_loss;
    summary["final_val_bits_per_byte"] = loop.last_test_loss / std::numbers::ln2;
    summary["final_val_accuracy"] = loop.last_test_acc;
    summary["tokens_per_s"] = summary["samples_per_s"].get<double>() * tokens;
    summary["tokens_per_sample"] = tokens;
  }
  summary.update(ledger_fields(comm.ledger(), slowest_rank_seconds(comm)));
  summary.update(learner.summary_fields());
  if (rank == 0) io::write_file_atomic(out_dir_ / "summary.json", summary.dump(2) + "\n");
  if (!stop_reason.empty()) {
    const std::string launcher = world > 1 ? fmt::format("mpirun -n {} ", world) : "";
    log::info("stopped at step {} ({}); resume with: {}lowsync train --resume {}", loop.step, stop_reason, launcher,
              shell_quote(out_dir_.string()));
    return {summary, kExitStopped};
  }
  if (tokens > 0)
    log::info("done: validation loss {:.4f} nats/byte ({:.4f} bits/byte), next-byte accuracy {:.4f}, training loss "
              "{:.4f}, {:.0f} tokens/s, {:.2f} MB sent per rank, train state {:.3f} MB, {:.1f} s -> {}",
              loop.last_test_loss, loop.last_test_loss / std::numbers::ln2, loop.last_test_acc, loop.last_loss,
              summary["tokens_per_s"].get<double>(), sums[0] / world / 1e6, static_cast<double>(maxima[1]) / 1e6,
              wall.seconds(), (out_dir_ / "summary.json").string());
  else
    log::info("done: test accuracy {:.4f}, loss {:.4f}, {:.0f} samples/s, {:.2f} MB sent per rank, train state {:.3f} MB, "
              "{:.1f} s -> {}",
              loop.last_test_acc, loop.last_loss, summary["samples_per_s"].get<double>(), sums[0] / world / 1e6,
              static_cast<double>(maxima[1]) / 1e6, wall.seconds(), (out_dir_ / "summary.json").string());
  return {summary, 0};
}

}  // namespace lowsync::app
