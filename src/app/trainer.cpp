// The training loop of one rank. Per step (STYLE.md): loader.next, forward_backward,
// strategy.after_backward, optimizer.step (unless the strategy owns the update),
// strategy.after_update. Every log.every steps all ranks meet in one small "obs" allreduce that
// combines the loss, a non-finite flag and the ledger, so a NaN on any rank stops all of them at
// the same step. Evaluation uses the average of the replicas (the global model), split over ranks.
#include "lowsync/app/trainer.hpp"

#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/signals.hpp"
#include "lowsync/app/zo_trainer.hpp"
#include "lowsync/io/checkpoint_file.hpp"

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
#include "lowsync/sync/wire.hpp"
#include "lowsync/tensor/half.hpp"
#include "lowsync/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

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
  memory::TrackedBuffer<std::uint16_t> saved_params16;  // the same, native 16-bit storage

  // saved_floats: size of the float replica to save while the average is evaluated (0 for native
  // 16-bit storage, which saves its u16 replica only when it needs to).
  Evaluator(const data::Dataset& test, int rank, int size, std::size_t saved_floats) {
    const std::int64_t first = test.count * rank / size, last = test.count * (rank + 1) / size;
    images.resize(static_cast<std::size_t>(last - first) * test.sample_size());
    test.images_as_float(first, last - first, images.data());
    labels.assign(test.labels.begin() + first, test.labels.begin() + last);
    if (size > 1 && saved_floats > 0) saved_params = memory::TrackedBuffer<float>("eval.saved_params", saved_floats);
  }

  // Loss and accuracy of the mean of the replicas over the whole test set. replicas_identical
  // (native 16-bit storage under allreduce, whose replicas are bitwise equal): the mean is the
  // local replica, evaluated as is.
  model::EvalResult run(model::Model& model, comm::Communicator& comm, bool replicas_identical = false) {
    if (model.native16()) {
      auto params16 = model.params16();
      const bool average = comm.size() > 1 && !replicas_identical;
      if (average) {
        if (saved_params16.size() == 0) saved_params16 = memory::TrackedBuffer<std::uint16_t>("eval.saved_params16", params16.size());
        std::copy(params16.begin(), params16.end(), saved_params16.data());
        sync::average_native16(comm, params16, model.compute() == model::Compute::bf16, sync::WireFormat::fp32, "obs.eval");
      }
      const auto local = model.evaluate(images.data(), labels.data(), static_cast<std::int64_t>(labels.size()));
      if (average) std::copy(saved_params16.data(), saved_params16.data() + params16.size(), params16.begin());
      return reduce(local, comm);
    }
    auto params = model.params();
    if (comm.size() > 1) {
      std::copy(params.begin(), params.end(), saved_params.data());
      comm.allreduce(params, comm::ReduceOp::sum, "obs.eval");
      const float inv = 1.0f / static_cast<float>(comm.size());
      for (float& p : params) p *= inv;
    }
    const auto local = model.evaluate(images.data(), labels.data(), static_cast<std::int64_t>(labels.size()));
    if (comm.size() > 1) std::copy(saved_params.data(), saved_params.data() + params.size(), params.begin());
    return reduce(local, comm);
  }

  static model::EvalResult reduce(const model::EvalResult& local, comm::Communicator& comm) {
    double sums[3] = {local.loss * static_cast<double>(local.samples), local.accuracy * static_cast<double>(local.samples),
                      static_cast<double>(local.samples)};
    comm.allreduce(std::span<double>(sums, 3), comm::ReduceOp::sum, "obs.eval");
    return {sums[0] / sums[2], sums[1] / sums[2], static_cast<std::int64_t>(sums[2])};
  }
};

// Bytes of parameters + gradients + optimizer state: as this run stores them ("stored": float
// buffers, plus the fake-quantized weight copy for fp8; 2 bytes per value for native 16-bit
// storage) and as a native implementation of the compute dtype holds them ("in_compute_dtype":
// 2 bytes per value for bf16/fp16; fp8 keeps fp32 shadow weights, gradients and state, plus 1
// byte per weight). "staging": the fp32 stage native 16-bit layers compute through, shared by
// parameter tiles and activation chunks (README "Precision").
Json state_bytes_json(model::Model& model, optim::Optimizer& optimizer) {
  const auto d = static_cast<std::int64_t>(model.num_params());
  std::int64_t state = 0;
  for (const auto& s : optimizer.state()) state += static_cast<std::int64_t>(s.data.size());
  for (const auto& s : optimizer.state16()) state += static_cast<std::int64_t>(s.data.size());
  const std::int64_t values = 2 * d + state;
  std::int64_t stored = 4 * values, native = 4 * values;
  if (model.compute() == model::Compute::fp8) {
    stored += 4 * d;
    native += d;
  } else if (model::is_16bit(model.compute())) {
    native = 2 * values;
    if (model.native16()) stored = native;
  }
  return {{"values", values},
          {"stored", stored},
          {"in_compute_dtype", native},
          {"staging", static_cast<std::int64_t>(model.stage16_bytes())}};
}

