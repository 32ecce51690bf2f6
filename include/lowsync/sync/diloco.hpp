// DiLoCo and Streaming DiLoCo (ALGORITHMS.md §6): every sync.period (H) inner steps of any inner
// optimizer, the replicas' pseudo-gradient Delta = theta_g - mean_k theta_k feeds an outer
// Nesterov SGD on the global model theta_g (fp32, identical on every rank, like its momentum m).
// Streaming: the tensors are cut into sync.diloco.fragments groups, fragment f syncing at the steps
// t with (t - floor(f H / F)) mod H == 0; sync.diloco.overlap tau delays the merge of a fragment's
// round by tau inner steps (non-blocking allreduce), mixing theta_k = alpha theta_k + (1 - alpha) theta_g.
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/sync/strategy.hpp"
#include "lowsync/sync/wire.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::sync {

struct DilocoOptions {
  std::int64_t period = 10;     // sync.period: H inner steps per round of a fragment
  double outer_lr = 0.7;        // sync.diloco.outer_lr
  double outer_momentum = 0.9;  // sync.diloco.outer_momentum (Nesterov)
  int fragments = 1;            // sync.diloco.fragments: F
  std::int64_t overlap = 0;     // sync.diloco.overlap: tau, 0 <= tau < H
  double mix = 0.5;             // sync.diloco.mix: alpha of the delayed merge (tau >= 1)
  WireFormat wire = WireFormat::fp32;  // precision.wire of the pseudo-gradient
  std::uint64_t seed = 1;       // train.seed: stochastic rounding streams of an fp8 wire
};

// Reads sync.period, sync.diloco.*, precision.wire and train.seed; throws naming a key.
DilocoOptions diloco_options_from_config(const config::Config& cfg);

// A fragment: tensors [first_tensor, first_tensor + num_tensors) of the model, which lie back to
// back at elements [offset, offset + count) of the flat parameters; it syncs at the steps t >= 1
// with (t - phase) mod H == 0.
struct Fragment {
  std::size_t first_tensor = 0, num_tensors = 0;
  std::size_t offset = 0, count = 0;
  std::int64_t phase = 0;
};

// The grouping: F contiguous runs of whole tensors in model order whose largest run (elements) is
// as small as it can be (ties: the earliest cut), phase_f = floor(f H / F). Needs F <= tensors
// and F <= H (distinct phases, each >= 1 but the first); throws naming the key otherwise.
std::vector<Fragment> plan_fragments(std::span<const std::size_t> tensor_counts, int fragments, std::int64_t period);
inline bool fragment_syncs_at(const Fragment& f, std::int64_t period, std::int64_t step) {
  return step >= 1 && step >= f.phase && (step - f.phase) % period == 0;
}

// One outer Nesterov step, element-wise over a fragment (ALGORITHMS.md §6):
//   Delta = theta_g - mean;  m = mu m + Delta;  theta_g = theta_g - lr (Delta + mu m)
// from_mean takes the replicas' fp32 mean and writes the last line as mean + ((1 - lr) Delta -
// lr mu m), the same value in exact arithmetic, so that lr = 1, mu = 0 gives theta_g = mean
// bitwise (periodic averaging). from_delta takes the pseudo-gradient (a low-precision wire's
// decoded mean of the ranks' theta_g - theta_k). Both return sum Delta^2 (for the metric).
double outer_step_from_mean(std::span<float> theta_g, std::span<float> momentum, std::span<const float> mean,
                            float lr, float mu);
double outer_step_from_delta(std::span<float> theta_g, std::span<float> momentum, std::span<const float> delta,
                             float lr, float mu);

class DilocoStrategy final : public Strategy {
 public:
  explicit DilocoStrategy(const config::Config& cfg);
  explicit DilocoStrategy(DilocoOptions options);

  std::string_view name() const override { return "diloco"; }
  // theta_g and m are fp32 whatever the compute precision; the replicas are stored as floats
  // rounded to it (precision.storage = auto picks float storage: no native 16-bit path).
  // Broadcast from rank 0, theta_g = params, m = 0, the fragments planned and logged.
  void on_start(StepContext& ctx) override;
  // Completes the rounds due at this step (started tau steps ago), then starts this step's.
  void after_update(StepContext& ctx) override;
  std::int64_t syncs() const override { return syncs_; }
  // diloco_skipped (outer steps skipped for a non-finite pseudo-gradient), diloco_delta_norm
  // (||Delta|| of the last outer step's fragment; 0 after a resume until the next outer step),
  // diloco_max_sync_bytes (modeled wire bytes of the largest fragment's round on this rank: the
  // peak a link carries at once).
  std::vector<std::string> metric_names() const override;
  std::vector<double> metric_values() const override;
  // diloco_global (theta_g), diloco_momentum (m), and with overlap diloco_inflight (what each
  // round in flight sent: its contribution, or a low-precision wire's reduced mean); counters:
  // syncs, outer_skipped and inflight_f<f> (start step of fragment f's round in flight, 0 = none).
  // A resume re-issues the rounds in flight in their start order, so it is bitwise. A reshard
  // keeps theta_g and m (identical on the old ranks), the replicas start from the averaged
  // parameters and rounds in flight are dropped (their progress is in the next round's Delta).
  std::vector<optim::StateBuffer> state_buffers() override;
  std::vector<StateCounter> state_counters() const override;
  void restore_counters(std::span<const StateCounter> c) override;
  std::string reshard(StepContext& ctx) override;

  const DilocoOptions& options() const { return options_; }
  const std::vector<Fragment>& fragments() const { return fragments_; }
  std::span<const float> global_model() const { return global_.span(); }
  std::span<const float> outer_momentum() const { return momentum_.span(); }
  std::int64_t outer_skipped() const { return skipped_; }

 private:
  struct Round {
    std::int64_t started = 0;  // step the round started (0 = none in flight)
    comm::PendingAllreduce pending;  // fp32 wire: the sum of the replicas' fragment
  };
  void start_round(StepContext& ctx, std::size_t f);
  void issue(comm::Communicator& comm, std::size_t f);
  void finish_round(StepContext& ctx, std::size_t f);
  // The outer step (or its skip) of fragment f once the round's reduction is known; merges the
  // replica: theta_k = theta_g (tau = 0) or alpha theta_k + (1 - alpha) theta_g.
  void apply(StepContext& ctx, std::size_t f, bool finite, std::span<const float> reduced);

  DilocoOptions options_;
  std::vector<Fragment> fragments_;
  std::vector<std::size_t> tensor_counts_;
  memory::TrackedBuffer<float> global_;    // [d] theta_g
  memory::TrackedBuffer<float> momentum_;  // [d] m
  memory::TrackedBuffer<float> send_;      // [d] per fragment in flight: its contribution (fp32: theta_k;
                                           //     low-precision wire: Delta_k, then the reduced mean)
  memory::TrackedBuffer<float> recv_;      // [d] fp32 wire: the sum arriving (not checkpointed)
  std::vector<Round> rounds_;              // [F]
  bool reissue_ = false;                   // restored rounds in flight have no request yet
  std::int64_t syncs_ = 0, skipped_ = 0;
  double last_delta_norm_ = 0.0;
  std::uint64_t max_sync_bytes_ = 0;
};

}  // namespace lowsync::sync
