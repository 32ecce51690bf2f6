// optim.name = zo: foresight pruning (ntk | magnitude | random) and zeroth-order training of the
// compressed MLP (model::SparseMlp), FedSGD or FedAvg form, with the trainer's outputs
// (metrics.csv columns, summary.json fields) plus the pruning report. Only compressed values,
// their optimizer state and two activation buffers are held while training.
#include "lowsync/app/zo_trainer.hpp"

#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/signals.hpp"
#include "lowsync/comm/netmodel.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/data/partition.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/io/metrics.hpp"
#include "lowsync/config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace lowsync::app {
namespace {

using Json = nlohmann::json;
constexpr std::uint64_t kTagZo = 0x7a6fULL;

}  // namespace

// ---- training ----

ZoTrainer::ZoTrainer(model::SparseMlp& model, const optim::ZoSettings& settings, Form form, int period,
                     std::unique_ptr<optim::Optimizer> update, comm::Communicator& comm)
    : model_(model),
      shared_(settings),
      local_([&] {
        optim::ZoSettings s = settings;
        s.seed = stream_key({settings.seed, static_cast<std::uint64_t>(comm.rank())});
        return s;
      }()),
      form_(form),
      period_(period),
      update_(std::move(update)),
      comm_(comm),
      grad_("zo.grad", model.nnz()) {}

double ZoTrainer::step(const data::Batch& batch, std::int64_t step) {
  auto& params = model_.params();
  const auto loss = [&] { return model_.forward_loss(batch); };
  const auto t = static_cast<std::uint64_t>(step);
  if (form_ == Form::kFedSgd) {
    optim::ZoProbe probe = shared_.probe(params, t, loss);
    dropped_ += probe.num_dropped;
    // Equal batches on every rank: the union-batch loss difference is the mean of the local
    // ones. A NaN (dropped) entry anywhere makes the sum NaN, so every rank drops it.
    const float inv = 1.0f / static_cast<float>(comm_.size());
    for (float& dl : probe.loss_diffs) dl *= inv;
    comm_.allreduce(std::span<float>(probe.loss_diffs), comm::ReduceOp::sum, "zo");
    shared_.apply_estimate(probe.loss_diffs, t, params, grad_.span());
    update_->step(params.values(), grad_.span());
    return probe.loss;
  }
  optim::ZoProbe probe = local_.probe(params, t, loss);
  dropped_ += probe.num_dropped;
  local_.apply_estimate(probe.loss_diffs, t, params, grad_.span());
  update_->step(params.values(), grad_.span());
  synced_ = false;
  if (comm_.size() > 1 && step % period_ == 0) {
    // Only the kept values travel: the mask is shared, so no indices.
    auto values = params.values();
    comm_.allreduce(values, comm::ReduceOp::sum, "zo.avg");
    const float inv = 1.0f / static_cast<float>(comm_.size());
    for (float& v : values) v *= inv;
    ++syncs_;
    synced_ = true;
  }
  return probe.loss;
}

model::EvalResult ZoTrainer::evaluate(const float* images, const std::int32_t* labels, std::int64_t n) {
  const bool average = form_ == Form::kFedAvg && comm_.size() > 1 && !synced_;
  memory::TrackedBuffer<float> saved;  // compressed (nnz), only for the duration of the evaluation
  auto values = model_.params().values();
  if (average) {
    saved = memory::TrackedBuffer<float>("zo.eval_saved", values.size());
    std::copy(values.begin(), values.end(), saved.data());
    comm_.allreduce(values, comm::ReduceOp::sum, "obs.eval");
    const float inv = 1.0f / static_cast<float>(comm_.size());
    for (float& v : values) v *= inv;
  }
  const auto local = model_.evaluate(images, labels, n);
  if (average) std::copy(saved.data(), saved.data() + values.size(), values.begin());
  double sums[3] = {local.loss * static_cast<double>(local.samples), local.accuracy * static_cast<double>(local.samples),
                    static_cast<double>(local.samples)};
  comm_.allreduce(std::span<double>(sums, 3), comm::ReduceOp::sum, "obs.eval");
  return {sums[0] / sums[2], sums[1] / sums[2], static_cast<std::int64_t>(sums[2])};
}

