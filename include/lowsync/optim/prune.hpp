// Foresight pruning, model-independent parts (ALGORITHMS.md §2): the parameter mask as a bitmap,
// compressed storage of the kept parameters, the exponential density schedule, global top-k
// selection with one weight kept per output unit, magnitude/random baselines, and the data-free
// NTK residual R(m) with its saliency |m * dR/dm|.
#pragma once

#include "lowsync/core/memory.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace lowsync::optim {

// Keep/prune flag per flat parameter. Bit j lives in byte j/8 at bit j%8 (LSB first); bytes() is
// the wire format (ceil(d/8) bytes, unused high bits of the last byte are zero). Flat indices must
// fit in uint32 (d < 2^32) so kept-index lists are 4 bytes per entry.
class Mask {
 public:
  Mask() = default;
  // d parameters, all kept (keep_all) or all pruned.
  explicit Mask(std::size_t num_params, bool keep_all = true);
  // From the wire format; fails on a wrong length or on non-zero padding bits.
  static Mask from_bytes(std::size_t num_params, std::span<const std::uint8_t> bytes);
  // From a list of kept flat indices (any order, duplicates allowed; each < num_params).
  static Mask from_indices(std::size_t num_params, std::span<const std::uint32_t> kept);

  Mask(const Mask& other);
  Mask& operator=(const Mask& other);
  Mask(Mask&& other) noexcept;
  Mask& operator=(Mask&& other) noexcept;

  std::size_t size() const { return num_params_; }  // d
  std::size_t nnz() const { return nnz_; }          // kept count
  double density() const;                           // nnz / d (1 for d = 0)
  // Unchecked (hot path): j < size().
  bool test(std::size_t j) const { return (words_[j >> 6] >> (j & 63)) & 1u; }
  void set(std::size_t j, bool keep);

  // Kept count and density of flat range [offset, offset + count), for per-layer reports.
  std::size_t range_nnz(std::size_t offset, std::size_t count) const;
  double range_density(std::size_t offset, std::size_t count) const;

  std::size_t num_bytes() const { return (num_params_ + 7) / 8; }
  std::span<const std::uint8_t> bytes() const;                  // wire view, num_bytes()
  void pack(std::span<std::uint8_t> out) const;                 // copy of bytes()
  std::vector<std::uint32_t> kept_indices() const;              // ascending, nnz entries
  void to_floats(std::span<float> out) const;                   // 1.0f kept, 0.0f pruned
  const std::uint64_t* words() const { return words_.data(); }  // ceil(d/64) words

  bool operator==(const Mask& other) const;

 private:
  std::size_t num_params_ = 0;
  std::size_t nnz_ = 0;
  memory::TrackedBuffer<std::uint64_t> words_;
};

// The kept parameters only: nnz fp32 values in ascending flat-index order plus the shared mask.
// No index list is stored: a block directory (kept count before each 512-bit block, the CSR row
// pointer of the bitmap) lets kernels find the k-th value's flat index, so storage is
// 4*nnz + d/8 + d/128 bytes instead of 4*d. The mask must not change while this object uses it.
class SparseParams {
 public:
  static constexpr std::size_t kBlockBits = 512;

  SparseParams() = default;
  explicit SparseParams(std::shared_ptr<const Mask> mask);

  std::size_t size() const { return values_.size(); }                   // nnz
  std::size_t num_params() const { return mask_ ? mask_->size() : 0; }  // d
  // Values + directory; the shared mask adds mask().num_bytes().
  std::size_t bytes() const { return values_.bytes() + block_offsets_.bytes(); }
  std::span<float> values() { return values_.span(); }
  std::span<const float> values() const { return values_.span(); }
  const Mask& mask() const { return *mask_; }
  std::shared_ptr<const Mask> shared_mask() const { return mask_; }
  // block_offsets()[b] = kept count in flat indices [0, b*kBlockBits); one entry per block + 1.
  std::span<const std::uint32_t> block_offsets() const { return block_offsets_.span(); }

  void gather(std::span<const float> dense);   // values[k] = dense[j_k], dense sized d
  void scatter(std::span<float> dense) const;  // dense = values at kept j, 0 elsewhere

 private:
  std::shared_ptr<const Mask> mask_;
  memory::TrackedBuffer<float> values_;
  memory::TrackedBuffer<std::uint32_t> block_offsets_;
};

// Calls fn(k, j) for every kept value k of `params` (flat index j, ascending), as a Kokkos kernel
// over 512-bit blocks: each block starts at its directory offset, so no index list is needed.
template <class Fn>
void for_each_kept(const SparseParams& params, Fn fn) {
  const std::span<const std::uint32_t> offsets = params.block_offsets();
  if (offsets.size() < 2) return;
  const std::uint64_t* words = params.mask().words();
  const std::uint32_t* block_start = offsets.data();
  const std::size_t num_words = (params.num_params() + 63) / 64;
  constexpr std::size_t kWordsPerBlock = SparseParams::kBlockBits / 64;
  Kokkos::parallel_for(
      "lowsync::optim::for_each_kept",
      Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(0, offsets.size() - 1),
      [=](const std::int64_t b) {
        const auto block = static_cast<std::size_t>(b);
        std::size_t k = block_start[block];
        const std::size_t w_end = std::min(num_words, (block + 1) * kWordsPerBlock);
        for (std::size_t w = block * kWordsPerBlock; w < w_end; ++w) {
          for (std::uint64_t bits = words[w]; bits != 0; bits &= bits - 1)
            fn(k++, w * 64 + static_cast<std::size_t>(std::countr_zero(bits)));
        }
      });
}

