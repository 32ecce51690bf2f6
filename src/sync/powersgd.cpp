// PowerSGD (ALGORITHMS.md §7): per compressed gradient matrix G [n, m] with local error e and the
// shared Q [m, r]: M = G + e; P = M Q, allreduce-mean P; orthonormalize P; Q = M^T P,
// allreduce-mean Q (kept for the next step: warm start); G_hat = P Q^T; e = M - G_hat.
// P and Q are held transposed (P^T [r, n], Q^T [r, m]) so that every kernel walks rows of M
// contiguously; each output value is summed by one thread in a fixed order, so the same input
// gives the same bits on every rank (replicas stay bitwise identical).
#include "lowsync/sync/powersgd.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/sync/basic.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>

namespace lowsync::sync {
namespace {

using HostRange = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;

// Columns of M per block of the M^T P kernel: the block's r rows of Q^T (4 KB at r = 4) stay in L1.
constexpr std::size_t kColumnBlock = 256;
// Stream of Q's initial draw (with train.seed and the tensor index).
constexpr std::uint64_t kQInitStream = 0x9057'0001ULL;

void validate(const PowerSgdOptions& o) {
  if (o.rank < 1) fail("sync.powersgd.rank must be >= 1, got {}", o.rank);
  if (o.start_iter < 0) fail("sync.powersgd.start_iter must be >= 0, got {}", o.start_iter);
  if (!(o.min_compression_rate >= 0.0) || !std::isfinite(o.min_compression_rate))
    fail("sync.powersgd.min_compression_rate must be a finite number >= 0, got {}", o.min_compression_rate);
}

// Dot product in 8 fixed lanes (vectorizes without reassociation; the same order on every rank).
inline float dot(const float* a, const float* b, std::size_t n) {
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  std::size_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (std::size_t l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// e += g (e becomes M), then P^T[k, i] = M[i, :] . Q^T[k, :] while the row is in cache.
// g, e [n, m]; qt [r, m]; pt [r, n].
void error_feedback_and_p(const float* g, float* e, std::size_t n, std::size_t m, const float* qt, std::size_t r,
                          float* pt) {
  Kokkos::parallel_for("powersgd_mp", HostRange(0, n), [=](std::size_t i) {
    float* row = e + i * m;
    const float* grow = g + i * m;
    for (std::size_t j = 0; j < m; ++j) row[j] += grow[j];
    for (std::size_t k = 0; k < r; ++k) pt[k * n + i] = dot(row, qt + k * m, m);
  });
}

// Q^T[k, j] = sum_i P^T[k, i] M[i, j], i ascending; one thread per block of columns.
// mat [n, m]; pt [r, n]; qt [r, m].
void mt_p(const float* mat, std::size_t n, std::size_t m, const float* pt, std::size_t r, float* qt) {
  const std::size_t blocks = (m + kColumnBlock - 1) / kColumnBlock;
  Kokkos::parallel_for("powersgd_mtp", HostRange(0, blocks), [=](std::size_t b) {
    const std::size_t j0 = b * kColumnBlock, j1 = std::min(m, j0 + kColumnBlock);
    for (std::size_t k = 0; k < r; ++k) std::fill(qt + k * m + j0, qt + k * m + j1, 0.0f);
    for (std::size_t i = 0; i < n; ++i) {
      const float* row = mat + i * m;
      for (std::size_t k = 0; k < r; ++k) {
        const float a = pt[k * n + i];
        float* out = qt + k * m;
        for (std::size_t j = j0; j < j1; ++j) out[j] += a * row[j];
      }
    }
  });
}

// out[i, j] = sum_k P^T[k, i] Q^T[k, j], k ascending; with `error` set, also e = M - out.
void p_qt(const float* pt, const float* qt, std::size_t n, std::size_t m, std::size_t r, float* out, float* error) {
  Kokkos::parallel_for("powersgd_pqt", HostRange(0, n), [=](std::size_t i) {
    float* row = out + i * m;
    const float a0 = pt[i];
    for (std::size_t j = 0; j < m; ++j) row[j] = a0 * qt[j];
    for (std::size_t k = 1; k < r; ++k) {
      const float a = pt[k * n + i];
      const float* q = qt + k * m;
      for (std::size_t j = 0; j < m; ++j) row[j] += a * q[j];
    }
    if (error != nullptr) {
      float* erow = error + i * m;
      for (std::size_t j = 0; j < m; ++j) erow[j] -= row[j];
    }
  });
}

void scale(std::span<float> x, float factor) {
  for (float& v : x) v *= factor;
}

}  // namespace

PowerSgdOptions powersgd_options_from_config(const config::Config& cfg) {
  PowerSgdOptions o;
  o.rank = cfg.integer("sync.powersgd.rank");
  o.start_iter = cfg.integer("sync.powersgd.start_iter");
  o.min_compression_rate = cfg.real("sync.powersgd.min_compression_rate");
  o.seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  validate(o);
  return o;
}

void validate_powersgd_config(const config::Config& cfg) {
  const std::string& opt = cfg.string("optim.name");
  if (opt == "demo" || opt == "zo")
    fail("sync.strategy = \"powersgd\" compresses backprop gradients for optim.name = sgd | adamw; optim.name = \"{}\" "
         "{}",
         opt, opt == "demo" ? "sends its own compressed momentum (sync.strategy = demo)" : "sends no gradients (backprop-free)");
  if (cfg.string("precision.wire") != "fp32")
    fail("precision.wire = \"{}\" does not apply to sync.strategy = \"powersgd\" (P and Q travel fp32; the rank "
         "sync.powersgd.rank sets the bytes)",
         cfg.string("precision.wire"));
  // FDA decides when models average; PowerSGD sends a compressed gradient every step: one
  // strategy per run, so FDA's keys set away from their defaults are a mistake, not a wish.
  const config::Config defaults;
  for (const auto& [key, value] : cfg.values())
    if (key.starts_with("sync.fda.") && !(value == defaults.values().at(key)))
      fail("{} applies to sync.strategy = fda, not powersgd (FDA decides when models average; PowerSGD compresses "
           "every step's gradient)",
           key);
}

std::vector<PowerSgdTensorPlan> plan_powersgd(std::span<const model::ParamInfo> infos, std::int64_t rank,
                                              double min_compression_rate) {
  std::vector<PowerSgdTensorPlan> plan;
  std::size_t dense = 0, q = 0;
  for (const model::ParamInfo& info : infos) {
    PowerSgdTensorPlan t;
    t.offset = info.offset;
    t.count = info.count;
    t.rows = info.shape.empty() ? info.count : static_cast<std::size_t>(info.shape[0]);
    if (t.rows == 0 || info.count % t.rows != 0)
      fail("powersgd: tensor {} has {} values, not a multiple of its first dimension {}", info.name, info.count, t.rows);
    t.cols = info.count / t.rows;
    if (info.shape.size() >= 2) {
      const std::size_t r = std::min({static_cast<std::size_t>(rank), t.rows, t.cols});
      const double sent = static_cast<double>(r) * static_cast<double>(t.rows + t.cols);
      if (sent * min_compression_rate < static_cast<double>(t.rows) * static_cast<double>(t.cols)) t.rank = r;
    }
    if (t.rank == 0) {
      t.dense_offset = dense;
      dense += t.count;
    } else {
      t.q_offset = q;
      q += t.rank * t.cols;
    }
    plan.push_back(t);
  }
  std::size_t p = dense;
  for (PowerSgdTensorPlan& t : plan) {
    if (t.rank == 0) continue;
    t.p_offset = p;
    p += t.rank * t.rows;
  }
  return plan;
}

void orthonormalize_columns(std::span<float> pt, std::size_t r, std::size_t n) {
  if (pt.size() < r * n) fail("powersgd: orthonormalize: {} values for a {} x {} matrix", pt.size(), n, r);
  for (std::size_t j = 0; j < r; ++j) {
    float* c = pt.data() + j * n;
    // Two projection passes ("twice is enough"): one leaves fp32 columns orthogonal only to
    // about cond(P) * eps, which the rank = min(n, m) check (plain mean to 1e-5) would see.
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t k = 0; k < j; ++k) {
        const float* b = pt.data() + k * n;
        double d = 0.0;
        for (std::size_t i = 0; i < n; ++i) d += static_cast<double>(b[i]) * static_cast<double>(c[i]);
        if (d == 0.0) continue;
        for (std::size_t i = 0; i < n; ++i) c[i] = static_cast<float>(static_cast<double>(c[i]) - d * static_cast<double>(b[i]));
      }
    }
    double norm2 = 0.0;
    for (std::size_t i = 0; i < n; ++i) norm2 += static_cast<double>(c[i]) * static_cast<double>(c[i]);
    if (norm2 == 0.0) continue;  // zero stays zero; NaN propagates (the run loop stops on it)
    const double inv = 1.0 / std::sqrt(norm2);
    for (std::size_t i = 0; i < n; ++i) c[i] = static_cast<float>(static_cast<double>(c[i]) * inv);
  }
}

PowerSgdStrategy::PowerSgdStrategy(const config::Config& cfg) : PowerSgdStrategy(powersgd_options_from_config(cfg)) {}

PowerSgdStrategy::PowerSgdStrategy(PowerSgdOptions options) : options_(options) { validate(options_); }

void PowerSgdStrategy::on_start(StepContext& ctx) {
  if (ctx.model.native16())
    fail("sync.strategy = powersgd keeps P, Q and the error in fp32 and needs float storage (precision.storage = "
         "float or auto), not native 16-bit");
  Strategy::on_start(ctx);
  prepare(ctx.model.param_infos(), ctx.model.num_params());
}

void PowerSgdStrategy::after_backward(StepContext& ctx) {
  model::Model& model = ctx.model;
  if (model::is_16bit(model.compute()))
    step(ctx.comm, model.param_infos(), model.grads(), ctx.step, [&model](std::span<float> x) { model.round_to_compute(x); });
  else
    step(ctx.comm, model.param_infos(), model.grads(), ctx.step);
}

void PowerSgdStrategy::prepare(std::span<const model::ParamInfo> infos, std::size_t num_params) {
  auto plan = plan_powersgd(infos, options_.rank, options_.min_compression_rate);
  for (const PowerSgdTensorPlan& t : plan)
    if (t.offset + t.count > num_params)
      fail("powersgd: a tensor at offset {} with {} values lies outside {} parameters", t.offset, t.count, num_params);
  if (prepared_) {
    const bool same = num_params == num_params_ && plan.size() == plan_.size() &&
                      std::equal(plan.begin(), plan.end(), plan_.begin(), [](const auto& a, const auto& b) {
                        return a.offset == b.offset && a.count == b.count && a.rows == b.rows && a.rank == b.rank;
                      });
    if (!same) fail("powersgd: the parameter layout changed after the first step ({} tensors)", plan.size());
    return;
  }
  plan_ = std::move(plan);
  num_params_ = num_params;
  std::size_t q = 0, p = 0, compressed = 0;
  dense_floats_ = 0;
  for (const PowerSgdTensorPlan& t : plan_) {
    if (t.rank == 0) {
      dense_floats_ += t.count;
      continue;
    }
    ++compressed;
    q += t.rank * t.cols;
    p += t.rank * t.rows;
  }
  error_ = memory::TrackedBuffer<float>("powersgd_error", num_params);
  q_ = memory::TrackedBuffer<float>("powersgd_q", q);
  pack_p_ = memory::TrackedBuffer<float>("powersgd_p", dense_floats_ + p);
  // Q starts from N(0, 1), a pure function of (train.seed, tensor index, element): the same on
  // every rank without a broadcast.
  for (std::size_t t = 0; t < plan_.size(); ++t) {
    if (plan_[t].rank == 0) continue;
    const std::uint64_t key = stream_key({options_.seed, kQInitStream, static_cast<std::uint64_t>(t)});
    float* qt = q_.data() + plan_[t].q_offset;
    for (std::size_t i = 0; i < plan_[t].rank * plan_[t].cols; ++i) qt[i] = normal01(key, i);
  }
  prepared_ = true;
  const std::size_t bytes = 4 * (pack_p_.size() + q_.size());
  log::info("PowerSGD: rank {}, {} of {} tensors compressed, {} values sent whole; {} B per rank per step vs {} B "
            "for the fp32 allreduce ({:.1f}x fewer); plain allreduce for steps 1..{}",
            options_.rank, compressed, plan_.size(), dense_floats_, bytes, 4 * num_params,
            static_cast<double>(4 * num_params) / static_cast<double>(std::max<std::size_t>(bytes, 1)),
            options_.start_iter);
}

void PowerSgdStrategy::step(comm::Communicator& comm, std::span<const model::ParamInfo> infos, std::span<float> grads,
                            std::int64_t step_number, const std::function<void(std::span<float>)>& round) {
  prepare(infos, grads.size());
  if (step_number <= options_.start_iter) {
    average_in_place(comm, grads, "grad");
    ++syncs_;
    return;
  }
  const float inv = 1.0f / static_cast<float>(comm.size());
  float* g = grads.data();
  float* e = error_.data();
  float* pack = pack_p_.data();
  float* qall = q_.data();

  // 1. M = G + e (in e), P = M Q; uncompressed values into the front of the P pack.
  Timer timer;
  for (const PowerSgdTensorPlan& t : plan_) {
    if (t.rank == 0)
      std::copy_n(g + t.offset, t.count, pack + t.dense_offset);
    else
      error_feedback_and_p(g + t.offset, e + t.offset, t.rows, t.cols, qall + t.q_offset, t.rank, pack + t.p_offset);
  }
  compress_s_ += timer.seconds();
  // 2. One allreduce for the uncompressed tensors and every P (PyTorch packs the P's alike).
  comm.allreduce(pack_p_.span(), comm::ReduceOp::sum, "powersgd.p");

  // 3. Means; the uncompressed tensors are done; each P orthonormalized; Q = M^T P.
  timer.reset();
  scale(pack_p_.span(), inv);
  for (const PowerSgdTensorPlan& t : plan_) {
    if (t.rank == 0) {
      std::copy_n(pack + t.dense_offset, t.count, g + t.offset);
      continue;
    }
    orthonormalize_columns({pack + t.p_offset, t.rank * t.rows}, t.rank, t.rows);
    mt_p(e + t.offset, t.rows, t.cols, pack + t.p_offset, t.rank, qall + t.q_offset);
  }
  compress_s_ += timer.seconds();
  // 4. One allreduce for every Q; the mean is the warm start of the next step.
  if (q_.size() > 0) comm.allreduce(q_.span(), comm::ReduceOp::sum, "powersgd.q");

  // 5. G_hat = P Q^T into the gradients (rounded to the compute format if asked), e = M - G_hat.
  timer.reset();
  scale(q_.span(), inv);
  for (const PowerSgdTensorPlan& t : plan_) {
    if (t.rank == 0) continue;
    if (!round) {
      p_qt(pack + t.p_offset, qall + t.q_offset, t.rows, t.cols, t.rank, g + t.offset, e + t.offset);
      continue;
    }
    p_qt(pack + t.p_offset, qall + t.q_offset, t.rows, t.cols, t.rank, g + t.offset, nullptr);
    round({g + t.offset, t.count});
    for (std::size_t i = 0; i < t.count; ++i) e[t.offset + i] -= g[t.offset + i];
  }
  compress_s_ += timer.seconds();
  ++syncs_;
}

std::vector<optim::StateBuffer> PowerSgdStrategy::state_buffers() {
  if (!prepared_) return {};
  return {{"powersgd_error", model::ParamStore(error_.span())}, {"powersgd_q", model::ParamStore(q_.span())}};
}

std::vector<std::string> PowerSgdStrategy::metric_names() const {
  return {"powersgd_payload_bytes", "powersgd_compress_s"};
}

std::vector<double> PowerSgdStrategy::metric_values() const {
  return {static_cast<double>(4 * (pack_p_.size() + q_.size())), compress_s_};
}

}  // namespace lowsync::sync