// Bytes of the model-sized buffers a strategy keeps besides parameters, gradients and optimizer
// state, as stored: "per_rank" its checkpoint buffers on every rank (FDA w0, w0_prev at 2 bytes a
// value under native storage, 4 otherwise, and xi, fp32, for the linear estimator; DeMo's delta)
// plus DeMo's fp32 master of 16-bit compute; "rank0" the fp32 server model of a low-precision
// wire under float storage (rank 0 only); "tables" FDA's sketch hash tables.
Json strategy_state_bytes_json(sync::Strategy& strategy, std::int64_t fp32_master_values) {
  std::int64_t per_rank = 4 * fp32_master_values, root = 0;
  for (const auto& b : strategy.state_buffers()) per_rank += 4 * static_cast<std::int64_t>(b.data.size());
  for (const auto& b : strategy.state_buffers16()) per_rank += 2 * static_cast<std::int64_t>(b.data.size());
  for (const auto& b : strategy.root_state_buffers()) root += 4 * static_cast<std::int64_t>(b.size);
  return {{"per_rank", per_rank}, {"rank0", root}, {"tables", strategy.extra_state_bytes()}};
}

// precision.storage: native 16-bit storage where the run supports it (README "Precision"):
// bf16/fp16 compute, a strategy that averages gradients or 16-bit models (none, allreduce,
// periodic, fda: replicas and FDA's w0/w0_prev in u16, averaged in fp32 chunks), a wire of fp32
// or of the compute format, and an SGD/AdamW update. Float storage stays for DeMo (its delta and
// parameters are fp32 by spec) and for fp8 wires (the fp32 server model updates fp32 replicas).
// auto falls back to float storage (logged); native refuses, naming the key.
model::Storage resolve_storage(const config::Config& cfg) {
  const std::string& choice = cfg.string("precision.storage");
  const std::string& compute = cfg.string("precision.compute");
  if (compute != "bf16" && compute != "fp16") {
    if (choice == "native") fail("precision.storage = \"native\" needs precision.compute = bf16 or fp16, not {}", compute);
    return model::Storage::float32;
  }
  std::string unsupported;
  const std::string& strategy = cfg.string("sync.strategy");
  const std::string& wire = cfg.string("precision.wire");
  if (strategy != "none" && strategy != "allreduce" && strategy != "periodic" && strategy != "fda")
    unsupported = fmt::format("sync.strategy = {} (native storage: none | allreduce | periodic | fda)", strategy);
  else if (wire != "fp32" && wire != compute)
    unsupported = fmt::format("precision.wire = {} (native storage: fp32 | {})", wire, compute);
  else if (cfg.string("optim.name") != "sgd" && cfg.string("optim.name") != "adamw")
    unsupported = fmt::format("optim.name = {} (native storage: sgd | adamw)", cfg.string("optim.name"));
  if (unsupported.empty()) {
    if (choice == "float") return model::Storage::float32;
    log::info("precision.storage: native {} parameters, gradients and optimizer state", compute);
    return model::Storage::native16;
  }
  if (choice == "native") fail("precision.storage = \"native\" is not available with {}", unsupported);
  if (choice == "auto") log::info("precision.storage: float buffers rounded to {} (native storage not available with {})", compute, unsupported);
  return model::Storage::float32;
}


