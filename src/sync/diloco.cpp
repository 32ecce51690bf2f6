// DiLoCo / Streaming DiLoCo (ALGORITHMS.md §6; sync/diloco.hpp). A round of fragment f at step t:
//   fp32 wire: one sum allreduce of the replicas' fragment (the bytes of the pseudo-gradient);
//              mean = sum / K as periodic averaging computes it, Delta = theta_g - mean.
//   other wires: Delta_k = theta_g - theta_k travels encoded (average_via_wire: reduce-scatter in
//              the wire format, fp32 sum in rank order, the encoded mean all-gathered), the mean of
//              the Delta_k is the pseudo-gradient.
// Then the outer Nesterov step on theta_g, m (fp32) and the replica merge, at t (tau = 0) or at
// t + tau (the allreduce started non-blocking at t). A non-finite pseudo-gradient on any rank is
// agreed by one int allreduce and every rank skips that outer step.
#include "lowsync/sync/diloco.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/sync/basic.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace lowsync::sync {
namespace {

bool all_finite(std::span<const float> x) {
  return std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); });
}

constexpr std::string_view kTraffic = "diloco";
constexpr std::string_view kControl = "diloco_control";

}  // namespace

DilocoOptions diloco_options_from_config(const config::Config& cfg) {
  DilocoOptions o;
  o.period = cfg.integer("sync.period");
  o.outer_lr = cfg.real("sync.diloco.outer_lr");
  o.outer_momentum = cfg.real("sync.diloco.outer_momentum");
  o.fragments = static_cast<int>(cfg.integer("sync.diloco.fragments"));
  o.overlap = cfg.integer("sync.diloco.overlap");
  o.mix = cfg.real("sync.diloco.mix");
  o.wire = parse_wire_format(cfg.string("precision.wire"));
  o.seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  return o;
}

std::vector<Fragment> plan_fragments(std::span<const std::size_t> counts, int fragments, std::int64_t period) {
  const std::size_t T = counts.size();
  if (fragments < 1) fail("sync.diloco.fragments = {}: needs at least 1", fragments);
  const auto F = static_cast<std::size_t>(fragments);
  if (F > T)
    fail("sync.diloco.fragments = {}: the model has only {} tensors (fragments are groups of whole tensors)", F, T);
  if (period < fragments)
    fail("sync.diloco.fragments = {} needs sync.period >= {} (one distinct sync step per fragment), got {}", F, F, period);
  std::vector<std::size_t> prefix(T + 1, 0);
  for (std::size_t t = 0; t < T; ++t) prefix[t + 1] = prefix[t] + counts[t];
  // best[j][i]: the smallest largest group when the first i tensors form j groups; cut[j][i]: the
  // earliest start of the last group that achieves it.
  constexpr std::size_t kNone = std::numeric_limits<std::size_t>::max();
  std::vector<std::vector<std::size_t>> best(F + 1, std::vector<std::size_t>(T + 1, kNone)),
      cut(F + 1, std::vector<std::size_t>(T + 1, 0));
  best[0][0] = 0;
  for (std::size_t j = 1; j <= F; ++j)
    for (std::size_t i = j; i <= T; ++i)
      for (std::size_t c = j - 1; c < i; ++c) {
        if (best[j - 1][c] == kNone) continue;
        const std::size_t largest = std::max(best[j - 1][c], prefix[i] - prefix[c]);
        if (largest < best[j][i]) {
          best[j][i] = largest;
          cut[j][i] = c;
        }
      }
  std::vector<Fragment> out(F);
  std::size_t end = T;
  for (std::size_t j = F; j >= 1; --j) {
    const std::size_t begin = cut[j][end];
    Fragment& f = out[j - 1];
    f.first_tensor = begin;
    f.num_tensors = end - begin;
    f.offset = prefix[begin];
    f.count = prefix[end] - prefix[begin];
    f.phase = static_cast<std::int64_t>(j - 1) * period / static_cast<std::int64_t>(F);
    end = begin;
  }
  return out;
}

double outer_step_from_mean(std::span<float> theta_g, std::span<float> momentum, std::span<const float> mean,
                            float lr, float mu) {
  const float keep = 1.0f - lr, lr_mu = lr * mu;
  double norm2 = 0.0;
  for (std::size_t i = 0; i < theta_g.size(); ++i) {
    const float delta = theta_g[i] - mean[i];
    const float m = mu * momentum[i] + delta;
    momentum[i] = m;
    theta_g[i] = mean[i] + (keep * delta - lr_mu * m);
    norm2 += static_cast<double>(delta) * delta;
  }
  return norm2;
}

