// Baseline strategies: none, allreduce (DDP), periodic (local SGD / FedAvg).
#pragma once

#include "lowsync/sync/strategy.hpp"
#include "lowsync/sync/wire.hpp"

namespace lowsync::sync {

// data = mean over ranks of data (sum allreduce, then scale).
void average_in_place(comm::Communicator& comm, std::span<float> data, std::string_view traffic);
// The mean over ranks of a store with an fp32 wire, whatever its storage: fp32 as
// average_in_place, 16-bit through fp32 chunk sums rounded back (average_native16). Collective.
void average_replicas(comm::Communicator& comm, model::ParamStore data, std::string_view traffic);

// Elements per parameter tensor of the model (the per-tensor scales of fp8 wire formats).
std::vector<std::size_t> tensor_counts(const model::Model& model);

class NoneStrategy final : public Strategy {
 public:
  std::string_view name() const override { return "none"; }
  bool supports_native16() const override { return true; }
};

// precision.wire != fp32: gradients are reduce-scattered encoded, summed in fp32 and the mean
// all-gathered encoded (average_via_wire, sync/wire.hpp).
class AllreduceStrategy final : public Strategy {
 public:
  explicit AllreduceStrategy(WireFormat wire = WireFormat::fp32, std::uint64_t seed = 1) : wire_(wire), seed_(seed) {}
  std::string_view name() const override { return "allreduce"; }
  // Every rank applies the same update to bitwise the same reduced gradient.
  bool replicas_identical() const override { return true; }
  bool supports_native16() const override { return true; }
  void on_start(StepContext& ctx) override;
  void after_backward(StepContext& ctx) override;
  std::int64_t syncs() const override { return syncs_; }
  std::vector<StateCounter> state_counters() const override { return {{"syncs", syncs_}}; }
  void restore_counters(std::span<const StateCounter> c) override { syncs_ = find_counter(c, "syncs"); }

 private:
  WireFormat wire_;
  std::uint64_t seed_;
  std::vector<std::size_t> counts_;
  std::int64_t syncs_ = 0;
};

class PeriodicStrategy final : public Strategy {
 public:
  // precision.wire != fp32: the model travels through the fp32 server model (ServerAverager);
  // optimizer state, when averaged, stays fp32. Native 16-bit storage: no server model; the u16
  // parameters are averaged by average_native16 with the wire (fp32 or the compute format), the
  // optimizer's state16() with an fp32 wire.
  PeriodicStrategy(std::int64_t period, bool average_optimizer_state, WireFormat wire = WireFormat::fp32,
                   std::uint64_t seed = 1);
  std::string_view name() const override { return "periodic"; }
  bool supports_native16() const override { return true; }
  void on_start(StepContext& ctx) override;
  void after_update(StepContext& ctx) override;
  std::int64_t syncs() const override { return syncs_; }
  // precision.wire != fp32: the server model (W, B) on rank 0 and its excluded-upload count.
  std::vector<RootStateBuffer> root_state_buffers() override { return server_.root_state(""); }
  std::vector<StateCounter> state_counters() const override;
  void restore_counters(std::span<const StateCounter> c) override;
  std::string reshard(StepContext& ctx) override;

 private:
  std::int64_t period_;
  bool average_optimizer_state_;
  ServerAverager server_;
  std::int64_t syncs_ = 0;
};

}  // namespace lowsync::sync
