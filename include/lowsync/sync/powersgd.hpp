// PowerSGD (ALGORITHMS.md §7; Vogels, Karimireddy, Jaggi 2019; PyTorch's powerSGD_hook): each
// gradient matrix travels as a rank-r factorisation P Q^T found by one power iteration with warm
// start and error feedback; tensors that would not compress (biases, small matrices) travel whole.
// Two allreduces per step: [uncompressed tensors | all P's], then all Q's.
#pragma once

#include "lowsync/core/memory.hpp"
#include "lowsync/sync/strategy.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::sync {

struct PowerSgdOptions {
  std::int64_t rank = 4;              // sync.powersgd.rank: r (per matrix min(r, rows, cols))
  std::int64_t start_iter = 10;       // sync.powersgd.start_iter: steps 1..start_iter plain allreduce
  double min_compression_rate = 2.0;  // sync.powersgd.min_compression_rate
  std::uint64_t seed = 1;             // train.seed: Q's initial N(0, 1) draw, the same on every rank
};

// Reads and validates the keys above (throws lowsync::Error naming the key).
PowerSgdOptions powersgd_options_from_config(const config::Config& cfg);
// The rules between sync.strategy = powersgd and the other keys (sync::validate_config calls it):
// PowerSGD compresses backprop gradients itself, so optim.name = demo | zo, a non-fp32
// precision.wire and FDA's keys set away from their defaults are refused with one line.
void validate_powersgd_config(const config::Config& cfg);

// How one parameter tensor travels. A tensor of shape [out, d1, d2, ...] is the row-major
// matrix (rows = out, cols = d1*d2*...): a conv kernel [out, in, kh, kw] is (out, in*kh*kw).
struct PowerSgdTensorPlan {
  std::size_t offset = 0;  // into the flat gradient buffer
  std::size_t count = 0;
  std::size_t rows = 0, cols = 0;  // n, m (1-D tensors: n = count, m = 1)
  std::size_t rank = 0;            // r_t = min(r, n, m); 0: travels uncompressed
  std::size_t p_offset = 0;        // compressed: its P^T [r_t, n] in the P pack (after all dense values)
  std::size_t q_offset = 0;        // compressed: its Q^T [r_t, m] in the Q state
  std::size_t dense_offset = 0;    // uncompressed: its values in the dense part of the P pack
};

// Which tensors compress: a matrix (2 or more dimensions) whose r_t (n + m) < n m / rate
// (PyTorch's rule, r_t (n + m) rate < n m); 1-D tensors never do. rate = 0 compresses every matrix.
std::vector<PowerSgdTensorPlan> plan_powersgd(std::span<const model::ParamInfo> infos, std::int64_t rank,
                                              double min_compression_rate);

// Gram-Schmidt on the rows of pt [r, n] (the columns of P), two passes with fp64 sums, in a fixed
// order (every rank gets the same bits from the same input); a column that is zero after the
// projections stays zero (it then carries nothing: its Q column is M^T 0 = 0).
void orthonormalize_columns(std::span<float> pt, std::size_t r, std::size_t n);

class PowerSgdStrategy final : public Strategy {
 public:
  explicit PowerSgdStrategy(const config::Config& cfg);
  explicit PowerSgdStrategy(PowerSgdOptions options);

  std::string_view name() const override { return "powersgd"; }
  // Every rank applies the same update: G_hat = P Q^T from the allreduced P and Q (the error e is
  // local, the update is not). Under 16-bit compute the parameters follow the compute format like
  // allreduce's; P, Q and e stay fp32. Native 16-bit storage is not supported (float storage).
  bool replicas_identical() const override { return true; }
  void on_start(StepContext& ctx) override;
  void after_backward(StepContext& ctx) override;
  std::vector<std::string> metric_names() const override;
  std::vector<double> metric_values() const override;
  std::int64_t syncs() const override { return syncs_; }
  // The error e [num_params] (local; averaged over the old ranks on a reshard, which keeps the
  // pending mean update) and Q (the same on every rank).
  std::vector<optim::StateBuffer> state_buffers() override;
  std::vector<StateCounter> state_counters() const override { return {{"syncs", syncs_}}; }
  void restore_counters(std::span<const StateCounter> c) override { syncs_ = find_counter(c, "syncs"); }
  std::string reshard(StepContext&) override {
    return "powersgd: error = mean of the old ranks' errors (the pending mean update is kept), Q unchanged";
  }

  // Plans the tensors and allocates e, Q (seeded N(0, 1)) and the P pack once; later calls must
  // agree on the layout.
  void prepare(std::span<const model::ParamInfo> infos, std::size_t num_params);
  // One step on the flat gradient buffer (what after_backward calls; tests drive it directly).
  // Every rank must call it at the same point. step_number <= start_iter: grads = mean of the
  // ranks' grads (one allreduce). After: uncompressed tensors get the mean, compressed ones
  // G_hat = P Q^T; `round` (may be empty) is applied to G_hat before the error e = M - G_hat is
  // taken, so the error also carries the rounding of a 16-bit compute format.
  void step(comm::Communicator& comm, std::span<const model::ParamInfo> infos, std::span<float> grads,
            std::int64_t step_number, const std::function<void(std::span<float>)>& round = {});

  const PowerSgdOptions& options() const { return options_; }
  const std::vector<PowerSgdTensorPlan>& plan() const { return plan_; }
  std::span<const float> error() const { return {error_.data(), error_.size()}; }
  std::span<const float> q() const { return {q_.data(), q_.size()}; }  // Q^T blocks, plan().q_offset
  // The last compressed step's P pack: uncompressed means, then the orthonormalized P^T blocks.
  std::span<const float> p_pack() const { return {pack_p_.data(), pack_p_.size()}; }
  // Floats each rank hands to the allreduces of one compressed step: the P pack (uncompressed
  // values + sum r_t n_t) and the Q pack (sum r_t m_t).
  std::size_t p_pack_floats() const { return pack_p_.size(); }
  std::size_t q_pack_floats() const { return q_.size(); }
  // Seconds spent in this rank's PowerSGD arithmetic (M, P, Q, G_hat, e; not the allreduces).
  double compress_seconds() const { return compress_s_; }

 private:
  PowerSgdOptions options_;
  std::vector<PowerSgdTensorPlan> plan_;
  std::size_t num_params_ = 0;
  std::size_t dense_floats_ = 0;
  bool prepared_ = false;
  memory::TrackedBuffer<float> error_;   // [num_params]: e (M during a step); zero where uncompressed
  memory::TrackedBuffer<float> q_;       // [sum r_t m_t]: Q^T per compressed tensor
  memory::TrackedBuffer<float> pack_p_;  // [dense + sum r_t n_t]: uncompressed values, then P^T's
  std::int64_t syncs_ = 0;
  double compress_s_ = 0.0;
};

}  // namespace lowsync::sync
