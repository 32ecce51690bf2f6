// The zeroth-order learner (app/learner.hpp, ALGORITHMS.md §2) for optim.name = zo: foresight
// pruning (optim/foresight.hpp) before training, then ZoTrainer steps of the compressed MLP,
// FedSGD or FedAvg form. Its metrics.csv and summary.json carry every column and key of a
// backprop run plus its own (zo_dropped, kept_params, prune_*). A resumed run reads the mask from
// its checkpoint (written on the same number of ranks) and does not prune again.
#include "lowsync/app/learner.hpp"
#include "lowsync/app/run_loop.hpp"
#include "lowsync/app/zo_trainer.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/config.hpp"

#include <algorithm>
#include <cmath>

namespace lowsync::app {
namespace {

using Json = nlohmann::json;
constexpr std::uint64_t kTagZo = 0x7a6fULL;

// zo checkpoint layout (README "Checkpoints"): the trainer's root attributes plus kept_params
// (the form is in strategy: zo.fedsgd / zo.fedavg); global "prune/mask" (uint8, the Mask wire
// bytes); per rank "zo/values" (the kept values), "optim/<state>", "strategy/counters/{syncs,zo_dropped}",
// "data/cursor", "trainer/loop", "comm/ledger".
void save_zo_checkpoint(const std::filesystem::path& path, const config::Config& cfg, comm::Communicator& comm,
                        const model::SparseMlp& model, const optim::Mask& mask, ZoTrainer& zo,
                        const data::BatchSource& loader, const LoopState& loop) {
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
  write_config_attributes(w, cfg);
  w.write_global<std::uint8_t>("prune/mask", mask.bytes(), {mask.num_bytes()});
  w.write_per_rank<float>("zo/values", model.params().values());
  for (const auto& b : update.state()) w.write_per_rank<float>("optim/" + b.name, b.data.fp32());
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
                        data::BatchSource& loader, LoopState& loop) {
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
  require_finite_parameters(path, "zo/values", model.params().values(), comm);
  for (auto& b : zo.update().state()) read_floats("optim/" + b.name, b.data.fp32());
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

class ZoLearner final : public Learner {
 public:
  ZoLearner(const config::Config& cfg, comm::Communicator& comm, const std::optional<std::filesystem::path>& resume)
      : cfg_(cfg), comm_(comm) {
    if (cfg.string("model.arch") != "mlp")
      fail("optim.name = \"zo\" supports model.arch = \"mlp\" in this version (got \"{}\")", cfg.string("model.arch"));
    const int batch = batch_ = static_cast<int>(cfg.integer("train.batch"));
    const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
    std::optional<io::CheckpointReader> reader;
    if (resume) {
      reader.emplace(*resume, comm);
      check_zo_checkpoint(*reader, cfg, comm);
    }
    data_ = load_training_data(cfg, comm);

    // Pruning phase: its dense scratch (saliency, w0, delta, mask floats) is freed before
    // training; its peak is reported as prune_peak_bytes and train_state_bytes restarts after it.
    prune_ = optim::PruneSettings{cfg.string("prune.method"), cfg.real("prune.sparsity"),
                                  static_cast<int>(cfg.integer("prune.rounds")), static_cast<int>(cfg.integer("prune.batch")),
                                  static_cast<float>(cfg.real("prune.eps")), seed};
    prune_.normalize = cfg.string("prune.ntk.normalize");
    prune_.init = cfg.string("prune.ntk.init");
    const Timer prune_timer;
    if (reader) {  // the saved mask: pruning is not repeated (and could differ on other data)
      const std::size_t d = model::mlp_num_params();
      std::vector<std::uint8_t> bytes((d + 7) / 8);
      reader->read_global<std::uint8_t>("prune/mask", std::span<std::uint8_t>(bytes), {bytes.size()});
      mask_ = std::make_shared<const optim::Mask>(optim::Mask::from_bytes(d, bytes));
      log::info("prune mask from {} (density {:.4f}); pruning not repeated", resume->string(), mask_->density());
    } else {
      mask_ = std::make_shared<const optim::Mask>(optim::foresight_prune(
          prune_, comm.rank(), [&](std::span<float> v) { comm.allreduce(v, comm::ReduceOp::sum, "prune"); }, data_->share));
    }
    prune_s_ = prune_timer.seconds();
    prune_peak_ = memory::peak_bytes();
    comm.allreduce(std::span<std::int64_t>(&prune_peak_, 1), comm::ReduceOp::max, "obs.summary");
    memory::reset_peak();

    const int q = static_cast<int>(cfg.integer("optim.zo.q"));
    const int per_pass = std::min(q, static_cast<int>(cfg.integer("optim.zo.directions_per_pass")));
    model_ = std::make_unique<model::SparseMlp>(batch, seed, mask_, per_pass);
    layers_json_ = Json::array();
    std::size_t offset = 0;  // into the compressed values
    for (const auto& info : model::mlp_param_infos()) {
      const std::size_t kept = mask_->range_nnz(info.offset, info.count);
      layers_json_.push_back({{"name", info.name}, {"params", info.count}, {"kept", kept},
                              {"density", static_cast<double>(kept) / static_cast<double>(info.count)}});
      kept_ranges_.push_back({info.name, offset, kept});
      offset += kept;
      if (prune_.method != "none")
        log::info("prune {}: {} of {} kept (density {:.4f})", info.name, kept, info.count,
                  static_cast<double>(kept) / static_cast<double>(info.count));
    }
    optim::ZoSettings zs;
    zs.num_directions = q;
    zs.directions_per_pass = per_pass;
    zs.mu = static_cast<float>(cfg.real("optim.zo.mu"));
    zs.difference = cfg.string("optim.zo.difference") == "central" ? optim::ZoDifference::kCentral : optim::ZoDifference::kForward;
    zs.seed = stream_key({seed, kTagZo});
    const auto form = cfg.string("optim.zo.form") == "fedavg" ? ZoTrainer::Form::kFedAvg : ZoTrainer::Form::kFedSgd;
    zo_ = std::make_unique<ZoTrainer>(*model_, zs, form, static_cast<int>(cfg.integer("sync.period")),
                                      optim::make_zo_update(cfg, model_->nnz()), comm);
    const int forwards = zs.difference == optim::ZoDifference::kCentral ? 2 * zs.num_directions : zs.num_directions + 1;
    flops_per_step_ = forwards * model_->forward_flops_per_sample() * batch;
    log::info("mlp ({} parameters, {} kept, prune {}), {} ranks x batch {}, zo {} q={} ({} per pass) mu={} {}, update {}, {} steps",
              model_->num_params(), model_->nnz(), prune_.method, comm.size(), batch, cfg.string("optim.zo.form"),
              zs.num_directions, zs.directions_per_pass, zs.mu, cfg.string("optim.zo.difference"), cfg.string("optim.zo.update"),
              cfg.integer("train.steps"));
  }

  int batch_per_rank() const override { return batch_; }

  StepReport step(std::int64_t step) override {
    const Timer timer;
    const data::Batch b = data_->loader->next();
    const double comm_before = comm_.ledger().total().seconds;
    const double loss = zo_->step(b, step);
    const double compute_s = timer.seconds() - (comm_.ledger().total().seconds - comm_before);
    return {loss, compute_s, !std::isfinite(loss)};
  }

  std::optional<std::string> first_nonfinite_tensor() override {
    const auto values = model_->params().values();
    std::int64_t bad = static_cast<std::int64_t>(kept_ranges_.size());
    for (std::size_t t = 0; t < kept_ranges_.size() && bad == static_cast<std::int64_t>(kept_ranges_.size()); ++t) {
      const auto& r = kept_ranges_[t];
      const auto first = values.begin() + static_cast<std::ptrdiff_t>(r.offset);
      if (!std::all_of(first, first + static_cast<std::ptrdiff_t>(r.count), [](float v) { return std::isfinite(v); }))
        bad = static_cast<std::int64_t>(t);
    }
    comm_.allreduce(std::span<std::int64_t>(&bad, 1), comm::ReduceOp::min, "obs.control");
    if (bad == static_cast<std::int64_t>(kept_ranges_.size())) return std::nullopt;
    return kept_ranges_[static_cast<std::size_t>(bad)].name;
  }

  model::EvalResult evaluate() override {
    return zo_->evaluate(data_->test.images.data(), data_->test.labels.data(),
                         data_->test.count);
  }

  double epoch_progress() const override { return data_->loader->epoch_progress(); }
  std::int64_t syncs() const override { return zo_->syncs(); }
  std::vector<std::string> metric_names() const override { return {"zo_dropped"}; }
  std::vector<double> metric_values() const override { return {static_cast<double>(zo_->dropped_directions())}; }

  void save(const std::filesystem::path& path, LoopState& loop) override {
    save_zo_checkpoint(path, cfg_, comm_, *model_, *mask_, *zo_, *data_->loader, loop);
  }

  void load(const std::filesystem::path& path, LoopState& loop) override {
    io::CheckpointReader reader(path, comm_);
    check_zo_checkpoint(reader, cfg_, comm_);
    load_zo_checkpoint(reader, comm_, *model_, *zo_, *data_->loader, loop);
  }

  Json summary_fields() override {
    const auto nnz = static_cast<std::int64_t>(model_->nnz());
    std::int64_t state = 0;
    for (const auto& s : zo_->update().state()) state += static_cast<std::int64_t>(s.data.size());
    // Kept values, their gradient estimate and the update's state, all fp32 and compressed.
    const std::int64_t values = 2 * nnz + state;
    return {
        {"arch", "mlp"},
        {"strategy", "zo." + cfg_.string("optim.zo.form")},
        {"optimizer", "zo+" + cfg_.string("optim.zo.update")},
        {"precision_storage", "float"},
        {"num_params", model_->num_params()},
        {"kept_params", model_->nnz()},
        {"param_grad_optim_bytes", {{"values", values}, {"stored", 4 * values}, {"in_compute_dtype", 4 * values}, {"staging", 0}}},
        // The input and two ping-pong buffers, each holding optim.zo.directions_per_pass copies, and
        // a row's scratch (no activation gradients: no backward).
        {"activation_bytes", static_cast<std::int64_t>(model_->activation_bytes())},
        {"strategy_state_bytes", {{"per_rank", 0}, {"rank0", 0}, {"tables", 0}}},
        {"forward_flops_per_sample", model_->forward_flops_per_sample()},
        {"train_flops_per_step", flops_per_step_},
        {"label_histograms", data_->label_histograms},
        {"prune_peak_bytes", prune_peak_},
        {"prune_s", prune_s_},
        {"prune_method", prune_.method},
        {"prune_density", mask_->density()},
        {"prune_layers", layers_json_},
        {"zo_dropped_directions", zo_->dropped_directions()},
    };
  }

 private:
  struct KeptRange {  // one parameter tensor's slice of the compressed values
    std::string name;
    std::size_t offset = 0, count = 0;
  };
  const config::Config& cfg_;
  comm::Communicator& comm_;
  std::unique_ptr<TrainingData> data_;
  optim::PruneSettings prune_;
  std::shared_ptr<const optim::Mask> mask_;
  std::unique_ptr<model::SparseMlp> model_;
  std::unique_ptr<ZoTrainer> zo_;
  std::vector<KeptRange> kept_ranges_;
  Json layers_json_;
  int batch_ = 0;
  double prune_s_ = 0.0, flops_per_step_ = 0.0;
  std::int64_t prune_peak_ = 0;
};

}  // namespace

std::unique_ptr<Learner> make_zo_learner(const config::Config& cfg, comm::Communicator& comm,
                                         const std::optional<std::filesystem::path>& resume) {
  return std::make_unique<ZoLearner>(cfg, comm, resume);
}

}  // namespace lowsync::app