double outer_step_from_delta(std::span<float> theta_g, std::span<float> momentum, std::span<const float> delta,
                             float lr, float mu) {
  double norm2 = 0.0;
  for (std::size_t i = 0; i < theta_g.size(); ++i) {
    const float m = mu * momentum[i] + delta[i];
    momentum[i] = m;
    theta_g[i] -= lr * (delta[i] + mu * m);
    norm2 += static_cast<double>(delta[i]) * delta[i];
  }
  return norm2;
}

DilocoStrategy::DilocoStrategy(const config::Config& cfg) : DilocoStrategy(diloco_options_from_config(cfg)) {}

DilocoStrategy::DilocoStrategy(DilocoOptions options) : options_(options) {
  const DilocoOptions& o = options_;
  if (o.period < 1) fail("sync.period must be >= 1, got {}", o.period);
  if (!(o.outer_lr >= 0.0) || !std::isfinite(o.outer_lr)) fail("sync.diloco.outer_lr = {}: needs a finite value >= 0", o.outer_lr);
  if (!(o.outer_momentum >= 0.0 && o.outer_momentum < 1.0))
    fail("sync.diloco.outer_momentum = {}: needs 0 <= mu < 1", o.outer_momentum);
  if (o.fragments < 1) fail("sync.diloco.fragments = {}: needs at least 1", o.fragments);
  if (o.overlap < 0 || o.overlap >= o.period)
    fail("sync.diloco.overlap = {}: needs 0 <= tau < sync.period = {} (a fragment's round must land before its next)",
         o.overlap, o.period);
  if (!(o.mix >= 0.0 && o.mix <= 1.0)) fail("sync.diloco.mix = {}: needs 0 <= alpha <= 1", o.mix);
}

void DilocoStrategy::on_start(StepContext& ctx) {
  // Planned before any collective: every rank has the same model, so all throw alike.
  tensor_counts_ = tensor_counts(ctx.model);
  fragments_ = plan_fragments(tensor_counts_, options_.fragments, options_.period);
  if (ctx.model.native16()) fail("sync.strategy = diloco keeps fp32 state: needs precision.storage = float or auto");
  Strategy::on_start(ctx);
  const auto params = ctx.model.params();
  const std::size_t d = params.size();
  global_ = memory::TrackedBuffer<float>("diloco.global_fp32", d);
  momentum_ = memory::TrackedBuffer<float>("diloco.momentum_fp32", d);
  std::copy(params.begin(), params.end(), global_.data());
  std::fill(momentum_.data(), momentum_.data() + d, 0.0f);
  if (options_.overlap > 0) {
    send_ = memory::TrackedBuffer<float>("diloco.inflight", d);
    if (options_.wire == WireFormat::fp32) recv_ = memory::TrackedBuffer<float>("diloco.inflight_sum", d);
  }
  rounds_ = std::vector<Round>(fragments_.size());
  reissue_ = false;
  // Modeled wire bytes of one round of each fragment on this rank (the ledger's formulas: a ring
  // allreduce of the fp32 values, or average_via_wire's reduce-scatter of the encoded Delta_k);
  // the largest is the peak a link carries at once.
  max_sync_bytes_ = 0;
  for (const Fragment& fr : fragments_) {
    const std::span<const std::size_t> counts(tensor_counts_.data() + fr.first_tensor, fr.num_tensors);
    max_sync_bytes_ = std::max(max_sync_bytes_, average_via_wire_bytes(options_.wire, counts, ctx.comm.size()));
  }
  const auto& infos = ctx.model.param_infos();
  log::info("diloco: H = {} inner steps, outer Nesterov lr {} momentum {}, pseudo-gradient over a {} wire{}",
            options_.period, options_.outer_lr, options_.outer_momentum, wire_format_name(options_.wire),
            options_.overlap > 0 ? fmt::format(", overlap tau = {} with mix alpha = {}", options_.overlap, options_.mix)
                                 : std::string());
  for (std::size_t f = 0; f < fragments_.size(); ++f) {
    const Fragment& fr = fragments_[f];
    std::string names;
    for (std::size_t t = fr.first_tensor; t < fr.first_tensor + fr.num_tensors; ++t)
      names += (names.empty() ? "" : ", ") + infos[t].name;
    log::info("diloco: fragment {} of {}: {} values [{}], syncs at steps t with (t - {}) mod {} == 0", f,
              fragments_.size(), fr.count, names, fr.phase, options_.period);
  }
}

