// Learner: what one kind of training does on every rank (STYLE.md §5): a step on the next batch,
// the evaluation of the global model, its metrics columns, checkpoints and summary fields.
// app::RunLoop drives it and owns everything runs share (step-boundary control, progress,
// metrics rows, evaluation and checkpoint cadence, stop signals, summary.json). Backprop
// (backprop_learner.cpp) and zeroth-order training (zo_learner.cpp) are the two learners.
#pragma once

#include "lowsync/app/checkpointing.hpp"
#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/model/model.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lowsync::app {

struct StepReport {
  double loss = 0.0;        // this rank's training loss of the step (at the weights it started from)
  double compute_s = 0.0;   // seconds of local computation in the step (communication excluded)
  bool nonfinite = false;   // this rank saw a non-finite loss or weight: the run stops
};

class Learner {
 public:
  virtual ~Learner() = default;
  virtual int batch_per_rank() const = 0;
  // One training step (1-based `step`) on this rank's next batch. Every rank calls it.
  virtual StepReport step(std::int64_t step) = 0;
  // Collective. Name of the first parameter tensor holding a non-finite value on any rank (the
  // same answer everywhere), or nullopt.
  virtual std::optional<std::string> first_nonfinite_tensor() = 0;
  // Collective. Test loss and accuracy of the global model, the same on every rank.
  virtual model::EvalResult evaluate() = 0;
  virtual double epoch_progress() const = 0;
  // Tokens per training sample of a text workload (T; then evaluation is on validation windows, the
  // loss in nats per byte); 0 for images.
  virtual int tokens_per_sample() const { return 0; }
  virtual std::int64_t syncs() const = 0;
  // Extra metrics.csv columns, after the common ones (fixed names; one value each per row).
  virtual std::vector<std::string> metric_names() const = 0;
  virtual std::vector<double> metric_values() const = 0;
  // Collective. Writes a checkpoint of everything needed to continue after loop.step.
  virtual void save(const std::filesystem::path& path, LoopState& loop) = 0;
  // Collective. Restores a checkpoint written by save (loop state included); throws one line
  // naming the file on any mismatch.
  virtual void load(const std::filesystem::path& path, LoopState& loop) = 0;
  // Collective. The learner's summary.json fields: arch, strategy, optimizer, precision_storage,
  // num_params, the state-byte breakdowns, label_histograms, ... plus its own.
  virtual nlohmann::json summary_fields() = 0;
};

// The learner for cfg (optim.name = zo: zeroth-order; otherwise backprop). `resume`: the
// checkpoint the run continues from (the zeroth-order learner reads its pruning mask from it;
// RunLoop calls load() for the rest). Collective.
std::unique_ptr<Learner> make_learner(const config::Config& cfg, comm::Communicator& comm,
                                      const std::optional<std::filesystem::path>& resume);
std::unique_ptr<Learner> make_backprop_learner(const config::Config& cfg, comm::Communicator& comm);
std::unique_ptr<Learner> make_zo_learner(const config::Config& cfg, comm::Communicator& comm,
                                         const std::optional<std::filesystem::path>& resume);

}  // namespace lowsync::app
