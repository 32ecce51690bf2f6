// FDA strategy (ALGORITHMS.md §4 "Per-step pseudocode"): every step each rank sums its local
// state with the others, all compute the same V^, and the ranks average their models only when
// V^ > Theta. An int MAX allreduce of the decision keeps the ranks in the same collectives even
// if their V^ differed in the last bit. Native 16-bit storage: step16 (fda.hpp says what differs).
#include "lowsync/sync/fda.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lowsync::sync {
namespace {

bool all_finite(std::span<const float> x) {
  return std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); });
}

}  // namespace

FdaOptions fda_options_from_config(const config::Config& cfg) {
  FdaOptions o;
  o.estimator.kind = fda::parse_estimator(cfg.string("sync.fda.estimator"));
  o.estimator.sketch_depth = static_cast<int>(cfg.integer("sync.fda.sketch_depth"));
  o.estimator.sketch_width = static_cast<int>(cfg.integer("sync.fda.sketch_width"));
  o.estimator.sketch_eps = cfg.real("sync.fda.sketch_eps");
  o.threshold = cfg.real("sync.fda.threshold");
  o.threshold_per_param = cfg.real("sync.fda.threshold_per_param");
  o.seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  o.average_optimizer_state = cfg.boolean("sync.average_optimizer_state");
  o.wire = parse_wire_format(cfg.string("precision.wire"));
  return o;
}

FdaStrategy::FdaStrategy(const config::Config& cfg) : FdaStrategy(fda_options_from_config(cfg)) {}

FdaStrategy::FdaStrategy(FdaOptions options) : options_(options) {
  fda::validate(options_.estimator);
  if (std::isnan(options_.threshold)) fail("sync.fda.threshold: {} is not a number", options_.threshold);
  if (!(options_.threshold_per_param >= 0.0) || !std::isfinite(options_.threshold_per_param))
    fail("sync.fda.threshold_per_param: {} is not a finite value >= 0", options_.threshold_per_param);
}

void FdaStrategy::begin_common(std::size_t d) {
  threshold_ = options_.threshold >= 0.0 ? options_.threshold
                                         : options_.threshold_per_param * static_cast<double>(d);
  if (options_.estimator.kind == fda::Estimator::linear)
    xi_ = memory::TrackedBuffer<float>("fda_xi", d);
  else
    xi_ = memory::TrackedBuffer<float>();
  if (options_.estimator.kind == fda::Estimator::sketch)
    hashes_.emplace(d, options_.estimator.sketch_depth, options_.estimator.sketch_width, options_.seed);
  else
    hashes_.reset();
  state_ = memory::TrackedBuffer<double>("fda_state", fda::state_size(options_.estimator));
  last_estimate_ = 0.0;
  last_synced_ = false;
  started_ = true;
  server_started_ = false;
}

void FdaStrategy::begin(model::ParamStore params) {
  if (params.is_16bit())
    begin16(params.bits(), params.bf16());
  else
    begin_float(params.fp32());
}

bool FdaStrategy::step(comm::Communicator& comm, std::int64_t step, model::ParamStore params,
                       optim::Optimizer* optimizer) {
  if (!started_) fail("FDA: step {} before on_start", step);
  if (params.is_16bit() != native16_)
    fail("FDA: step {} on {} parameters after beginning with {} storage", step, model::store_dtype_name(params.dtype()),
         native16_ ? "16-bit" : "fp32");
  return params.is_16bit() ? step16(comm, step, params.bits(), optimizer) : step_float(comm, step, params.fp32(), optimizer);
}

void FdaStrategy::begin_float(std::span<const float> params) {
  const std::size_t d = params.size();
  native16_ = false;
  w0_16_ = memory::TrackedBuffer<std::uint16_t>();
  w0_prev16_ = memory::TrackedBuffer<std::uint16_t>();
  w0_ = memory::TrackedBuffer<float>("fda_w0", d);
  w0_prev_ = memory::TrackedBuffer<float>("fda_w0_prev", d);
  std::copy(params.begin(), params.end(), w0_.data());
  std::copy(params.begin(), params.end(), w0_prev_.data());
  begin_common(d);
  // First round: w0 == w0_prev, so this is the shared Gaussian.
  if (options_.estimator.kind == fda::Estimator::linear)
    fda::last_move_direction(w0_.span(), w0_prev_.span(), options_.seed, xi_.span());
}

