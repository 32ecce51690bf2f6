// The baseline strategies (ALGORITHMS.md "How these combine"): none (independent replicas),
// allreduce (DDP: average the flat gradient buffer every step, one collective) and periodic
// (local SGD / FedAvg: average the parameters, optionally the optimizer state, every period steps).
// Native 16-bit storage: both average the u16 buffers through average_native16 (sync/wire.hpp).
#include "lowsync/sync/basic.hpp"

#include "lowsync/core/error.hpp"

namespace lowsync::sync {

void Strategy::on_start(StepContext& ctx) {
  // Replicas start identical: rank 0's initialisation wins.
  if (ctx.model.native16())
    ctx.comm.broadcast(ctx.model.params16(), 0, "model");
  else
    ctx.comm.broadcast(ctx.model.params(), 0, "model");
}

std::int64_t find_counter(std::span<const StateCounter> counters, std::string_view name, std::int64_t fallback) {
  for (const StateCounter& c : counters)
    if (c.name == name) return c.value;
  return fallback;
}

void average_in_place(comm::Communicator& comm, std::span<float> data, std::string_view traffic) {
  comm.allreduce(data, comm::ReduceOp::sum, traffic);
  const float inv = 1.0f / static_cast<float>(comm.size());
  for (float& x : data) x *= inv;
}

void average_replicas(comm::Communicator& comm, model::ParamStore data, std::string_view traffic) {
  if (data.is_16bit())
    average_native16(comm, data.bits(), data.bf16(), WireFormat::fp32, traffic);
  else
    average_in_place(comm, data.fp32(), traffic);
}

std::vector<std::size_t> tensor_counts(const model::Model& model) {
  std::vector<std::size_t> counts;
  for (const auto& p : model.param_infos()) counts.push_back(p.count);
  return counts;
}

void AllreduceStrategy::on_start(StepContext& ctx) {
  Strategy::on_start(ctx);
  counts_ = tensor_counts(ctx.model);
}

void AllreduceStrategy::after_backward(StepContext& ctx) {
  if (ctx.model.native16()) {
    average_native16(ctx.comm, ctx.model.grads16(), ctx.model.compute() == model::Compute::bf16, wire_, "grad");
    ++syncs_;
    return;
  }
  average_via_wire(ctx.comm, ctx.model.grads(), counts_, wire_, seed_, ctx.step, "grad");
  ++syncs_;
}

PeriodicStrategy::PeriodicStrategy(std::int64_t period, bool average_optimizer_state, WireFormat wire,
                                   std::uint64_t seed)
    : period_(period), average_optimizer_state_(average_optimizer_state), server_(wire, seed) {
  if (period < 1) fail("sync.period must be >= 1, got {}", period);
}

void PeriodicStrategy::on_start(StepContext& ctx) {
  Strategy::on_start(ctx);
  if (ctx.model.native16()) {
    // No fp32 server model (that is the fp8 wire's, on float storage): a native average sums
    // decoded chunks in fp32 and rounds back into the u16 parameters (average_native16).
    const bool bf16 = ctx.model.compute() == model::Compute::bf16;
    if (server_.format() != WireFormat::fp32 && server_.format() != (bf16 ? WireFormat::bf16 : WireFormat::fp16))
      fail("periodic: native {} storage averages with precision.wire = fp32 or {}, not {} (precision.storage = float "
           "for it)", bf16 ? "bf16" : "fp16", bf16 ? "bf16" : "fp16", wire_format_name(server_.format()));
    return;
  }
  server_.begin(ctx.comm, ctx.model.params(), tensor_counts(ctx.model));
}

void PeriodicStrategy::after_update(StepContext& ctx) {
  if (ctx.step % period_ != 0) return;
  if (ctx.model.native16()) {
    const bool bf16 = ctx.model.compute() == model::Compute::bf16;
    // Every rank sums the same values in the same order: the replicas end bitwise identical. A
    // 16-bit wire skips non-finite ranks; the count is kept where the server path keeps its own.
    const int excluded = average_native16(ctx.comm, ctx.model.params16(), bf16, server_.format(), "model");
    server_.set_excluded(server_.excluded() + excluded);
    if (average_optimizer_state_)
      for (auto& s : ctx.optimizer.state()) average_replicas(ctx.comm, s.data, "optim_state");
    ++syncs_;
    return;
  }
  server_.average(ctx.comm, ctx.model.params(), ctx.step, "model");
  if (average_optimizer_state_)
    for (auto& s : ctx.optimizer.state()) average_replicas(ctx.comm, s.data, "optim_state");
  ++syncs_;
}

}  // namespace lowsync::sync

namespace lowsync::sync {

std::vector<StateCounter> PeriodicStrategy::state_counters() const {
  std::vector<StateCounter> out = {{"syncs", syncs_}};
  if (server_.format() != WireFormat::fp32) out.push_back({"server_excluded", server_.excluded()});
  return out;
}

void PeriodicStrategy::restore_counters(std::span<const StateCounter> c) {
  syncs_ = find_counter(c, "syncs");
  server_.set_excluded(find_counter(c, "server_excluded"));
}

std::string PeriodicStrategy::reshard(StepContext& ctx) {
  // The averaged parameters are what a sync would produce; the period continues by step number.
  return fmt::format("periodic: replicas start from the average, next sync at step {}",
                     (ctx.step / period_ + 1) * period_);
}

}  // namespace lowsync::sync
