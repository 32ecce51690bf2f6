// DeMo strategy (ALGORITHMS.md section 5): local decoupled momentum per tensor, chunked-DCT top-k
// of it exchanged with ONE allgather per step for all tensors, and a sign step on the decoded
// average. DeMo is the optimizer as well (owns_update), so replicas stay identical every step;
// a periodic parameter checksum proves it.
#pragma once

#include "lowsync/core/memory.hpp"
#include "lowsync/sync/demo_codec.hpp"
#include "lowsync/sync/strategy.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::sync {

struct DemoOptions {
  double weight_decay = 0.0;    // optim.weight_decay, decoupled: p *= 1 - lr * wd
  double beta = 0.999;          // optim.demo.beta, in [0, 1)
  std::int64_t topk = 32;       // optim.demo.topk
  std::int64_t chunk = 64;      // optim.demo.chunk (target chunk length per dimension)
  demo::WireFormat wire;        // optim.demo.index (u16|i64), optim.demo.value (fp32|bf16)
  std::int64_t check_every = 100;  // sync.check_every; 0 = never
};

// Reads and validates the keys above (throws lowsync::Error naming the key).
DemoOptions demo_options_from_config(const config::Config& cfg);

class DemoStrategy : public Strategy {
 public:
  explicit DemoStrategy(const config::Config& cfg);
  explicit DemoStrategy(DemoOptions options);

  std::string_view name() const override { return "demo"; }
  bool owns_update() const override { return true; }
  // Every rank applies the same decoded aggregate; parameters are fp32 by spec (ALGORITHMS.md §5).
  bool replicas_identical() const override { return true; }
  bool keeps_fp32_parameters() const override { return true; }
  // Broadcasts parameters from rank 0 (base class), then allocates delta and the codec.
  void on_start(StepContext& ctx) override;
  // The whole DeMo step on ctx.model's tensors; lr = ctx.optimizer.learning_rate(), so the
  // trainer's schedule applies (the optimizer itself is never stepped).
  void after_backward(StepContext& ctx) override;
  std::vector<std::string> metric_names() const override;
  std::vector<double> metric_values() const override;
  std::int64_t syncs() const override { return syncs_; }
  // delta (averaged over the old ranks on a reshard), syncs and skipped_steps.
  std::vector<optim::StateBuffer> state_buffers() override { return state(); }
  std::vector<StateCounter> state_counters() const override {
    return {{"syncs", syncs_}, {"skipped_steps", skipped_}};
  }
  void restore_counters(std::span<const StateCounter> c) override {
    syncs_ = find_counter(c, "syncs");
    skipped_ = find_counter(c, "skipped_steps");
  }
  std::string reshard(StepContext&) override { return "demo: delta = mean of the old ranks' delta"; }

  // One DeMo step over the tensors `infos` of the flat params/grads buffers (what
  // after_backward calls; tests drive it with synthetic gradients). Every rank must call it at
  // the same point. Returns false when some rank had a non-finite gradient and all skipped.
  bool step(comm::Communicator& comm, std::span<const model::ParamInfo> infos,
            std::span<float> params, std::span<const float> grads, double lr,
            std::int64_t step_number);

  // Allocates delta (zeros), the codec and the wire buffers once; later calls must agree.
  void prepare(std::span<const model::ParamInfo> infos, std::size_t num_params, int world_size);
  // Local momentum delta [num_params] (same offsets as params), for checkpoints: state() after
  // prepare() names it "demo_delta"; restore by writing into it.
  std::vector<optim::StateBuffer> state();
  const memory::TrackedBuffer<float>& delta() const { return delta_; }
  const DemoOptions& options() const { return options_; }
  const demo::Codec* codec() const { return codec_.get(); }
  std::int64_t skipped_steps() const { return skipped_; }

 private:
  void check_replicas(comm::Communicator& comm, std::span<const float> params, std::int64_t step);

  DemoOptions options_;
  std::unique_ptr<demo::Codec> codec_;
  std::vector<model::ParamInfo> infos_;
  int world_size_ = 0;
  memory::TrackedBuffer<float> delta_;           // [num_params]
  memory::TrackedBuffer<float> q_;               // [largest tensor] decoded update
  memory::TrackedBuffer<std::uint8_t> send_;     // [block_bytes]
  memory::TrackedBuffer<std::uint8_t> recv_;     // [world_size * block_bytes]
  std::int64_t syncs_ = 0;
  std::int64_t skipped_ = 0;
};

}  // namespace lowsync::sync
