// train(): validates the configuration, prepares the output folder and runs the learner of the
// run (backprop or zeroth-order, app/learner.hpp) through the one RunLoop (app/run_loop.hpp).
// evaluate_checkpoint(): `lowsync eval`.
#include "lowsync/app/trainer.hpp"

#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/learner.hpp"
#include "lowsync/app/preflight.hpp"
#include "lowsync/app/run_loop.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/data/dataset.hpp"
#include "lowsync/data/registry.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/io/metrics.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/sync/strategy.hpp"

#include <algorithm>
#include <numbers>

namespace lowsync::app {
namespace {

using Json = nlohmann::json;

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

}  // namespace

TrainResult train(const config::Config& cfg, comm::Communicator& comm, const std::filesystem::path& out_dir,
                  const std::optional<std::filesystem::path>& resume) {
  const Timer wall;  // this segment of the run
  cfg.validate();
  sync::validate_config(cfg);
  check_workload(cfg);
  reject_unimplemented(cfg);
  // The output folder first: a rank 0 that fails here must not leave the others inside the
  // collective calls of data loading or the checkpoint reader.
  if (comm.rank() == 0) {
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) fail("cannot create output folder '{}': {}", out_dir.string(), ec.message());
    io::write_file_atomic(out_dir / "config.toml", cfg.to_toml());
  }
  const auto learner = make_learner(cfg, comm, resume);
  log::info("output {}", out_dir.string());
  return RunLoop(cfg, comm, out_dir, wall).run(*learner, resume);
}

std::unique_ptr<Learner> make_learner(const config::Config& cfg, comm::Communicator& comm,
                                      const std::optional<std::filesystem::path>& resume) {
  if (cfg.string("optim.name") == "zo") return make_zo_learner(cfg, comm, resume);  // backprop-free
  return make_backprop_learner(cfg, comm);
}

Json evaluate_checkpoint(const std::filesystem::path& path, const config::Config& cfg, comm::Communicator& comm) {
  cfg.validate();
  check_workload(cfg);
  const bool text = text_workload(cfg);
  const auto& entry = data::dataset_entry(cfg.string("data.name"));
  // Every rank holds the same model: evaluate this rank's slice and sum (no parameter average).
  // Text: the run's validation windows (eval.windows of model.gpt.ctx + 1 bytes).
  const TestSlice slice =
      text ? validation_slice(entry.load_text(cfg.string("data.dir")), text_context(cfg), cfg.integer("eval.windows"),
                              comm.rank(), comm.size())
           : test_slice(entry.load(cfg.string("data.dir"), cfg.integer("data.train_limit")).test, comm.rank(), comm.size());
  model::Model model(cfg.string("model.arch"), static_cast<int>(cfg.integer("train.batch")),
                     static_cast<std::uint64_t>(cfg.integer("train.seed")), model::Compute::fp32,
                     model::Storage::float32, model_options(cfg));
  model.set_eval_batch(static_cast<int>(cfg.integer("eval.batch")));
  const auto mean = checkpoint_mean_params(path, comm, model.num_params());
  std::copy(mean.begin(), mean.end(), model.params().begin());
  const auto local =
      slice.count == 0 ? model::EvalResult{} : model.evaluate(slice.images.data(), slice.labels.data(), slice.count);
  const auto ev = combine_over_ranks(local, comm);
  io::CheckpointReader reader(path, comm);
  Json out = {{"checkpoint", path.string()}, {"step", reader.attribute_int("step")}, {"arch", model.arch()},
              {"test_loss", ev.loss},        {"test_accuracy", ev.accuracy},          {"samples", ev.samples}};
  if (text) {
    // The same numbers under the gpt workload's names (nats and bits per byte, next-byte accuracy).
    out["val_loss"] = ev.loss;
    out["val_bits_per_byte"] = ev.loss / std::numbers::ln2;
    out["val_accuracy"] = ev.accuracy;
  }
  return out;
}

}  // namespace lowsync::app