void FdaStrategy::begin16(std::span<const std::uint16_t> params, bool bf16) {
  if (options_.wire != WireFormat::fp32 && options_.wire != (bf16 ? WireFormat::bf16 : WireFormat::fp16))
    fail("FDA: native {} storage syncs with precision.wire = fp32 or {}, not {} (precision.storage = float for it)",
         bf16 ? "bf16" : "fp16", bf16 ? "bf16" : "fp16", wire_format_name(options_.wire));
  const std::size_t d = params.size();
  native16_ = true;
  bf16_ = bf16;
  w0_ = memory::TrackedBuffer<float>();
  w0_prev_ = memory::TrackedBuffer<float>();
  w0_16_ = memory::TrackedBuffer<std::uint16_t>("fda_w0_16", d);
  w0_prev16_ = memory::TrackedBuffer<std::uint16_t>("fda_w0_prev_16", d);
  std::copy(params.begin(), params.end(), w0_16_.data());
  std::copy(params.begin(), params.end(), w0_prev16_.data());
  begin_common(d);
  if (options_.estimator.kind == fda::Estimator::linear)
    fda::last_move_direction_16bit(w0_16_.span(), w0_prev16_.span(), bf16_, options_.seed, xi_.span());
}

void FdaStrategy::on_start(StepContext& ctx) {
  Strategy::on_start(ctx);
  counts_ = tensor_counts(ctx.model);
  if (ctx.model.native16()) {
    // No server model: a native sync sums in fp32 chunks and rounds back (average_native16).
    begin(ctx.model.param_store());
    return;
  }
  begin(ctx.model.param_store());
  start_server(ctx.comm);
}

void FdaStrategy::start_server(comm::Communicator& comm) {
  // What the first sync would do (w0 is unchanged until then), done up front so that the server
  // model is checkpoint state from step 0.
  server_ = ServerAverager(options_.wire, options_.seed);
  server_.begin(comm, w0_.span(), counts_);
  server_started_ = true;
}

bool FdaStrategy::decide(comm::Communicator& comm) {
  comm.allreduce(state_.span(), comm::ReduceOp::sum, "fda_monitor");
  // +inf only when some rank's state was non-finite: that forces a sync even if Theta = +inf.
  const double vhat = fda::variance_estimate(options_.estimator, state_.span(), comm.size());
  std::int32_t decision = (std::isinf(vhat) || vhat > threshold_) ? 1 : 0;
  comm.allreduce(std::span<std::int32_t>(&decision, 1), comm::ReduceOp::max, "fda_monitor");
  last_estimate_ = vhat;
  last_synced_ = decision != 0;
  return last_synced_;
}

bool FdaStrategy::step_float(comm::Communicator& comm, std::int64_t step, std::span<float> params,
                             optim::Optimizer* optimizer) {
  if (params.size() != w0_.size())
    fail("FDA: {} parameters at step {}, {} at the start", params.size(), step, w0_.size());

  fda::local_state(options_.estimator, params, w0_.span(), xi_.span(),
                   hashes_ ? &*hashes_ : nullptr, state_.span());
  if (!decide(comm)) return false;
  const bool forced = std::isinf(last_estimate_);

  if (!server_started_) start_server(comm);
  server_.average(comm, params, step, "model");
  if (options_.average_optimizer_state && optimizer != nullptr)
    for (auto& s : optimizer->state()) average_replicas(comm, s.data, "optim_state");
  // Only a non-finite state can make the average non-finite (short of fp32 overflow); the
  // check is then agreed by all ranks so that none throws while the others wait.
  if (forced && comm.any(!all_finite(params), "fda_monitor"))
    fail("FDA: averaged model is non-finite at step {}", step);

  std::swap(w0_, w0_prev_);
  std::copy(params.begin(), params.end(), w0_.data());
  if (options_.estimator.kind == fda::Estimator::linear)
    fda::last_move_direction(w0_.span(), w0_prev_.span(), options_.seed, xi_.span());
  ++syncs_;
  return true;
}

