// FDA (ALGORITHMS.md §4): sync only when the estimated replica variance passes the threshold;
// the estimate costs one small allreduce per step (plus one int for the decision), a sync one
// allreduce of the model. The estimators themselves live in sync/fda_estimators.hpp.
// Native 16-bit storage (precision.storage): w0 and w0_prev are u16 copies of the u16 parameters
// (exact), the local state is computed from them in small decoded chunks (bitwise the float
// computation on the same values), a sync is average_native16 with an fp32 wire or the compute
// format's. xi (linear) stays fp32: the first round's shared Gaussian is not on any 16-bit grid.
#pragma once

#include "lowsync/core/memory.hpp"
#include "lowsync/sync/fda_estimators.hpp"
#include "lowsync/sync/strategy.hpp"
#include "lowsync/sync/wire.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::sync {

struct FdaOptions {
  fda::EstimatorSpec estimator;        // sync.fda.estimator, sketch_depth, sketch_width
  double threshold = -1.0;             // sync.fda.threshold: Theta; negative = unset
  double threshold_per_param = 3.9e-5; // sync.fda.threshold_per_param: Theta = c * num_params
  std::uint64_t seed = 1;              // train.seed: sketch hashes and the Gaussian xi
  bool average_optimizer_state = false;  // sync.average_optimizer_state
  // precision.wire: under float storage a non-fp32 sync goes through the fp32 server model;
  // native 16-bit storage sends fp32 or the compute format (average_native16), nothing else.
  WireFormat wire = WireFormat::fp32;
};

// Reads the sync.fda.* keys, train.seed and sync.average_optimizer_state; throws naming a key.
FdaOptions fda_options_from_config(const config::Config& cfg);

class FdaStrategy final : public Strategy {
 public:
  explicit FdaStrategy(const config::Config& cfg);
  explicit FdaStrategy(FdaOptions options);

  std::string_view name() const override { return "fda"; }
  bool supports_native16() const override { return true; }
  // Broadcast from rank 0 (the base), then begin() on the now identical parameters.
  void on_start(StepContext& ctx) override;
  // step() on the model's parameters and the optimizer.
  void after_update(StepContext& ctx) override;
  // fda_vhat (V^ of the last step; inf when a rank's state was non-finite), fda_threshold
  // (Theta), fda_syncs (syncs so far).
  std::vector<std::string> metric_names() const override;
  std::vector<double> metric_values() const override;
  std::int64_t syncs() const override { return syncs_; }
  // w0, w0_prev, xi (linear only) and syncs; a reshard starts a new round from the averaged
  // parameters (begin()), as after a sync. Native storage: w0, w0_prev as 16-bit stores.
  std::vector<optim::StateBuffer> state_buffers() override;
  std::int64_t extra_state_bytes() const override;
  // precision.wire != fp32: the server model (W, B) on rank 0 and its excluded-upload count.
  std::vector<RootStateBuffer> root_state_buffers() override;
  std::vector<StateCounter> state_counters() const override;
  void restore_counters(std::span<const StateCounter> c) override;
  std::string reshard(StepContext& ctx) override;

  // on_start without the broadcast: w0 = w0_prev = params, xi = the shared Gaussian, sketch
  // tables built, Theta resolved from params.size(). Every rank must pass identical params.
  // Native 16-bit storage (params of bf16 or fp16 bits): w0, w0_prev are kept as such (w0_16(),
  // w0_prev16(); w0() and w0_prev() are then empty), and a sync averages with average_native16
  // (precision.wire fp32 or the compute format), the optimizer's state with an fp32 wire.
  void begin(model::ParamStore params);
  // after_update on a bare buffer: local state, allreduce, V^, decision (int MAX guard), and on a
  // sync the average of params (and of the optimizer state when asked; optimizer may be null).
  // Every rank calls it at the same point, with the storage it began with; returns true when
  // this step synced.
  bool step(comm::Communicator& comm, std::int64_t step, model::ParamStore params,
            optim::Optimizer* optimizer = nullptr);
  bool native16() const { return native16_; }

  const FdaOptions& options() const { return options_; }
  double threshold() const { return threshold_; }         // resolved Theta (after begin)
  double last_estimate() const { return last_estimate_; }  // V^ of the last step
  bool last_synced() const { return last_synced_; }

  // Estimator state for checkpoints (valid after begin): a restore writes into these spans and
  // calls set_syncs. xi is empty unless the estimator is linear.
  std::span<float> w0() { return w0_.span(); }
  std::span<float> w0_prev() { return w0_prev_.span(); }
  std::span<float> xi() { return xi_.span(); }
  std::span<std::uint16_t> w0_16() { return w0_16_.span(); }
  std::span<std::uint16_t> w0_prev16() { return w0_prev16_.span(); }
  void set_syncs(std::int64_t n) { syncs_ = n; }

 private:
  FdaOptions options_;
  double threshold_ = 0.0;
  memory::TrackedBuffer<float> w0_;       // [d] model at the last sync
  memory::TrackedBuffer<float> w0_prev_;  // [d] model at the sync before
  memory::TrackedBuffer<float> xi_;       // [d] shared direction (linear only, also native)
  memory::TrackedBuffer<std::uint16_t> w0_16_;       // [d] native storage: w0
  memory::TrackedBuffer<std::uint16_t> w0_prev16_;   // [d] native storage: w0_prev
  bool native16_ = false;
  bool bf16_ = false;  // native storage: bf16 (else fp16) bit patterns
  memory::TrackedBuffer<double> state_;   // [state_size] local state, summed in place
  std::optional<fda::SketchHashes> hashes_;
  void begin_float(std::span<const float> params);
  void begin16(std::span<const std::uint16_t> params, bool bf16);
  bool step_float(comm::Communicator& comm, std::int64_t step, std::span<float> params, optim::Optimizer* optimizer);
  bool step16(comm::Communicator& comm, std::int64_t step, std::span<std::uint16_t> params, optim::Optimizer* optimizer);
  // Everything of begin_float()/begin16() but w0, w0_prev, xi: Theta, hash tables, state, flags.
  void begin_common(std::size_t d);
  // V^ from this rank's state (summed over ranks) and the agreed decision.
  bool decide(comm::Communicator& comm);
  std::int64_t syncs_ = 0;
  double last_estimate_ = 0.0;
  bool last_synced_ = false;
  bool started_ = false;
  // precision.wire != fp32: syncs go through the fp32 server model (sync/wire.hpp); w0 is then
  // the decoded broadcast every rank holds. Started at the first sync from w0.
  void start_server(comm::Communicator& comm);
  ServerAverager server_;
  std::vector<std::size_t> counts_;  // elements per parameter tensor (empty: one tensor)
  bool server_started_ = false;
};

}  // namespace lowsync::sync
