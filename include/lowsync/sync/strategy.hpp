// Synchronization strategy interface (STYLE.md "One training step"): hooks every rank calls at
// the same points of every step, so all ranks issue the same collectives in the same order.
//   zero_grad; forward_backward; after_backward; optimizer.step (unless owns_update); after_update
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowsync::sync {

// A named integer counter of a strategy's checkpoint state ("syncs", "skipped_steps", ...).
struct StateCounter {
  std::string name;
  std::int64_t value = 0;
};

// A float buffer of global state spread over the ranks (the fp32 server model of a low-precision
// wire format, sharded 1/K per rank): checkpointed once, as the global dataset
// "strategy/root/<name>" (the slices gathered), and restored slice by slice, also across a
// reshard (the server is not a replica; each rank takes its slice of the new layout) unless the
// strategy's reshard() replaces it and says so: FDA starts a new round there, with the server
// model = the averaged parameters. `size` is the same on every rank; `data` is this rank's
// slice, elements [offset, offset + data.size()) of the buffer (the slices of all ranks tile
// it; a buffer held whole by rank 0 is the slice [0, size) there and empty elsewhere).
struct RootStateBuffer {
  std::string name;
  std::size_t size = 0;
  std::span<float> data;
  std::size_t offset = 0;
};

struct StepContext {
  std::int64_t step = 0;  // 1-based number of the step being taken
  comm::Communicator& comm;
  model::Model& model;
  optim::Optimizer& optimizer;
  float local_loss = 0.0f;
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string_view name() const = 0;
  // Before the first step: make replicas identical (default: broadcast parameters from rank 0).
  virtual void on_start(StepContext& ctx);
  virtual void after_backward(StepContext& ctx) {}
  // True when the strategy applies the update itself in after_backward (DeMo); the trainer then
  // skips optimizer.step.
  virtual bool owns_update() const { return false; }
  // The strategy answers for itself (STYLE.md §5), so nothing outside sync/ names a strategy:
  //   replicas_identical     every rank holds bitwise the same parameters after every step
  //                          (evaluation then uses the local replica instead of an average)
  //   keeps_fp32_parameters  parameters stay an fp32 master even under 16-bit compute
  //   supports_native16      works on native 16-bit storage (u16 parameters, gradients, state)
  virtual bool replicas_identical() const { return false; }
  virtual bool keeps_fp32_parameters() const { return false; }
  virtual bool supports_native16() const { return false; }
  virtual void after_update(StepContext& ctx) {}
  // Extra metrics.csv columns (fixed names, one value per logged step) and summary.json fields.
  virtual std::vector<std::string> metric_names() const { return {}; }
  virtual std::vector<double> metric_values() const { return {}; }
  virtual std::int64_t syncs() const { return 0; }

  // Checkpoint state (app/checkpointing.cpp stores it per rank, README "Checkpoints"). Valid after
  // on_start. A strategy with more state adds buffers/counters here; nothing else changes:
  //   state_buffers    model-sized buffers as stored (fp32, or native 16-bit bit patterns, which
  //                    are saved widened to float like the model, exactly, and narrowed back),
  //                    restored by writing into them (after on_start)
  //   state_counters   integer counters, given back to restore_counters by name
  //   root_state_buffers  the server state, sliced over the ranks (same names and sizes everywhere)
  //   reshard          called after a resume on a different rank count, once params, buffers
  //                    (averaged over the old ranks) and counters are restored; fixes whatever
  //                    the average does not and returns what it did, for the log line
  virtual std::vector<optim::StateBuffer> state_buffers() { return {}; }
  virtual std::vector<RootStateBuffer> root_state_buffers() { return {}; }
  virtual std::vector<StateCounter> state_counters() const { return {}; }
  virtual void restore_counters(std::span<const StateCounter> counters) {}
  virtual std::string reshard(StepContext& ctx) { return "nothing to adjust"; }
  // Bytes of model-sized buffers the strategy holds that are not checkpoint state (FDA's sketch
  // hash tables), for summary.json strategy_state_bytes.
  virtual std::int64_t extra_state_bytes() const { return 0; }
};

// Value of `name` in counters; `fallback` when absent (state saved by an older strategy).
std::int64_t find_counter(std::span<const StateCounter> counters, std::string_view name, std::int64_t fallback = 0);

// Rules between the strategy's keys and the others (optim.name, precision.wire, ...); throws one
// line naming the keys. No communication: every rank fails alike.
void validate_config(const config::Config& cfg);
// Whether cfg's sync.strategy applies the update itself (Strategy::owns_update), without building
// or validating it (a checkpoint's saved config sets every key explicitly).
bool strategy_owns_update(const config::Config& cfg);
// sync.strategy = none | allreduce | periodic | ... ; validates the strategy's own keys.
std::unique_ptr<Strategy> make_strategy(const config::Config& cfg);

}  // namespace lowsync::sync
