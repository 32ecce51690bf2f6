// The backprop learner (app/learner.hpp). Per step (STYLE.md §2): loader.next, forward_backward,
// strategy.after_backward, optimizer.step (unless the strategy owns the update),
// strategy.after_update. Evaluation uses the global model: the local replica when the strategy
// keeps replicas identical, else the average of the replicas, split over ranks.
#include "lowsync/app/learner.hpp"
#include "lowsync/app/run_loop.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/sync/strategy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lowsync::app {
namespace {

using Json = nlohmann::json;

// Bytes of parameters + gradients + optimizer state: as this run stores them ("stored": float
// buffers, plus the fake-quantized weight copy for fp8; 2 bytes per value for native 16-bit
// storage) and as a native implementation of the compute dtype holds them ("in_compute_dtype":
// 2 bytes per value for bf16/fp16; fp8 keeps fp32 shadow weights, gradients and state, plus 1
// byte per weight). "staging": the fp32 stage native 16-bit layers compute through, shared by
// parameter tiles and activation chunks (docs/precision.md).
Json state_bytes_json(model::Model& model, optim::Optimizer& optimizer) {
  const auto d = static_cast<std::int64_t>(model.num_params());
  std::int64_t state = 0;
  for (const auto& s : optimizer.state()) state += static_cast<std::int64_t>(s.data.size());
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
// plus DeMo's fp32 master of 16-bit compute; "rank0" rank 0's slice of the fp32 server model of a
// low-precision wire under float storage (sharded 1/K over the ranks); "tables" FDA's sketch
// hash tables.
Json strategy_state_bytes_json(sync::Strategy& strategy, std::int64_t fp32_master_values) {
  std::int64_t per_rank = 4 * fp32_master_values, root = 0;
  for (const auto& b : strategy.state_buffers())
    per_rank += static_cast<std::int64_t>(b.data.bytes_per_value() * b.data.size());
  for (const auto& b : strategy.root_state_buffers()) root += 4 * static_cast<std::int64_t>(b.data.size());
  return {{"per_rank", per_rank}, {"rank0", root}, {"tables", strategy.extra_state_bytes()}};
}

// precision.storage: native 16-bit storage where the run supports it (docs/precision.md): bf16/fp16
// compute, a strategy that averages gradients or 16-bit models (Strategy::supports_native16), a
// wire of fp32 or of the compute format, and an SGD/AdamW update. Float storage stays for the
// others (DeMo keeps fp32 parameters by spec; fp8 wires update fp32 replicas from the fp32 server
// model). auto falls back to float storage (logged); native refuses, naming the key.
model::Storage resolve_storage(const config::Config& cfg, const sync::Strategy& strategy) {
  const std::string& choice = cfg.string("precision.storage");
  const std::string& compute = cfg.string("precision.compute");
  if (compute != "bf16" && compute != "fp16") {
    if (choice == "native") fail("precision.storage = \"native\" needs precision.compute = bf16 or fp16, not {}", compute);
    return model::Storage::float32;
  }
  std::string unsupported;
  const std::string& wire = cfg.string("precision.wire");
  if (!strategy.supports_native16())
    unsupported = fmt::format("sync.strategy = {} (native storage: none | allreduce | periodic | fda)", strategy.name());
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

class BackpropLearner final : public Learner {
 public:
  BackpropLearner(const config::Config& cfg, comm::Communicator& comm)
      : cfg_(cfg), comm_(comm), data_(load_training_data(cfg, comm)), strategy_(sync::make_strategy(cfg)) {
    const int batch = static_cast<int>(cfg.integer("train.batch"));
    const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
    model_ = std::make_unique<model::Model>(cfg.string("model.arch"), batch, seed,
                                            model::parse_compute(cfg.string("precision.compute")),
                                            resolve_storage(cfg, *strategy_), model_options(cfg));
    model_->set_eval_batch(static_cast<int>(cfg.integer("eval.batch")));
    optimizer_ = strategy_->owns_update()
                     ? optim::make_no_update(cfg.real("optim.lr"), strategy_->name())
                     : optim::make_optimizer(cfg, model_->num_params(), model_->native16());
    log::info("{} ({} parameters), {} ranks x batch {}, strategy {}, optimizer {}, {} steps", model_->arch(),
              model_->num_params(), comm.size(), batch, strategy_->name(), optimizer_->name(), cfg.integer("train.steps"));
    ctx_ = std::make_unique<sync::StepContext>(sync::StepContext{0, comm, *model_, *optimizer_, 0.0f});
    strategy_->on_start(*ctx_);
    // 16-bit compute under a strategy that keeps fp32 parameters (DeMo, ALGORITHMS.md §5
    // "compose": a sign step of lr is below half an ulp of 16-bit weights near 1): forward,
    // backward and evaluation run on the master rounded to the 16-bit grid, swapped into
    // model.params() for the call. Checkpoints and the replica checksum see the fp32 master.
    fp32_master_ = model::is_16bit(model_->compute()) && strategy_->keeps_fp32_parameters();
    if (fp32_master_) master_ = memory::TrackedBuffer<float>("demo.fp32_master", model_->num_params());
  }

  int batch_per_rank() const override { return model_->batch(); }

  StepReport step(std::int64_t step) override {
    model::Model& model = *model_;
    ctx_->step = step;
    const data::Batch b = data_->loader->next();
    const Timer compute_timer;
    to_compute_params();
    const float loss = model.forward_backward(b);
    to_master_params();
    double compute_s = compute_timer.seconds();
    ctx_->local_loss = loss;
    strategy_->after_backward(*ctx_);
    if (!model.native16()) model.round_to_compute(model.grads());  // 16-bit compute: the fp32 mean is stored in 16 bits
    if (!strategy_->owns_update()) {
      const Timer t;
      optimizer_->step(model.param_store(), model.grad_store());
      compute_s += t.seconds();
    }
    strategy_->after_update(*ctx_);
    if (!fp32_master_ && !model.native16()) model.round_to_compute(model.params());
    // Standalone 16-bit has no loss scaling or master copy to fall back on: an overflow to inf
    // in the weights stops the run (ALGORITHMS.md §3 "Edge cases").
    const bool nonfinite = !std::isfinite(loss) || (model::is_16bit(model.compute()) && !model.param_store().all_finite());
    return {loss, compute_s, nonfinite};
  }

  std::optional<std::string> first_nonfinite_tensor() override {
    model::Model& model = *model_;
    const auto& infos = model.param_infos();
    std::int64_t bad = std::numeric_limits<std::int64_t>::max();
    for (std::size_t t = 0; t < infos.size() && bad == std::numeric_limits<std::int64_t>::max(); ++t)
      if (!model.param_store().subspan(infos[t].offset, infos[t].count).all_finite()) bad = static_cast<std::int64_t>(t);
    comm_.allreduce(std::span<std::int64_t>(&bad, 1), comm::ReduceOp::min, "obs.control");
    if (bad == std::numeric_limits<std::int64_t>::max()) return std::nullopt;
    return infos[static_cast<std::size_t>(bad)].name;
  }

  // Loss and accuracy of the global model over the whole test set: the local replica when the
  // strategy keeps replicas identical, else the mean of the replicas (evaluated in place, the
  // local replica restored afterwards).
  model::EvalResult evaluate() override {
    model::Model& model = *model_;
    const bool average = comm_.size() > 1 && !strategy_->replicas_identical();
    to_compute_params();
    const model::ParamStore params = model.param_store();
    if (average) {
      // Under native storage: fp32 sums rounded to the 16-bit grid, as a sync would.
      if (saved_params_.size() == 0) saved_params_ = memory::TrackedBuffer<std::byte>("eval.saved_params", params.raw_bytes().size());
      std::copy(params.raw_bytes().begin(), params.raw_bytes().end(), saved_params_.data());
      sync::average_replicas(comm_, params, "obs.eval");
    }
    // A rank whose slice is empty (more ranks than text validation windows) adds nothing.
    const auto local = data_->test.count == 0 ? model::EvalResult{}
                                              : model.evaluate(data_->test.images.data(), data_->test.labels.data(),
                                                               data_->test.count);
    if (average) std::copy(saved_params_.data(), saved_params_.data() + saved_params_.size(), params.raw_bytes().begin());
    to_master_params();
    return combine_over_ranks(local, comm_);
  }

  double epoch_progress() const override { return data_->loader->epoch_progress(); }
  int tokens_per_sample() const override { return data_->positions; }
  std::int64_t syncs() const override { return strategy_->syncs(); }
  std::vector<std::string> metric_names() const override { return strategy_->metric_names(); }
  std::vector<double> metric_values() const override { return strategy_->metric_values(); }

  void save(const std::filesystem::path& path, LoopState& loop) override {
    TrainState state{cfg_, comm_, *model_, *optimizer_, *strategy_, *data_->loader, loop};
    save_checkpoint(path, state);
  }

  void load(const std::filesystem::path& path, LoopState& loop) override {
    TrainState state{cfg_, comm_, *model_, *optimizer_, *strategy_, *data_->loader, loop};
    for (const auto& note : load_checkpoint(path, state)) log::info("{}", note);
  }

  Json summary_fields() override {
    model::Model& model = *model_;
    Json fields = {
        {"arch", model.arch()},
        {"strategy", std::string(strategy_->name())},
        {"optimizer", std::string(optimizer_->name())},
        {"precision_storage", model.native16() ? "native" : "float"},
        {"num_params", model.num_params()},
        {"param_grad_optim_bytes", state_bytes_json(model, *optimizer_)},
        // The training batch's activation + activation-gradient buffers (2 bytes per value with
        // native 16-bit storage, 4 otherwise), rank 0's model: every rank has the same.
        {"activation_bytes", static_cast<std::int64_t>(model.activation_bytes())},
        {"strategy_state_bytes", strategy_state_bytes_json(*strategy_, static_cast<std::int64_t>(master_.size()))},
        {"forward_flops_per_sample", model.forward_flops_per_sample()},
    };
    // Each rank's data: label counts (images) or the files it draws windows from (text).
    if (data_->positions > 0) fields["data_sources"] = data_->sources;
    else fields["label_histograms"] = data_->label_histograms;
    return fields;
  }

 private:
  void to_compute_params() {
    if (!fp32_master_) return;
    std::copy(model_->params().begin(), model_->params().end(), master_.data());
    model_->round_to_compute(model_->params());
  }
  void to_master_params() {
    if (fp32_master_) std::copy(master_.data(), master_.data() + master_.size(), model_->params().begin());
  }

  const config::Config& cfg_;
  comm::Communicator& comm_;
  std::unique_ptr<TrainingData> data_;
  std::unique_ptr<sync::Strategy> strategy_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<sync::StepContext> ctx_;
  bool fp32_master_ = false;
  memory::TrackedBuffer<float> master_;                  // fp32 master of a strategy that keeps fp32 parameters
  memory::TrackedBuffer<std::byte> saved_params_;  // the local replica (as stored) while the average is evaluated
};

}  // namespace

std::unique_ptr<Learner> make_backprop_learner(const config::Config& cfg, comm::Communicator& comm) {
  return std::make_unique<BackpropLearner>(cfg, comm);
}

}  // namespace lowsync::app