// Keys declared in the schema for features that are not built yet: refuse rather than ignore.
void reject_unimplemented(const config::Config& cfg) {
  auto refuse = [](const std::string& what) { fail("{} is not implemented in this version of lowsync", what); };
  // Checked here as well as by the optimizer, which the zeroth-order path never builds.
  if (cfg.string("precision.update_rounding") == "stochastic" && cfg.string("precision.compute") != "bf16" &&
      cfg.string("precision.compute") != "fp16")
    fail("precision.update_rounding = \"stochastic\" rounds 16-bit parameters: it needs precision.compute = bf16 or "
         "fp16, not {}", cfg.string("precision.compute"));
  if (cfg.string("prune.method") != "none" && cfg.string("optim.name") != "zo")
    refuse("prune.method = \"" + cfg.string("prune.method") + "\" with backprop (optim.name = \"zo\" only)");
  if (cfg.string("optim.name") != "zo") return;
  // The zeroth-order loop (zo_trainer.cpp) is fp32 only.
  if (cfg.string("precision.compute") == "fp8")
    fail("optim.name = \"zo\" cannot run with precision.compute = \"fp8\": loss differences of mu-sized perturbations "
         "vanish below fp8 resolution (ALGORITHMS.md \"How these combine\")");
  if (cfg.string("precision.compute") != "fp32")
    refuse("optim.name = \"zo\" with precision.compute = \"" + cfg.string("precision.compute") + "\"");
  if (cfg.string("precision.wire") != "fp32")
    refuse("optim.name = \"zo\" with precision.wire = \"" + cfg.string("precision.wire") + "\"");
}

// Index of the first parameter tensor with a non-finite value on any rank (all ranks get the
// same answer), or -1.
std::int64_t first_nonfinite_tensor(model::Model& model, comm::Communicator& comm) {
  const auto& infos = model.param_infos();
  std::int64_t bad = std::numeric_limits<std::int64_t>::max();
  for (std::size_t t = 0; t < infos.size() && bad == std::numeric_limits<std::int64_t>::max(); ++t) {
    const bool finite = model.native16()
                            ? tensor::all_finite_16bit(model.params16().subspan(infos[t].offset, infos[t].count),
                                           model.compute() == model::Compute::bf16)
                            : std::all_of(model.params().begin() + static_cast<std::ptrdiff_t>(infos[t].offset),
                                          model.params().begin() + static_cast<std::ptrdiff_t>(infos[t].offset + infos[t].count),
                                          [](float v) { return std::isfinite(v); });
    if (!finite) bad = static_cast<std::int64_t>(t);
  }
  comm.allreduce(std::span<std::int64_t>(&bad, 1), comm::ReduceOp::min, "obs.control");
  return bad == std::numeric_limits<std::int64_t>::max() ? -1 : bad;
}

// Control flags agreed by all ranks at every step boundary (one small "obs.control" allreduce).
enum Control : std::size_t { kStopSignal, kTimeLimit, kCheckpointDue, kNonfiniteLoss, kControlCount };

}  // namespace

