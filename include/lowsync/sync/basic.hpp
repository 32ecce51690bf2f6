// Baseline strategies: none, allreduce (DDP), periodic (local SGD / FedAvg).
#pragma once

#include "lowsync/sync/strategy.hpp"

namespace lowsync::sync {

// data = mean over ranks of data (sum allreduce, then scale).
void average_in_place(comm::Communicator& comm, std::span<float> data, std::string_view traffic);

class NoneStrategy final : public Strategy {
 public:
  std::string_view name() const override { return "none"; }
};

class AllreduceStrategy final : public Strategy {
 public:
  std::string_view name() const override { return "allreduce"; }
  void after_backward(StepContext& ctx) override;
  std::int64_t syncs() const override { return syncs_; }
  std::vector<StateCounter> state_counters() const override { return {{"syncs", syncs_}}; }
  void restore_counters(std::span<const StateCounter> c) override { syncs_ = find_counter(c, "syncs"); }

 private:
  std::int64_t syncs_ = 0;
};

class PeriodicStrategy final : public Strategy {
 public:
  PeriodicStrategy(std::int64_t period, bool average_optimizer_state);
  std::string_view name() const override { return "periodic"; }
  void after_update(StepContext& ctx) override;
  std::int64_t syncs() const override { return syncs_; }
  std::vector<StateCounter> state_counters() const override { return {{"syncs", syncs_}}; }
  void restore_counters(std::span<const StateCounter> c) override { syncs_ = find_counter(c, "syncs"); }
  std::string reshard(StepContext& ctx) override;

 private:
  std::int64_t period_;
  bool average_optimizer_state_;
  std::int64_t syncs_ = 0;
};

}  // namespace lowsync::sync
