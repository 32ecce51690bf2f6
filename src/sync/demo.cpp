// DeMo strategy (ALGORITHMS.md section 5): the 8-step per-tensor algorithm with all tensors'
// (index, value) pairs packed into one block per rank and one allgather per step; decode runs in
// rank order so sign(Q) is the same on every rank; a periodic checksum allreduce enforces it.
#include "lowsync/sync/demo.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <bit>
#include <cmath>

namespace lowsync::sync {
namespace {

using HostRange = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;

DType index_type(const std::string& name) {
  if (name == "u16") return DType::u16;
  if (name == "i64") return DType::i64;
  fail("optim.demo.index must be u16 or i64, got '{}'", name);
}

DType value_type(const std::string& name) {
  if (name == "fp32") return DType::f32;
  if (name == "bf16") return DType::bf16;
  fail("optim.demo.value must be fp32 or bf16, got '{}'", name);
}

void validate(const DemoOptions& o) {
  if (!(o.beta >= 0.0 && o.beta < 1.0)) fail("optim.demo.beta must be in [0, 1), got {}", o.beta);
  if (o.topk < 1) fail("optim.demo.topk must be >= 1, got {}", o.topk);
  if (o.chunk < 1) fail("optim.demo.chunk must be >= 1, got {}", o.chunk);
  if (o.check_every < 0) fail("sync.check_every must be >= 0, got {}", o.check_every);
  if (!(o.weight_decay >= 0.0)) fail("optim.weight_decay must be >= 0, got {}", o.weight_decay);
}

bool all_finite(std::span<const float> x) {
  int bad = 0;
  Kokkos::parallel_reduce(
      "demo_nonfinite", HostRange(0, x.size()),
      [&](std::size_t i, int& acc) { acc += std::isfinite(x[i]) ? 0 : 1; }, bad);
  return bad == 0;
}

}  // namespace

DemoOptions demo_options_from_config(const config::Config& cfg) {
  DemoOptions o;
  o.weight_decay = cfg.real("optim.weight_decay");
  o.beta = cfg.real("optim.demo.beta");
  o.topk = cfg.integer("optim.demo.topk");
  o.chunk = cfg.integer("optim.demo.chunk");
  o.wire.index = index_type(cfg.string("optim.demo.index"));
  o.wire.value = value_type(cfg.string("optim.demo.value"));
  o.check_every = cfg.integer("sync.check_every");
  validate(o);
  return o;
}

DemoStrategy::DemoStrategy(const config::Config& cfg) : DemoStrategy(demo_options_from_config(cfg)) {}

DemoStrategy::DemoStrategy(DemoOptions options) : options_(options) { validate(options_); }

void DemoStrategy::on_start(StepContext& ctx) {
  Strategy::on_start(ctx);
  prepare(ctx.model.param_infos(), ctx.model.num_params(), ctx.comm.size());
}

void DemoStrategy::after_backward(StepContext& ctx) {
  step(ctx.comm, ctx.model.param_infos(), ctx.model.params(), ctx.model.grads(),
       ctx.optimizer.learning_rate(), ctx.step);
}

void DemoStrategy::prepare(std::span<const model::ParamInfo> infos, std::size_t num_params,
                           int world_size) {
  if (codec_) {
    const bool same = world_size == world_size_ && delta_.size() == num_params &&
                      infos.size() == infos_.size() &&
                      std::equal(infos.begin(), infos.end(), infos_.begin(),
                                 [](const model::ParamInfo& a, const model::ParamInfo& b) {
                                   return a.offset == b.offset && a.shape == b.shape;
                                 });
    if (!same) fail("DeMo: parameter layout or world size changed after the first step ({} tensors)", infos.size());
    return;
  }
  std::vector<std::vector<std::int64_t>> shapes;
  std::size_t largest = 0;
  for (const model::ParamInfo& info : infos) {
    std::size_t numel = 1;
    for (const std::int64_t d : info.shape) numel *= static_cast<std::size_t>(d);
    if (numel != info.count || info.offset + info.count > num_params)
      fail("DeMo: tensor {} has shape of {} elements, count {}, offset {} in {} parameters",
           info.name, numel, info.count, info.offset, num_params);
    shapes.push_back(info.shape);
    largest = std::max(largest, info.count);
  }
  codec_ = std::make_unique<demo::Codec>(shapes, options_.chunk, options_.topk, options_.wire);
  infos_.assign(infos.begin(), infos.end());
  world_size_ = world_size;
  delta_ = memory::TrackedBuffer<float>("demo_delta", num_params);
  q_ = memory::TrackedBuffer<float>("demo_q", largest);
  send_ = memory::TrackedBuffer<std::uint8_t>("demo_send", codec_->block_bytes());
  recv_ = memory::TrackedBuffer<std::uint8_t>(
      "demo_recv", codec_->block_bytes() * static_cast<std::size_t>(world_size));
  std::int64_t dense = 0;
  for (std::size_t t = 0; t < codec_->num_tensors(); ++t) dense += codec_->plan(t).dense ? 1 : 0;
  log::info("DeMo: {} tensors ({} dense), {} coefficients = {} bytes per rank per step ({} params)",
            infos.size(), dense, codec_->coeffs_sent(), codec_->block_bytes(), num_params);
}

bool DemoStrategy::step(comm::Communicator& comm, std::span<const model::ParamInfo> infos,
                        std::span<float> params, std::span<const float> grads, double lr,
                        std::int64_t step_number) {
  if (params.size() != grads.size())
    fail("DeMo: {} parameters but {} gradients", params.size(), grads.size());
  prepare(infos, params.size(), comm.size());

  // Agree before touching delta: a skipped step must be skipped everywhere.
  const bool bad_here = !all_finite(grads);
  if (comm.any(bad_here, "control")) {
    ++skipped_;
    if (bad_here) log::warn("DeMo: non-finite gradient at step {}; every rank skips the step", step_number);
    return false;
  }

  const auto lr_f = static_cast<float>(lr);
  const auto beta = static_cast<float>(options_.beta);
  const auto keep = static_cast<float>(1.0 - lr * options_.weight_decay);
  const bool decay = options_.weight_decay != 0.0;

  // Steps 1-5 per tensor, each tensor's pairs written into this rank's block.
  for (std::size_t t = 0; t < infos_.size(); ++t) {
    const model::ParamInfo& info = infos_[t];
    float* p = params.data() + info.offset;
    float* d = delta_.data() + info.offset;
    const float* g = grads.data() + info.offset;
    Kokkos::parallel_for("demo_accumulate", HostRange(0, info.count), [=](std::size_t i) {
      if (decay) p[i] *= keep;
      d[i] = beta * d[i] + lr_f * g[i];
    });
    codec_->encode(t, {d, info.count}, send_.span());
  }

  // Step 6: one allgather for every tensor of the step.
  comm.allgather<std::uint8_t>(std::span<const std::uint8_t>(send_.data(), send_.size()), recv_.span(),
                               "demo");
  ++syncs_;

  // Steps 7-8: identical decode on every rank, then the sign step (sign(0) = 0: no move).
  for (std::size_t t = 0; t < infos_.size(); ++t) {
    const model::ParamInfo& info = infos_[t];
    codec_->decode_sign_step(t, std::span<const std::uint8_t>(recv_.data(), recv_.size()), world_size_,
                             {q_.data(), info.count}, params.subspan(info.offset, info.count), lr_f);
  }

  if (options_.check_every > 0 && step_number % options_.check_every == 0)
    check_replicas(comm, params, step_number);
  return true;
}

void DemoStrategy::check_replicas(comm::Communicator& comm, std::span<const float> params,
                                  std::int64_t step) {
  // FNV-1a over the parameters' bit patterns (order fixed), cut to 62 bits so that negating it
  // cannot overflow: one MAX allreduce of {h, -h} yields both the max and the min.
  std::uint64_t hash = 14695981039346656037ull;
  double sum = 0.0;
  for (const float v : params) {
    hash ^= std::bit_cast<std::uint32_t>(v);
    hash *= 1099511628211ull;
    sum += static_cast<double>(v);
  }
  const auto h = static_cast<std::int64_t>(hash >> 2);
  std::int64_t bounds[2] = {h, -h};
  comm.allreduce(std::span<std::int64_t>(bounds), comm::ReduceOp::max, "control");
  if (bounds[0] != -bounds[1])
    fail("DeMo: replicas differ at step {} (parameter hash min {:#x} max {:#x}; fp64 sum here {})",
         step, -bounds[1], bounds[0], sum);
}

std::vector<optim::StateBuffer> DemoStrategy::state() {
  if (!codec_) return {};
  return {{"demo_delta", delta_.span()}};
}

std::vector<std::string> DemoStrategy::metric_names() const {
  return {"demo_coeffs_sent", "demo_payload_bytes", "demo_skipped_steps"};
}

std::vector<double> DemoStrategy::metric_values() const {
  const double coeffs = codec_ ? static_cast<double>(codec_->coeffs_sent()) : 0.0;
  const double bytes = codec_ ? static_cast<double>(codec_->block_bytes()) : 0.0;
  return {coeffs, bytes, static_cast<double>(skipped_)};
}

}  // namespace lowsync::sync