TrainResult train(const config::Config& cfg, comm::Communicator& comm, const std::filesystem::path& out_dir,
                  const std::optional<std::filesystem::path>& resume) {
  cfg.validate();
  reject_unimplemented(cfg);
  if (cfg.string("optim.name") == "zo") return train_zo(cfg, comm, out_dir, resume);  // backprop-free path
  const int rank = comm.rank(), world = comm.size();
  const Timer wall;  // this segment of the run
  const StopSignals signals;
  const std::int64_t steps = cfg.integer("train.steps");
  const int batch = static_cast<int>(cfg.integer("train.batch"));
  const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  const std::int64_t log_every = cfg.integer("log.every"), eval_every = cfg.integer("eval.every");
  const std::int64_t ckpt_every = cfg.integer("checkpoint.every");
  const double ckpt_every_s = cfg.real("checkpoint.every_seconds"), max_seconds = cfg.real("train.max_seconds");
  const bool checkpointing = ckpt_every > 0 || ckpt_every_s > 0.0;
  const std::filesystem::path ckpt_dir =
      cfg.string("checkpoint.dir").empty() ? out_dir / "checkpoints" : std::filesystem::path(cfg.string("checkpoint.dir"));
  const std::int64_t hang_rank = cfg.integer("debug.hang_rank"), hang_step = cfg.integer("debug.hang_step");

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

  model::Model model(cfg.string("model.arch"), batch, seed, model::parse_compute(cfg.string("precision.compute")),
                     resolve_storage(cfg));
  model.set_eval_batch(static_cast<int>(cfg.integer("eval.batch")));
  auto optimizer = optim::make_optimizer(cfg, model.num_params(), model.native16());
  auto strategy = sync::make_strategy(cfg);
  Evaluator evaluator(fm.test, rank, world, model.native16() ? 0 : model.num_params());
  // Native 16-bit allreduce replicas apply the same update to bitwise the same averaged gradient.
  // Periodic and FDA replicas differ between syncs: evaluation averages them (fp32 sums rounded
  // to the 16-bit grid, as a sync would, on a copy; the replicas themselves are restored).
  const bool replicas_identical = model.native16() && strategy->name() == "allreduce";
  log::info("{} ({} parameters), {} ranks x batch {}, strategy {}, optimizer {}, {} steps, output {}",
            model.arch(), model.num_params(), world, batch, strategy->name(), optimizer->name(), steps,
            out_dir.string());

  sync::StepContext ctx{0, comm, model, *optimizer, 0.0f};
  strategy->on_start(ctx);

  // DeMo + bf16/fp16 compute (ALGORITHMS.md §5 "compose"): the parameters stay an fp32 master
  // (a sign step of lr is below half an ulp of 16-bit weights near 1); forward/backward and
  // evaluation run on the master rounded to the 16-bit grid, swapped into model.params() for
  // the call. Checkpoints and the replica checksum see the fp32 master.
  const bool fp32_master = model::is_16bit(model.compute()) && strategy->name() == "demo";
  memory::TrackedBuffer<float> master;
  if (fp32_master) master = memory::TrackedBuffer<float>("demo.fp32_master", model.num_params());
  const auto to_compute_params = [&] {
    if (!fp32_master) return;
    std::copy(model.params().begin(), model.params().end(), master.data());
    model.round_to_compute(model.params());
  };
  const auto to_master_params = [&] {
    if (fp32_master) std::copy(master.data(), master.data() + master.size(), model.params().begin());
  };

  LoopState loop;
  TrainState state{cfg, comm, model, *optimizer, *strategy, loader, loop};
  if (resume) {
    for (const auto& note : load_checkpoint(*resume, state)) log::info("{}", note);
    log::info("resumed from {} at step {} of {}", resume->string(), loop.step, steps);
    if (loop.step > steps) fail("checkpoint {} is at step {}, beyond train.steps = {}", resume->string(), loop.step, steps);
  }

  std::vector<std::string> columns = {"step", "epoch", "wall_s", "compute_s", "comm_s", "loss", "test_loss",
                                      "test_acc", "bytes_sent", "payload_bytes", "syncs", "samples_per_s"};
  for (const auto& m : strategy->metric_names()) columns.push_back(m);
  io::MetricsCsv csv;
  if (rank == 0) {
    if (resume) truncate_metrics(out_dir / "metrics.csv", loop.step);
    csv = io::MetricsCsv(out_dir / "metrics.csv", columns, resume.has_value());
  }

  const double elapsed_before = loop.elapsed_s;
  // Checkpoint after step loop.step; params are checked first so a diverged model is never saved.
  std::int64_t last_saved = resume ? loop.step : -1;
  double last_saved_s = 0.0;
  auto checkpoint = [&] {
    if (const auto bad = first_nonfinite_tensor(model, comm); bad >= 0)
      fail("non-finite parameters in tensor '{}' at step {}; not checkpointing (last good checkpoint kept in {})",
           model.param_infos()[static_cast<std::size_t>(bad)].name, loop.step, ckpt_dir.string());
    loop.elapsed_s = elapsed_before + wall.seconds();
    last_saved_s = wall.seconds();
    const Timer t;
    const auto path = io::checkpoint_path(ckpt_dir, loop.step);
    save_checkpoint(path, state);
    const auto pruned = io::prune_checkpoints(ckpt_dir, static_cast<int>(cfg.integer("checkpoint.keep")), comm);
    log::info("checkpoint {} ({:.2f} s{})", path.string(), t.seconds(),
              pruned.empty() ? "" : fmt::format(", removed {} old", pruned.size()));
    last_saved = loop.step;
  };

  Progress progress(cfg.string("log.progress"), rank, steps);
  const std::int64_t warmup = warmup_steps(steps);
  int stop_signal = 0;
  std::string stop_reason;

  for (std::int64_t step = loop.step + 1; step <= steps; ++step) {
    comm.set_step(step);
    ctx.step = step;
    const Timer step_timer;
    const data::Batch b = loader.next();
    const Timer compute_timer;
    to_compute_params();
    const float loss = model.forward_backward(b);
    to_master_params();
    double step_compute = compute_timer.seconds();
    if (hang_rank == rank && hang_step == step) {  // test-only (debug.hang_*): a rank stuck in a step
      log::warn("debug.hang_rank: rank {} hangs at step {}", rank, step);
      for (;;) ::pause();
    }
    ctx.local_loss = loss;
    strategy->after_backward(ctx);
    if (!model.native16()) model.round_to_compute(model.grads());  // 16-bit compute: the fp32 mean is stored in 16 bits
    if (!strategy->owns_update()) {
      const Timer t;
      if (model.native16())
        optimizer->step16(model.params16(), model.grads16());
      else
        optimizer->step(model.params(), model.grads());
      step_compute += t.seconds();
    }
    strategy->after_update(ctx);
    if (!fp32_master && !model.native16()) model.round_to_compute(model.params());
    loop.step = step;
    const double step_s = step_timer.seconds();
    loop.compute_s += step_compute;
    loop.train_s += step_s;
    loop.window_train_s += step_s;
    if (step > warmup) {
      loop.timed_s += step_s;
      ++loop.timed_steps;
    }
    loop.loss_window += loss;
    ++loop.window_steps;

    // Step boundary: every rank learns what any rank saw (signal, clock, non-finite loss).
    std::int32_t control[kControlCount] = {};
    control[kStopSignal] = StopSignals::received() > 0 ? StopSignals::last_signal() : 0;
    control[kTimeLimit] = max_seconds > 0.0 && wall.seconds() >= max_seconds ? 1 : 0;
    control[kCheckpointDue] = (ckpt_every > 0 && step % ckpt_every == 0) ||
                              (ckpt_every_s > 0.0 && wall.seconds() - last_saved_s >= ckpt_every_s);
    bool nonfinite = !std::isfinite(loss);
    // Standalone 16-bit has no loss scaling or master copy to fall back on: an overflow to inf
    // in the weights stops the run (ALGORITHMS.md §3 "Edge cases").
    if (!nonfinite && model.native16()) {
      nonfinite = !tensor::all_finite_16bit(model.params16(), model.compute() == model::Compute::bf16);
    } else if (!nonfinite && model::is_16bit(model.compute())) {
      const auto w = model.params();
      nonfinite = !std::all_of(w.begin(), w.end(), [](float v) { return std::isfinite(v); });
    }
    control[kNonfiniteLoss] = nonfinite ? 1 : 0;
    comm.allreduce(std::span<std::int32_t>(control, kControlCount), comm::ReduceOp::max, "obs.control");
    if (control[kNonfiniteLoss] != 0) {
      const auto bad = first_nonfinite_tensor(model, comm);
      fail("non-finite training loss or weights at step {}{} (precision.compute = {}; lower optim.lr?); last good checkpoint kept in {}",
           step,
           bad >= 0 ? fmt::format(", non-finite parameters in tensor '{}'", model.param_infos()[static_cast<std::size_t>(bad)].name) : "",
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
        to_compute_params();
        const auto ev = evaluator.run(model, comm, replicas_identical);
        to_master_params();
        test_loss = loop.last_test_loss = ev.loss;
        test_acc = loop.last_test_acc = ev.accuracy;
      }
      const double now = elapsed_before + wall.seconds();
      const double window_rate =
          static_cast<double>(loop.window_steps * batch * world) / std::max(loop.window_train_s, 1e-9);
      std::vector<std::optional<double>> row = {static_cast<double>(step), loader.epoch_progress(), now, loop.compute_s,
                                                obs[3] / world, loop.last_loss, test_loss, test_acc, obs[1] / world,
                                                obs[2] / world, static_cast<double>(strategy->syncs()), window_rate};
      for (double v : strategy->metric_values()) row.emplace_back(v);
      csv.write_row(row);
      progress.update(step, loop.last_loss, window_rate, now, test_acc.value_or(NAN));
      loop.loss_window = 0.0;
      loop.window_steps = 0;
      loop.window_train_s = 0.0;
    }

    if (control[kStopSignal] != 0 || control[kTimeLimit] != 0) {
      stop_signal = control[kStopSignal];
      stop_reason = stop_signal != 0 ? fmt::format("signal {}", stop_signal)
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
  Json by_traffic = Json::object();
  for (const auto& [key, e] : comm.ledger().entries())
    if (!key.second.starts_with("obs")) by_traffic[key.second] = by_traffic.value(key.second, 0.0) + static_cast<double>(e.wire_bytes);
  // Monitoring (traffic classes "*_monitor", e.g. FDA's variance state) versus everything else
  // the strategy sends (model, grad, optimizer state, ...): rank 0's wire bytes, summing to its
  // bytes_sent.
  double monitor_bytes = 0.0, sync_bytes = 0.0;
  for (const auto& [traffic, bytes] : by_traffic.items())
    (traffic.ends_with("_monitor") ? monitor_bytes : sync_bytes) += bytes.get<double>();
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
      {"precision_storage", model.native16() ? "native" : "float"},
      {"partition", cfg.string("data.partition")},
      {"ranks", world},
      {"steps", loop.step},
      {"stopped_early", !stop_reason.empty()},
      {"stop_reason", stop_reason},
      {"resumed_from", resume ? resume->string() : std::string()},
      {"batch_per_rank", batch},
      {"num_params", model.num_params()},
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
      {"bytes_by_traffic", by_traffic},
      {"monitor_bytes", monitor_bytes},
      {"sync_bytes", sync_bytes},
      {"ledger", ledger},
      {"net_alpha_s", net.alpha_seconds},
      {"net_beta_Bps", net.beta_bytes_per_s},
      {"modeled_comm_s", net.ledger_seconds(comm.ledger(), world)},
      {"calls_by_collective", by_collective},
      {"syncs", strategy->syncs()},
      {"peak_rss_bytes", maxima[0]},
      {"param_grad_optim_bytes", state_bytes_json(model, *optimizer)},
      // The training batch's activation + activation-gradient buffers (2 bytes per value with
      // native 16-bit storage, 4 otherwise), rank 0's model: every rank has the same.
      {"activation_bytes", static_cast<std::int64_t>(model.activation_bytes())},
      {"strategy_state_bytes", strategy_state_bytes_json(*strategy, static_cast<std::int64_t>(master.size()))},
      {"train_state_bytes", maxima[1]},
      {"forward_flops_per_sample", model.forward_flops_per_sample()},
      {"label_histograms", histograms},
      {"config", cfg_json},
  };
  if (rank == 0) io::write_file_atomic(out_dir / "summary.json", summary.dump(2) + "\n");
  if (!stop_reason.empty()) {
    log::info("stopped at step {} ({}); resume with: lowsync train --resume {}", loop.step, stop_reason, out_dir.string());
    return {summary, kExitStopped};
  }
  log::info("done: test accuracy {:.4f}, loss {:.4f}, {:.0f} samples/s, {:.2f} MB sent per rank, {:.1f} s -> {}",
            loop.last_test_acc, loop.last_loss, summary["samples_per_s"].get<double>(), sums[0] / world / 1e6, wall.seconds(),
            (out_dir / "summary.json").string());
  return {summary, 0};
}

Json evaluate_checkpoint(const std::filesystem::path& path, const config::Config& cfg, comm::Communicator& comm) {
  cfg.validate();
  const auto test = data::load_fashion_mnist(cfg.string("data.dir"), cfg.integer("data.train_limit")).test;
  model::Model model(cfg.string("model.arch"), static_cast<int>(cfg.integer("train.batch")),
                     static_cast<std::uint64_t>(cfg.integer("train.seed")));
  model.set_eval_batch(static_cast<int>(cfg.integer("eval.batch")));
  const auto mean = checkpoint_mean_params(path, comm, model.num_params());
  std::copy(mean.begin(), mean.end(), model.params().begin());
  // Every rank holds the same model: evaluate this rank's slice and sum (no parameter average).
  Evaluator slice(test, comm.rank(), comm.size(), model.num_params());
  const auto local = model.evaluate(slice.images.data(), slice.labels.data(), static_cast<std::int64_t>(slice.labels.size()));
  double sums[3] = {local.loss * static_cast<double>(local.samples), local.accuracy * static_cast<double>(local.samples),
                    static_cast<double>(local.samples)};
  comm.allreduce(std::span<double>(sums, 3), comm::ReduceOp::sum, "obs.eval");
  io::CheckpointReader reader(path, comm);
  return {{"checkpoint", path.string()},        {"step", reader.attribute_int("step")},
          {"arch", model.arch()},               {"test_loss", sums[0] / sums[2]},
          {"test_accuracy", sums[1] / sums[2]}, {"samples", static_cast<std::int64_t>(sums[2])}};
}

}  // namespace lowsync::app