void DilocoStrategy::issue(comm::Communicator& comm, std::size_t f) {
  const Fragment& fr = fragments_[f];
  rounds_[f].pending = comm.start_allreduce(std::span<const float>(send_.span().subspan(fr.offset, fr.count)),
                                            recv_.span().subspan(fr.offset, fr.count), comm::ReduceOp::sum, kTraffic);
}

void DilocoStrategy::after_update(StepContext& ctx) {
  if (reissue_) {
    // Restored rounds in flight: started again in their original order (all ranks alike); the
    // same values reduce to the same sum, so the resumed run stays bitwise.
    std::vector<std::size_t> order;
    for (std::size_t f = 0; f < rounds_.size(); ++f)
      if (rounds_[f].started > 0) order.push_back(f);
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return rounds_[a].started < rounds_[b].started; });
    for (std::size_t f : order) issue(ctx.comm, f);
    reissue_ = false;
  }
  if (options_.overlap > 0)
    for (std::size_t f = 0; f < rounds_.size(); ++f)
      if (rounds_[f].started > 0 && ctx.step >= rounds_[f].started + options_.overlap) finish_round(ctx, f);
  for (std::size_t f = 0; f < fragments_.size(); ++f)
    if (fragment_syncs_at(fragments_[f], options_.period, ctx.step)) start_round(ctx, f);
}

void DilocoStrategy::start_round(StepContext& ctx, std::size_t f) {
  const Fragment& fr = fragments_[f];
  comm::Communicator& comm = ctx.comm;
  const auto params = ctx.model.params().subspan(fr.offset, fr.count);
  const auto global = global_.span().subspan(fr.offset, fr.count);
  const std::span<const std::size_t> counts(tensor_counts_.data() + fr.first_tensor, fr.num_tensors);
  ++syncs_;

  if (options_.wire == WireFormat::fp32) {
    if (options_.overlap == 0) {
      // As periodic averaging (average_in_place): the sum, then times 1/K.
      average_in_place(comm, params, kTraffic);
      const bool finite = !comm.any(!all_finite(params), kControl);
      apply(ctx, f, finite, params);
      return;
    }
    const auto sent = send_.span().subspan(fr.offset, fr.count);
    std::copy(params.begin(), params.end(), sent.begin());
    rounds_[f].started = ctx.step;
    issue(comm, f);
    return;
  }
  // Low-precision wire: the pseudo-gradient Delta_k = theta_g - theta_k travels, not the model.
  const auto delta = options_.overlap == 0 ? params : send_.span().subspan(fr.offset, fr.count);
  for (std::size_t i = 0; i < delta.size(); ++i) delta[i] = global[i] - params[i];
  const bool finite = !comm.any(!all_finite(delta), kControl);
  if (finite)
    average_via_wire(comm, delta, counts, options_.wire, options_.seed, ctx.step, kTraffic);
  else
    std::fill(delta.begin(), delta.end(), std::numeric_limits<float>::quiet_NaN());  // the agreed skip, kept for tau
  if (options_.overlap == 0) {
    apply(ctx, f, finite, delta);
    return;
  }
  rounds_[f].started = ctx.step;
}

void DilocoStrategy::finish_round(StepContext& ctx, std::size_t f) {
  const Fragment& fr = fragments_[f];
  rounds_[f].started = 0;
  if (options_.wire == WireFormat::fp32) {
    ctx.comm.wait(rounds_[f].pending);
    const auto mean = recv_.span().subspan(fr.offset, fr.count);
    const float inv = 1.0f / static_cast<float>(ctx.comm.size());
    for (float& x : mean) x *= inv;
    const bool finite = !ctx.comm.any(!all_finite(mean), kControl);
    apply(ctx, f, finite, mean);
    return;
  }
  // Reduced at the start: the same bytes on every rank, so the check needs no agreement.
  const auto delta = send_.span().subspan(fr.offset, fr.count);
  apply(ctx, f, all_finite(delta), delta);
}