namespace {

// zo checkpoint layout (README "Checkpoints"): the trainer's root attributes plus kept_params
// (the form is in strategy: zo.fedsgd / zo.fedavg); global "prune/mask" (uint8, the Mask wire
// bytes); per rank "zo/values" (the kept values), "optim/<state>", "strategy/counters/{syncs,zo_dropped}",
// "data/cursor", "trainer/loop", "comm/ledger".
void save_zo_checkpoint(const std::filesystem::path& path, const config::Config& cfg, comm::Communicator& comm,
                        const model::SparseMlp& model, const optim::Mask& mask, ZoTrainer& zo,
                        const data::Loader& loader, const LoopState& loop) {
  io::CheckpointWriter w(path, comm);
  auto& update = zo.update();
  w.set_attribute("trainer_state_version", kTrainerStateVersion);
  w.set_attribute("lowsync_version", LOWSYNC_VERSION);
  w.set_attribute("world_size", comm.size());
  w.set_attribute("arch", "mlp");
  w.set_attribute("num_params", static_cast<std::int64_t>(model.num_params()));
  w.set_attribute("kept_params", static_cast<std::int64_t>(model.nnz()));
  w.set_attribute("strategy", "zo." + cfg.string("optim.zo.form"));
  w.set_attribute("optimizer", "zo+" + cfg.string("optim.zo.update"));
  w.set_attribute("optimizer_step_count", update.step_count());
  w.set_attribute("learning_rate", update.learning_rate());
  w.set_attribute("config_toml", cfg.to_toml());
  w.write_global<std::uint8_t>("prune/mask", mask.bytes(), {mask.num_bytes()});
  w.write_per_rank<float>("zo/values", model.params().values());
  for (const auto& b : update.state()) w.write_per_rank<float>("optim/" + b.name, b.data);
  const std::int64_t syncs = zo.syncs(), dropped = zo.dropped_directions();
  w.write_per_rank<std::int64_t>("strategy/counters/syncs", std::span<const std::int64_t>(&syncs, 1));
  w.write_per_rank<std::int64_t>("strategy/counters/zo_dropped", std::span<const std::int64_t>(&dropped, 1));
  const auto cursor = loader.cursor();
  const std::int64_t cur[3] = {cursor.epoch, cursor.position, loader.samples()};
  w.write_per_rank<std::int64_t>("data/cursor", std::span<const std::int64_t>(cur, 3));
  write_loop_and_ledger(w, loop, comm);
  w.commit();
}

// Opens a zo checkpoint and checks that this run can continue it (same ranks, same model).
void check_zo_checkpoint(io::CheckpointReader& r, const config::Config& cfg, const comm::Communicator& comm) {
  const auto& path = r.path();
  const std::int64_t version = r.has_attribute("trainer_state_version") ? r.attribute_int("trainer_state_version") : -1;
  if (version != kTrainerStateVersion)
    fail("checkpoint {}: trainer_state_version {} (this lowsync reads {}): not a lowsync training checkpoint "
         "or from an incompatible version", path.string(), version, kTrainerStateVersion);
  check_compatible(path, saved_config(r), cfg);
  if (!r.has_dataset("zo/values") || !r.has_dataset("prune/mask"))
    fail("checkpoint {}: no 'zo/values' or 'prune/mask': not a zeroth-order (optim.name = \"zo\") checkpoint", path.string());
  const auto saved_world = r.attribute_int("world_size");
  if (saved_world != comm.size())
    fail("checkpoint {}: written by {} ranks; a zo run resumes on the same number of ranks (this run has {}): "
         "the kept values and the data partition are per rank", path.string(), saved_world, comm.size());
  if (r.attribute_int("num_params") != static_cast<std::int64_t>(model::mlp_num_params()))
    fail("checkpoint {}: num_params is {} there, {} here", path.string(), r.attribute_int("num_params"),
         model::mlp_num_params());
}

// Restores everything but the mask (read before the model is built) into the live objects.
void load_zo_checkpoint(io::CheckpointReader& r, comm::Communicator& comm, model::SparseMlp& model, ZoTrainer& zo,
                        data::Loader& loader, LoopState& loop) {
  const auto& path = r.path();
  auto read_floats = [&](const std::string& ds, std::span<float> out) {
    if (!r.has_dataset(ds)) fail("checkpoint {}: no dataset '{}' (needed by this run)", path.string(), ds);
    if (r.row_length(ds) != out.size())
      fail("checkpoint {}: dataset '{}' has {} values per rank, this run needs {}", path.string(), ds,
           r.row_length(ds), out.size());
    r.read_row<float>(ds, static_cast<std::size_t>(comm.rank()), out);
  };
  auto read_ints = [&](const std::string& ds, std::size_t n) {
    if (!r.has_dataset(ds) || r.row_length(ds) != n)
      fail("checkpoint {}: no dataset '{}' of {} values per rank", path.string(), ds, n);
    std::vector<std::int64_t> out(n);
    r.read_row<std::int64_t>(ds, static_cast<std::size_t>(comm.rank()), std::span<std::int64_t>(out));
    return out;
  };
  read_floats("zo/values", model.params().values());
  for (auto& b : zo.update().state()) read_floats("optim/" + b.name, b.data);
  zo.update().set_step_count(r.attribute_int("optimizer_step_count"));
  zo.restore_counters(read_ints("strategy/counters/syncs", 1)[0], read_ints("strategy/counters/zo_dropped", 1)[0]);
  const auto cur = read_ints("data/cursor", 3);
  // Decided together: a rank failing alone would leave the others in the reader's collectives.
  std::int32_t mismatch = cur[2] != loader.samples() ? 1 : 0;
  comm.allreduce(std::span<std::int32_t>(&mismatch, 1), comm::ReduceOp::max, "obs.control");
  if (mismatch != 0)
    fail("checkpoint {}: the training samples per rank differ from the saved run's (data.* changed?); rank {}: {} "
         "there, {} here", path.string(), comm.rank(), cur[2], loader.samples());
  loader.set_cursor({cur[0], cur[1]});
  read_loop_and_ledger(r, loop, comm);
}

enum ZoControl : std::size_t { kZoStopSignal, kZoTimeLimit, kZoCheckpointDue, kZoNonfinite, kZoControlCount };

}  // namespace

