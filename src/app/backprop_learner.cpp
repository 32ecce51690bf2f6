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
#include "lowsync/sync/strategy.hpp"
#include "lowsync/sync/wire.hpp"
#include "lowsync/tensor/half.hpp"

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
                                            resolve_storage(cfg, *strategy_));
    model_->set_eval_batch(static_cast<int>(cfg.integer("eval.batch")));
    optimizer_ = strategy_->owns_update()
                     ? optim::make_no_update(cfg.real("optim.lr"), strategy_->name())
                     : optim::make_optimizer(cfg, model_->num_params(), model_->native16());
    // Evaluating an average needs the local replica saved meanwhile (native storage saves its
    // u16 replica when it first needs to).
    if (comm.size() > 1 && !strategy_->replicas_identical() && !model_->native16())
      saved_params_ = memory::TrackedBuffer<float>("eval.saved_params", model_->num_params());
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
      if (model.native16())
        optimizer_->step16(model.params16(), model.grads16());
      else
        optimizer_->step(model.params(), model.grads());
      compute_s += t.seconds();
    }
    strategy_->after_update(*ctx_);
    if (!fp32_master_ && !model.native16()) model.round_to_compute(model.params());
    bool nonfinite = !std::isfinite(loss);
    // Standalone 16-bit has no loss scaling or master copy to fall back on: an overflow to inf
    // in the weights stops the run (ALGORITHMS.md §3 "Edge cases").
    if (!nonfinite && model.native16()) {
      nonfinite = !tensor::all_finite_16bit(model.params16(), model.compute() == model::Compute::bf16);
    } else if (!nonfinite && model::is_16bit(model.compute())) {
      const auto w = model.params();
      nonfinite = !std::all_of(w.begin(), w.end(), [](float v) { return std::isfinite(v); });
    }
    return {loss, compute_s, nonfinite};
  }

  std::optional<std::string> first_nonfinite_tensor() override {
    model::Model& model = *model_;
    const auto& infos = model.param_infos();
    std::int64_t bad = std::numeric_limits<std::int64_t>::max();
    for (std::size_t t = 0; t < infos.size() && bad == std::numeric_limits<std::int64_t>::max(); ++t) {
      const bool finite =
          model.native16()
              ? tensor::all_finite_16bit(model.params16().subspan(infos[t].offset, infos[t].count),
                                         model.compute() == model::Compute::bf16)
              : std::all_of(model.params().begin() + static_cast<std::ptrdiff_t>(infos[t].offset),
                            model.params().begin() + static_cast<std::ptrdiff_t>(infos[t].offset + infos[t].count),
                            [](float v) { return std::isfinite(v); });
      if (!finite) bad = static_cast<std::int64_t>(t);
    }
    comm_.allreduce(std::span<std::int64_t>(&bad, 1), comm::ReduceOp::min, "obs.control");
    if (bad == std::numeric_limits<std::int64_t>::max()) return std::nullopt;
    return infos[static_cast<std::size_t>(bad)].name;
  }

  // Loss and accuracy of the global model over the whole test set: the local replica when the
  // strategy keeps replicas identical, else the mean of the replicas (evaluated in place, the
  // local replica restored afterwards).
  model::EvalResult evaluate() override {
    model::Model& model = *model_;
    comm::Communicator& comm = comm_;
    const bool average = comm.size() > 1 && !strategy_->replicas_identical();
    const auto n = static_cast<std::int64_t>(data_->test.labels.size());
    to_compute_params();
    model::EvalResult local;
    if (model.native16()) {
      auto params16 = model.params16();
      if (average) {
        if (saved_params16_.size() == 0)
          saved_params16_ = memory::TrackedBuffer<std::uint16_t>("eval.saved_params16", params16.size());
        std::copy(params16.begin(), params16.end(), saved_params16_.data());
        // fp32 sums rounded to the 16-bit grid, as a sync would, on the replica itself.
        sync::average_native16(comm, params16, model.compute() == model::Compute::bf16, sync::WireFormat::fp32, "obs.eval");
      }
      local = model.evaluate(data_->test.images.data(), data_->test.labels.data(), n);
      if (average) std::copy(saved_params16_.data(), saved_params16_.data() + params16.size(), params16.begin());
    } else {
      auto params = model.params();
      if (average) {
        std::copy(params.begin(), params.end(), saved_params_.data());
        comm.allreduce(params, comm::ReduceOp::sum, "obs.eval");
        const float inv = 1.0f / static_cast<float>(comm.size());
        for (float& p : params) p *= inv;
      }
      local = model.evaluate(data_->test.images.data(), data_->test.labels.data(), n);
      if (average) std::copy(saved_params_.data(), saved_params_.data() + params.size(), params.begin());
    }
    to_master_params();
    return combine_over_ranks(local, comm);
  }

  double epoch_progress() const override { return data_->loader->epoch_progress(); }
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
    return {
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
        {"label_histograms", data_->label_histograms},
    };
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
  memory::TrackedBuffer<float> saved_params_;            // the local replica while the average is evaluated
  memory::TrackedBuffer<std::uint16_t> saved_params16_;  // the same, native 16-bit storage
};

}  // namespace

std::unique_ptr<Learner> make_backprop_learner(const config::Config& cfg, comm::Communicator& comm) {
  return std::make_unique<BackpropLearner>(cfg, comm);
}

}  // namespace lowsync::app