bool FdaStrategy::step16(comm::Communicator& comm, std::int64_t step, std::span<std::uint16_t> params,
                         optim::Optimizer* optimizer) {
  if (params.size() != w0_16_.size())
    fail("FDA: {} parameters at step {}, {} at the start", params.size(), step, w0_16_.size());

  fda::local_state_16bit(options_.estimator, params, w0_16_.span(), bf16_, xi_.span(),
                         hashes_ ? &*hashes_ : nullptr, state_.span());
  if (!decide(comm)) return false;
  const bool forced = std::isinf(last_estimate_);

  // A 16-bit wire skips non-finite ranks; the count is kept where the server path keeps its own.
  const int excluded = average_native16(comm, params, bf16_, options_.wire, "model");
  server_.set_excluded(server_.excluded() + excluded);
  if (options_.average_optimizer_state && optimizer != nullptr)
    for (auto& s : optimizer->state()) average_replicas(comm, s.data, "optim_state");
  if (forced && comm.any(!tensor::all_finite_16bit(params, bf16_), "fda_monitor"))
    fail("FDA: averaged model is non-finite at step {}", step);

  std::swap(w0_16_, w0_prev16_);
  std::copy(params.begin(), params.end(), w0_16_.data());
  if (options_.estimator.kind == fda::Estimator::linear)
    fda::last_move_direction_16bit(w0_16_.span(), w0_prev16_.span(), bf16_, options_.seed, xi_.span());
  ++syncs_;
  return true;
}

void FdaStrategy::after_update(StepContext& ctx) { step(ctx.comm, ctx.step, ctx.model.param_store(), &ctx.optimizer); }

std::vector<optim::StateBuffer> FdaStrategy::state_buffers() {
  std::vector<optim::StateBuffer> out;
  if (native16_)
    out = {{"fda_w0", {w0_16_.span(), bf16_}}, {"fda_w0_prev", {w0_prev16_.span(), bf16_}}};
  else
    out = {{"fda_w0", w0_.span()}, {"fda_w0_prev", w0_prev_.span()}};
  if (xi_.size() > 0) out.push_back({"fda_xi", xi_.span()});  // fp32 in either storage
  return out;
}

std::int64_t FdaStrategy::extra_state_bytes() const {
  return hashes_ ? static_cast<std::int64_t>(hashes_->table_bytes()) : 0;
}

std::vector<RootStateBuffer> FdaStrategy::root_state_buffers() {
  return server_started_ ? server_.root_state("") : std::vector<RootStateBuffer>{};
}

std::vector<StateCounter> FdaStrategy::state_counters() const {
  std::vector<StateCounter> out = {{"syncs", syncs_}};
  if (options_.wire != WireFormat::fp32) out.push_back({"server_excluded", server_.excluded()});
  return out;
}

void FdaStrategy::restore_counters(std::span<const StateCounter> c) {
  syncs_ = find_counter(c, "syncs");
  server_.set_excluded(find_counter(c, "server_excluded"));
}

std::string FdaStrategy::reshard(StepContext& ctx) {
  // The averaged w0/w0_prev describe rounds of the old ranks; the new replicas are identical, so
  // a new round starts here exactly as after a sync (syncs kept).
  const std::int64_t excluded = server_.excluded();  // a count of the whole run, not of a round
  begin(ctx.model.param_store());
  if (ctx.model.native16()) {
    server_.set_excluded(excluded);
    return "fda: new round from the averaged parameters (w0 = w0_prev = params, xi reset)";
  }
  start_server(ctx.comm);
  server_.set_excluded(excluded);
  return options_.wire == WireFormat::fp32
             ? "fda: new round from the averaged parameters (w0 = w0_prev = params, xi reset)"
             : "fda: new round from the averaged parameters (w0 = w0_prev = params, xi reset, server model = params)";
}

std::vector<std::string> FdaStrategy::metric_names() const {
  return {"fda_vhat", "fda_threshold", "fda_syncs"};
}

std::vector<double> FdaStrategy::metric_values() const {
  return {last_estimate_, threshold_, static_cast<double>(syncs_)};
}

}  // namespace lowsync::sync