void DilocoStrategy::apply(StepContext& ctx, std::size_t f, bool finite, std::span<const float> reduced) {
  const Fragment& fr = fragments_[f];
  const auto params = ctx.model.params().subspan(fr.offset, fr.count);
  const auto global = global_.span().subspan(fr.offset, fr.count);
  const auto momentum = momentum_.span().subspan(fr.offset, fr.count);
  if (!finite) {
    // Every rank skips together: theta_g and m stay, each replica restarts the fragment from
    // theta_g, and a rank whose inner optimizer state went non-finite there clears it.
    ++skipped_;
    log::warn("diloco: step {}: non-finite pseudo-gradient of fragment {} on some rank; outer step skipped "
              "(replicas restart it from the global model)", ctx.step, f);
    std::copy(global.begin(), global.end(), params.begin());
    for (auto& s : ctx.optimizer.state()) {
      if (s.data.is_16bit()) continue;
      const auto part = s.data.fp32().subspan(fr.offset, fr.count);
      if (!all_finite(part)) std::fill(part.begin(), part.end(), 0.0f);
    }
    return;
  }
  const auto lr = static_cast<float>(options_.outer_lr), mu = static_cast<float>(options_.outer_momentum);
  const double norm2 = options_.wire == WireFormat::fp32 ? outer_step_from_mean(global, momentum, reduced, lr, mu)
                                                         : outer_step_from_delta(global, momentum, reduced, lr, mu);
  last_delta_norm_ = std::sqrt(norm2);
  if (options_.overlap == 0) {
    std::copy(global.begin(), global.end(), params.begin());
    return;
  }
  const auto alpha = static_cast<float>(options_.mix), beta = 1.0f - alpha;
  for (std::size_t i = 0; i < params.size(); ++i) params[i] = alpha * params[i] + beta * global[i];
}

std::vector<std::string> DilocoStrategy::metric_names() const {
  return {"diloco_skipped", "diloco_delta_norm", "diloco_max_sync_bytes"};
}

std::vector<double> DilocoStrategy::metric_values() const {
  return {static_cast<double>(skipped_), last_delta_norm_, static_cast<double>(max_sync_bytes_)};
}

std::vector<optim::StateBuffer> DilocoStrategy::state_buffers() {
  std::vector<optim::StateBuffer> out = {{"diloco_global", global_.span()}, {"diloco_momentum", momentum_.span()}};
  if (options_.overlap > 0) out.push_back({"diloco_inflight", send_.span()});
  return out;
}

std::vector<StateCounter> DilocoStrategy::state_counters() const {
  std::vector<StateCounter> out = {{"syncs", syncs_}, {"outer_skipped", skipped_},
                                   {"fragments", static_cast<std::int64_t>(fragments_.size())}};
  if (options_.overlap > 0)
    for (std::size_t f = 0; f < rounds_.size(); ++f) out.push_back({fmt::format("inflight_f{}", f), rounds_[f].started});
  return out;
}

void DilocoStrategy::restore_counters(std::span<const StateCounter> c) {
  syncs_ = find_counter(c, "syncs");
  skipped_ = find_counter(c, "outer_skipped");
  reissue_ = false;
  // Rounds in flight belong to the saved fragment plan; under another sync.diloco.fragments they
  // are dropped (their progress counts in the next round's pseudo-gradient).
  const auto saved_fragments = find_counter(c, "fragments", static_cast<std::int64_t>(rounds_.size()));
  const bool same_plan = saved_fragments == static_cast<std::int64_t>(rounds_.size());
  if (!same_plan)
    log::info("diloco: checkpoint of {} fragments resumed with {}: its rounds in flight are dropped", saved_fragments,
              rounds_.size());
  for (std::size_t f = 0; f < rounds_.size(); ++f) {
    rounds_[f].started = options_.overlap > 0 && same_plan ? find_counter(c, fmt::format("inflight_f{}", f)) : 0;
    if (rounds_[f].started > 0 && options_.wire == WireFormat::fp32) reissue_ = true;
  }
}

std::string DilocoStrategy::reshard(StepContext& ctx) {
  std::int64_t dropped = 0;
  for (auto& r : rounds_) {
    dropped += r.started > 0 ? 1 : 0;
    r.started = 0;
  }
  reissue_ = false;
  return fmt::format("diloco: theta_g and outer momentum kept (identical on the old ranks), replicas continue from "
                     "the averaged parameters{}", dropped > 0 ? fmt::format(", {} round(s) in flight dropped (their "
                     "progress counts in the next round's pseudo-gradient)", dropped) : std::string());
}

}  // namespace lowsync::sync
