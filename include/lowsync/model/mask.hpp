// The parameter mask (keep/prune bit per flat parameter) and the compressed store of the kept
// parameters, with the Kokkos visitor over them. Data structures of the model's flat buffers;
// how a mask is chosen (foresight pruning, ALGORITHMS.md §2) lives in optim/prune.hpp.
#pragma once

#include "lowsync/core/memory.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace lowsync::model {

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
      "lowsync::model::for_each_kept",
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

// Zeroth-order directions evaluated together in one forward pass (SparseMlp::perturbed_losses, optim::ZoEstimator::probe
// with a PerturbedLossFn): direction i's weight at kept flat index j is v_j + coef * (mu * normal01(keys[i], j)),
// the fp32 formula of optim::zo_perturb, formed row by row during the pass; the stored values are
// never changed.
struct Perturbations {
  std::span<const std::uint64_t> keys;
  float mu = 0.0f;
  float coef = 0.0f;
};

// The one formula of a perturbed value: mu * u rounded to fp32 first, then coef (+-1, +-2: exact)
// times it added, so the in-place form (optim::zo_perturb) and the on-the-fly one give the same bits.
inline float perturbed_value(float value, float mu, float coef, float normal) {
  return value + coef * (mu * normal);
}

}  // namespace lowsync::model