// ---- selection ----

// Target density of pruning round t of P: rho_t = (1 - s)^(t/P); rho_0 = 1, rho_P = 1 - s.
double density_schedule(double final_sparsity, int round, int num_rounds);

// Number of kept weights for a density: round(density * d) with halves rounded up (computed in
// double), clamped to [0, d].
std::size_t kept_count(double density, std::size_t num_params);

// Flat indices offset, offset + stride, ..., offset + (count-1)*stride.
struct IndexRange {
  std::size_t offset = 0;
  std::size_t count = 0;
  std::size_t stride = 1;
};
// All flat indices of one output unit (a row of a [out, in] weight, its bias entry, ...).
using OutputUnit = std::vector<IndexRange>;

// One unit per row of a row-major [rows, row_length] block at `offset` (a linear weight [out, in],
// or a conv weight [out, in, kh, kw] with row_length = in*kh*kw); if bias_offset is given, bias
// entry r joins unit r.
void append_row_units(std::vector<OutputUnit>& units, std::size_t offset, std::size_t rows,
                      std::size_t row_length, const std::size_t* bias_offset = nullptr);

// Global top-k over `scores` (all layers ranked together). Order: higher score first, ties ->
// lower flat index. Candidates are all indices, or only those kept in `within` (so pruned weights
// stay pruned across rounds). Count: k = kept_count(density, d), clamped to the candidate count.
// Each unit first keeps its best candidate (same order); those forced weights always win, and the
// remaining k - forced slots go to the best other candidates, so nnz == max(k, forced) exactly.
// A unit with no candidate forces nothing. NaN scores fail.
Mask select_top_k(std::span<const float> scores, double density,
                  std::span<const OutputUnit> units = {}, const Mask* within = nullptr);

// Magnitude baseline: scores[j] = |w[j]|.
void magnitude_scores(std::span<const float> params, std::span<float> scores);
// Random baseline: scores[j] = uniform01(stream_key({seed, round, kRandomPruneTag}), j).
inline constexpr std::uint64_t kRandomPruneTag = 0x7072756e65ULL;  // "prune"
void random_scores(std::uint64_t seed, std::uint64_t round, std::span<float> scores);

// ---- data-free NTK saliency ----

// The network on a fixed batch of Gaussian inputs the callable owns: writes f(x_b; w) for b < batch
// into out, [batch, output_size] flat. w is the masked weight vector (d entries).
struct NtkProblem {
  std::function<void(std::span<const float> w, std::span<float> out)> forward;
  std::size_t batch = 0;
  std::size_t output_size = 0;
};

// delta[j] = eps * normal01(key, j): the weight perturbation of one draw.
void draw_delta(std::uint64_t key, float eps, std::span<float> delta);

// One-draw residual R = (1/batch) sum_b ||f(x_b; w0*m) - f(x_b; (w0+delta)*m)||^2, m a 0/1 (or
// relaxed) float mask. E_delta[R] ~ eps^2 * tr Theta (exact for f linear in w).
double ntk_residual(const NtkProblem& problem, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m);

// Monte-Carlo tr Theta: mean over `draws` deltas (key stream_key({seed, draw})) of R / eps^2.
double ntk_trace_estimate(const NtkProblem& problem, std::span<const float> w0,
                          std::span<const float> m, float eps, std::uint64_t seed, int draws);

// Backprop form: given w_a = w0*m and w_b = (w0+delta)*m, returns R and writes dR/dw_a, dR/dw_b
// (each d entries). The model supplies it (two backward passes seeded by +-2(f_a - f_b)/batch).
using ResidualGradFn = std::function<double(std::span<const float> w_a, std::span<const float> w_b,
                                            std::span<float> grad_a, std::span<float> grad_b)>;

// S_j = |m_j * dR/dm_j| with dR/dm_j = grad_a_j * w0_j + grad_b_j * (w0_j + delta_j) (chain rule
// through w*m). Returns R. Pruned weights (m_j = 0) score exactly 0.
double ntk_saliency(const ResidualGradFn& residual_grad, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m,
                    std::span<float> saliency);

// Reference without backprop: dR/dm_j by central differences in m_j with step h (2 forward pairs
// per kept weight; tiny models and tests only). Pruned weights score 0.
void ntk_saliency_fd(const NtkProblem& problem, std::span<const float> w0,
                     std::span<const float> delta, std::span<const float> m, float h,
                     std::span<float> saliency);

}  // namespace lowsync::optim