TrainResult train_zo(const config::Config& cfg, comm::Communicator& comm, const std::filesystem::path& out_dir,
                     const std::optional<std::filesystem::path>& resume) {
  if (cfg.string("model.arch") != "mlp")
    fail("optim.name = \"zo\" supports model.arch = \"mlp\" in this version (got \"{}\")", cfg.string("model.arch"));
  const int rank = comm.rank(), world = comm.size();
  const Timer wall;
  const std::int64_t steps = cfg.integer("train.steps");
  const int batch = static_cast<int>(cfg.integer("train.batch"));
  const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  const std::int64_t log_every = cfg.integer("log.every"), eval_every = cfg.integer("eval.every");
  const StopSignals signals;
  const std::int64_t ckpt_every = cfg.integer("checkpoint.every");
  const double ckpt_every_s = cfg.real("checkpoint.every_seconds"), max_seconds = cfg.real("train.max_seconds");
  const bool checkpointing = ckpt_every > 0 || ckpt_every_s > 0.0;
  const std::filesystem::path ckpt_dir =
      cfg.string("checkpoint.dir").empty() ? out_dir / "checkpoints" : std::filesystem::path(cfg.string("checkpoint.dir"));
  // The output folder first, as in train(): a rank 0 that fails here must not leave the others
  // inside the checkpoint reader's collective calls.
  if (rank == 0) {
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) fail("cannot create output folder '{}': {}", out_dir.string(), ec.message());
    io::write_file_atomic(out_dir / "config.toml", cfg.to_toml());
  }
  std::optional<io::CheckpointReader> reader;
  if (resume) {
    reader.emplace(*resume, comm);
    check_zo_checkpoint(*reader, cfg, comm);
  }
  const auto fm = data::load_fashion_mnist(cfg.string("data.dir"), cfg.integer("data.train_limit"));
  data::PartitionSpec spec{cfg.string("data.partition"), cfg.real("data.alpha"),
                           static_cast<int>(cfg.integer("data.shards_per_rank")), seed};
  auto parts = data::partition(fm.train.labels, world, spec);
  Json histograms = Json::array();
  for (int r = 0; r < world; ++r) histograms.push_back(data::label_histogram(parts[r], fm.train.labels));
  const double data_share = static_cast<double>(parts[rank].size()) / static_cast<double>(fm.train.labels.size());
  data::Loader loader(fm.train, std::move(parts[rank]), batch, seed, rank);

  // Pruning phase: its dense scratch (saliency, w0, delta, mask floats) is freed before training;
  // its peak is reported as prune_peak_bytes and train_state_bytes restarts after it.
  optim::PruneSettings ps{cfg.string("prune.method"), cfg.real("prune.sparsity"), static_cast<int>(cfg.integer("prune.rounds")),
                   static_cast<int>(cfg.integer("prune.batch")), static_cast<float>(cfg.real("prune.eps")), seed};
  const Timer prune_timer;
  std::shared_ptr<const optim::Mask> mask;
  if (reader) {  // the saved mask: pruning is not repeated (and could differ on other data)
    const std::size_t d = model::mlp_num_params();
    std::vector<std::uint8_t> bytes((d + 7) / 8);
    reader->read_global<std::uint8_t>("prune/mask", std::span<std::uint8_t>(bytes), {bytes.size()});
    mask = std::make_shared<const optim::Mask>(optim::Mask::from_bytes(d, bytes));
    log::info("prune mask from {} (density {:.4f}); pruning not repeated", resume->string(), mask->density());
  } else {
    mask = std::make_shared<const optim::Mask>(optim::foresight_prune(
        ps, rank, [&](std::span<float> v) { comm.allreduce(v, comm::ReduceOp::sum, "prune"); }, data_share));
  }
  const double prune_s = prune_timer.seconds();
  std::int64_t prune_peak = memory::peak_bytes();
  comm.allreduce(std::span<std::int64_t>(&prune_peak, 1), comm::ReduceOp::max, "obs.summary");
  memory::reset_peak();

  model::SparseMlp model(batch, seed, mask);
  Json layers_json = Json::array();
  for (const auto& info : model::mlp_param_infos()) {
    const std::size_t kept = mask->range_nnz(info.offset, info.count);
    layers_json.push_back({{"name", info.name}, {"params", info.count}, {"kept", kept},
                           {"density", static_cast<double>(kept) / static_cast<double>(info.count)}});
    if (ps.method != "none")
      log::info("prune {}: {} of {} kept (density {:.4f})", info.name, kept, info.count,
                static_cast<double>(kept) / static_cast<double>(info.count));
  }
  optim::ZoSettings zs;
  zs.num_directions = static_cast<int>(cfg.integer("optim.zo.q"));
  zs.mu = static_cast<float>(cfg.real("optim.zo.mu"));
  zs.difference = cfg.string("optim.zo.difference") == "central" ? optim::ZoDifference::kCentral : optim::ZoDifference::kForward;
  zs.seed = stream_key({seed, kTagZo});
  const auto form = cfg.string("optim.zo.form") == "fedavg" ? ZoTrainer::Form::kFedAvg : ZoTrainer::Form::kFedSgd;
  ZoTrainer zo(model, zs, form, static_cast<int>(cfg.integer("sync.period")),
               optim::make_zo_update(cfg, model.nnz()), comm);
  const std::int64_t test_first = fm.test.count * rank / world, test_last = fm.test.count * (rank + 1) / world;
  std::vector<float> test_images(static_cast<std::size_t>(test_last - test_first) * fm.test.sample_size());
  fm.test.images_as_float(test_first, test_last - test_first, test_images.data());
  const std::vector<std::int32_t> test_labels(fm.test.labels.begin() + test_first, fm.test.labels.begin() + test_last);
  const int forwards = zs.difference == optim::ZoDifference::kCentral ? 2 * zs.num_directions : zs.num_directions + 1;
  const double flops_per_step = forwards * model.forward_flops_per_sample() * batch;
  log::info("mlp ({} parameters, {} kept, prune {}), {} ranks x batch {}, zo {} q={} mu={} {}, update {}, {} steps, output {}",
            model.num_params(), model.nnz(), ps.method, world, batch, cfg.string("optim.zo.form"), zs.num_directions,
            zs.mu, cfg.string("optim.zo.difference"), cfg.string("optim.zo.update"), steps, out_dir.string());

  const std::vector<std::string> columns = {"step", "epoch", "wall_s", "compute_s", "comm_s", "loss", "test_loss",
                                            "test_acc", "bytes_sent", "payload_bytes", "syncs", "samples_per_s",
                                            "zo_dropped"};
  LoopState loop;
  if (reader) {
    load_zo_checkpoint(*reader, comm, model, zo, loader, loop);
    reader.reset();
    log::info("resumed from {} at step {} of {}", resume->string(), loop.step, steps);
    if (loop.step > steps) fail("checkpoint {} is at step {}, beyond train.steps = {}", resume->string(), loop.step, steps);
  }
  io::MetricsCsv csv;
  if (rank == 0) {
    if (resume) truncate_metrics(out_dir / "metrics.csv", loop.step);
    csv = io::MetricsCsv(out_dir / "metrics.csv", columns, resume.has_value());
  }
  double& compute_s = loop.compute_s;
  double& timed_s = loop.timed_s;
  double& loss_window = loop.loss_window;
  double& window_train_s = loop.window_train_s;
  std::int64_t& window_steps = loop.window_steps;
  std::int64_t& timed_steps = loop.timed_steps;
  double& last_loss = loop.last_loss;
  double& last_test_acc = loop.last_test_acc;
  double& last_test_loss = loop.last_test_loss;
  const double elapsed_before = loop.elapsed_s;
  std::int64_t last_saved = resume ? loop.step : -1;
  double last_saved_s = 0.0;
  auto checkpoint = [&] {
    // The loss was measured before this step's update: check the updated weights themselves, so
    // a diverged model never replaces a good checkpoint (all ranks decide together).
    const auto values = model.params().values();
    std::int32_t nonfinite = std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); }) ? 0 : 1;
    comm.allreduce(std::span<std::int32_t>(&nonfinite, 1), comm::ReduceOp::max, "obs.control");
    if (nonfinite != 0)
      fail("non-finite weights at step {} (lower optim.lr?); not checkpointed, last good checkpoint kept in {}",
           loop.step, ckpt_dir.string());
    loop.elapsed_s = elapsed_before + wall.seconds();
    last_saved_s = wall.seconds();
    const Timer t;
    const auto path = io::checkpoint_path(ckpt_dir, loop.step);
    save_zo_checkpoint(path, cfg, comm, model, *mask, zo, loader, loop);
    const auto pruned = io::prune_checkpoints(ckpt_dir, static_cast<int>(cfg.integer("checkpoint.keep")), comm);
    log::info("checkpoint {} ({:.2f} s{})", path.string(), t.seconds(),
              pruned.empty() ? "" : fmt::format(", removed {} old", pruned.size()));
    last_saved = loop.step;
  };
  std::string stop_reason;
  const std::int64_t warmup = std::min<std::int64_t>(steps / 10, 20);
  for (std::int64_t step = loop.step + 1; step <= steps; ++step) {
    comm.set_step(step);
    const Timer step_timer;
    const data::Batch b = loader.next();
    const double before_comm = comm.ledger().total().seconds;
    const double loss = zo.step(b, step);
    loop.step = step;
    const double step_s = step_timer.seconds();
    compute_s += step_s - (comm.ledger().total().seconds - before_comm);
    loop.train_s += step_s;
    window_train_s += step_s;
    if (step > warmup) {
      timed_s += step_s;
      ++timed_steps;
    }
    loss_window += loss;
    ++window_steps;
    // Step boundary, as in train(): every rank learns what any rank saw.
    std::int32_t control[kZoControlCount] = {};
    control[kZoStopSignal] = StopSignals::received() > 0 ? StopSignals::last_signal() : 0;
    control[kZoTimeLimit] = max_seconds > 0.0 && wall.seconds() >= max_seconds ? 1 : 0;
    control[kZoCheckpointDue] = (ckpt_every > 0 && step % ckpt_every == 0) ||
                                (ckpt_every_s > 0.0 && wall.seconds() - last_saved_s >= ckpt_every_s);
    control[kZoNonfinite] = std::isfinite(loss) ? 0 : 1;
    comm.allreduce(std::span<std::int32_t>(control, kZoControlCount), comm::ReduceOp::max, "obs.control");
    if (control[kZoNonfinite] != 0)
      fail("non-finite training loss at step {} (lower optim.lr?); last good checkpoint kept in {}", step,
           checkpointing ? ckpt_dir.string() : "(checkpointing off)");
    const bool stop = control[kZoStopSignal] != 0 || control[kZoTimeLimit] != 0;
    const bool eval_now = step == steps || (eval_every > 0 && step % eval_every == 0);
    if (step % log_every == 0 || eval_now) {
      const auto total = comm.ledger().total();
      double obs[4] = {loss_window / static_cast<double>(window_steps), static_cast<double>(total.wire_bytes),
                       static_cast<double>(total.payload_bytes), total.seconds};
      comm.allreduce(std::span<double>(obs, 4), comm::ReduceOp::sum, "obs.metrics");
      last_loss = obs[0] / world;
      std::optional<double> test_loss, test_acc;
      if (eval_now) {
        const auto ev = zo.evaluate(test_images.data(), test_labels.data(), static_cast<std::int64_t>(test_labels.size()));
        test_loss = last_test_loss = ev.loss;
        test_acc = last_test_acc = ev.accuracy;
      }
      const double now = elapsed_before + wall.seconds();
      const double rate = static_cast<double>(window_steps * batch * world) / std::max(window_train_s, 1e-9);
      csv.write_row({static_cast<double>(step), loader.epoch_progress(), now, compute_s, obs[3] / world, last_loss,
                     test_loss, test_acc, obs[1] / world, obs[2] / world, static_cast<double>(zo.syncs()), rate,
                     static_cast<double>(zo.dropped_directions())});
      if (rank == 0 && cfg.string("log.progress") != "off")
        log::info("step {}/{}  loss {:.4f}  {:.0f} samples/s{}", step, steps, last_loss, rate,
                  test_acc ? fmt::format("  test_acc {:.4f}", *test_acc) : std::string());
      loss_window = 0.0;
      window_steps = 0;
      window_train_s = 0.0;
    }
    if (stop) {
      const int sig = control[kZoStopSignal];
      stop_reason = sig != 0 ? fmt::format("signal {}", sig) : fmt::format("train.max_seconds = {} reached", max_seconds);
      log::info("stopping after step {} ({}): writing a checkpoint", step, stop_reason);
      checkpoint();
      break;
    }
    if (control[kZoCheckpointDue] != 0) checkpoint();
  }
  if (checkpointing && stop_reason.empty() && last_saved != loop.step) checkpoint();

  const auto total = comm.ledger().total();
  double sums[4] = {static_cast<double>(total.wire_bytes), static_cast<double>(total.payload_bytes), total.seconds, compute_s};
  comm.allreduce(std::span<double>(sums, 4), comm::ReduceOp::sum, "obs.summary");
  std::int64_t maxima[4] = {memory::peak_rss_bytes(), memory::peak_bytes(), static_cast<std::int64_t>(total.wire_bytes),
                            static_cast<std::int64_t>(timed_s * 1e6)};
  comm.allreduce(std::span<std::int64_t>(maxima, 4), comm::ReduceOp::max, "obs.summary");
  Json by_traffic = Json::object(), by_collective = Json::object(), ledger = Json::array();
  for (const auto& [key, e] : comm.ledger().entries()) {
    if (key.second.starts_with("obs")) continue;
    const std::string coll(comm::collective_name(key.first));
    by_traffic[key.second] = by_traffic.value(key.second, 0.0) + static_cast<double>(e.wire_bytes);
    by_collective[coll] = by_collective.value(coll, 0.0) + static_cast<double>(e.calls);
    ledger.push_back({{"collective", coll}, {"traffic", key.second}, {"calls", e.calls}, {"payload_bytes", e.payload_bytes},
                      {"wire_bytes", e.wire_bytes}, {"seconds", e.seconds}});
  }
  const comm::NetworkModel net{cfg.real("net.alpha_us") * 1e-6, cfg.real("net.beta_gbps") * 1e9 / 8.0};
  const double slowest_timed_s = static_cast<double>(maxima[3]) * 1e-6;
  Json cfg_json = Json::object();
  for (const auto& [k, v] : cfg.values()) std::visit([&](const auto& x) { cfg_json[k] = x; }, v);
  Json summary = {
      {"lowsync_version", LOWSYNC_VERSION},
      {"arch", "mlp"},
      {"strategy", "zo." + cfg.string("optim.zo.form")},
      {"optimizer", "zo+" + cfg.string("optim.zo.update")},
      {"precision_compute", cfg.string("precision.compute")},
      {"precision_wire", cfg.string("precision.wire")},
      {"partition", cfg.string("data.partition")},
      {"ranks", world},
      {"steps", loop.step},
      {"stopped_early", !stop_reason.empty()},
      {"stop_reason", stop_reason},
      {"resumed_from", resume ? resume->string() : std::string()},
      {"batch_per_rank", batch},
      {"num_params", model.num_params()},
      {"kept_params", model.nnz()},
      {"final_test_accuracy", last_test_acc},
      {"final_test_loss", last_test_loss},
      {"final_loss", last_loss},
      {"samples_per_s", timed_steps > 0 ? static_cast<double>(timed_steps * batch * world) / slowest_timed_s : 0.0},
      {"wall_s", elapsed_before + wall.seconds()},
      {"compute_s", sums[3] / world},
      {"compute_s_per_step", loop.step > 0 ? sums[3] / world / static_cast<double>(loop.step) : 0.0},
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
      {"syncs", zo.syncs()},
      {"peak_rss_bytes", maxima[0]},
      {"train_state_bytes", maxima[1]},
      {"prune_peak_bytes", prune_peak},
      {"prune_s", prune_s},
      {"prune_method", ps.method},
      {"prune_density", mask->density()},
      {"prune_layers", layers_json},
      {"zo_dropped_directions", zo.dropped_directions()},
      {"forward_flops_per_sample", model.forward_flops_per_sample()},
      {"train_flops_per_step", flops_per_step},
      {"label_histograms", histograms},
      {"config", cfg_json},
  };
  if (rank == 0) io::write_file_atomic(out_dir / "summary.json", summary.dump(2) + "\n");
  if (!stop_reason.empty()) {
    log::info("stopped at step {} ({}); resume with: lowsync train --resume {}", loop.step, stop_reason, out_dir.string());
    return {summary, kExitStopped};
  }
  log::info("done: test accuracy {:.4f}, loss {:.4f}, {:.2f} MB sent per rank, train state {:.3f} MB, {:.1f} s -> {}",
            last_test_acc, last_loss, sums[0] / world / 1e6, static_cast<double>(maxima[1]) / 1e6, wall.seconds(),
            (out_dir / "summary.json").string());
  return {summary, 0};
}

}  // namespace lowsync::app
