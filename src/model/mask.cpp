// Mask bitmap and compressed kept-parameter storage (model/mask.hpp).
#include "lowsync/model/mask.hpp"

#include "lowsync/core/error.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <utility>

namespace lowsync::model {
namespace {

using HostRange = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;

// bytes() reinterprets the words; the wire format is LSB-first bytes, i.e. little-endian words.
static_assert(std::endian::native == std::endian::little, "Mask wire format assumes little-endian");

std::size_t num_words_for(std::size_t num_params) { return (num_params + 63) / 64; }

// Word count of a mask over num_params, checked before anything is allocated.
std::size_t checked_num_words(std::size_t num_params) {
  if (num_params > std::numeric_limits<std::uint32_t>::max())
    fail("mask size {} exceeds uint32 flat indices", num_params);
  return num_words_for(num_params);
}

}  // namespace

// ---- Mask ----

Mask::Mask(std::size_t num_params, bool keep_all)
    : num_params_(num_params), words_("lowsync::optim::mask", checked_num_words(num_params)) {
  if (!keep_all) return;
  for (std::size_t w = 0; w < words_.size(); ++w) words_[w] = ~std::uint64_t{0};
  if (num_params % 64 != 0) words_[words_.size() - 1] = (std::uint64_t{1} << (num_params % 64)) - 1;
  nnz_ = num_params;
}

Mask Mask::from_bytes(std::size_t num_params, std::span<const std::uint8_t> bytes) {
  Mask mask(num_params, false);
  if (bytes.size() != mask.num_bytes())
    fail("mask bytes: got {} bytes for {} parameters, expected {}", bytes.size(), num_params,
         mask.num_bytes());
  if (num_params % 8 != 0 && (bytes.back() >> (num_params % 8)) != 0)
    fail("mask bytes: non-zero padding bits in last byte {:#04x} for {} parameters", bytes.back(),
         num_params);
  if (!bytes.empty()) std::memcpy(mask.words_.data(), bytes.data(), bytes.size());
  std::size_t nnz = 0;
  for (std::size_t w = 0; w < mask.words_.size(); ++w) nnz += std::popcount(mask.words_[w]);
  mask.nnz_ = nnz;
  return mask;
}

Mask Mask::from_indices(std::size_t num_params, std::span<const std::uint32_t> kept) {
  Mask mask(num_params, false);
  for (const std::uint32_t j : kept) {
    if (j >= num_params) fail("mask index {} out of range for {} parameters", j, num_params);
    mask.set(j, true);
  }
  return mask;
}

Mask::Mask(const Mask& other)
    : num_params_(other.num_params_),
      nnz_(other.nnz_),
      words_("lowsync::optim::mask", other.words_.size()) {
  if (words_.size() != 0) std::memcpy(words_.data(), other.words_.data(), words_.bytes());
}

Mask& Mask::operator=(const Mask& other) {
  if (this != &other) *this = Mask(other);
  return *this;
}

// A moved-from mask is empty (d = 0), never a size without storage.
Mask::Mask(Mask&& other) noexcept
    : num_params_(std::exchange(other.num_params_, 0)),
      nnz_(std::exchange(other.nnz_, 0)),
      words_(std::move(other.words_)) {}

Mask& Mask::operator=(Mask&& other) noexcept {
  num_params_ = std::exchange(other.num_params_, 0);
  nnz_ = std::exchange(other.nnz_, 0);
  words_ = std::move(other.words_);
  return *this;
}

double Mask::density() const {
  return num_params_ == 0 ? 1.0 : static_cast<double>(nnz_) / static_cast<double>(num_params_);
}

void Mask::set(std::size_t j, bool keep) {
  if (j >= num_params_) fail("mask index {} out of range for {} parameters", j, num_params_);
  const std::uint64_t bit = std::uint64_t{1} << (j & 63);
  std::uint64_t& word = words_[j >> 6];
  const bool was = (word & bit) != 0;
  if (keep && !was) ++nnz_;
  if (!keep && was) --nnz_;
  word = keep ? (word | bit) : (word & ~bit);
}

std::size_t Mask::range_nnz(std::size_t offset, std::size_t count) const {
  if (offset > num_params_ || count > num_params_ - offset)
    fail("mask range [{}, {}) outside {} parameters", offset, offset + count, num_params_);
  std::size_t nnz = 0;
  std::size_t j = offset;
  const std::size_t end = offset + count;
  // Head bits up to a word boundary, whole words by popcount, then the tail.
  while (j < end && (j & 63) != 0) nnz += test(j++);
  for (; j + 64 <= end; j += 64) nnz += std::popcount(words_[j >> 6]);
  while (j < end) nnz += test(j++);
  return nnz;
}

double Mask::range_density(std::size_t offset, std::size_t count) const {
  const std::size_t nnz = range_nnz(offset, count);
  return count == 0 ? 1.0 : static_cast<double>(nnz) / static_cast<double>(count);
}

std::span<const std::uint8_t> Mask::bytes() const {
  return {reinterpret_cast<const std::uint8_t*>(words_.data()), num_bytes()};
}

void Mask::pack(std::span<std::uint8_t> out) const {
  if (out.size() != num_bytes())
    fail("mask pack: output has {} bytes, expected {}", out.size(), num_bytes());
  const auto in = bytes();
  std::copy(in.begin(), in.end(), out.begin());
}

std::vector<std::uint32_t> Mask::kept_indices() const {
  std::vector<std::uint32_t> kept;
  kept.reserve(nnz_);
  for (std::size_t w = 0; w < words_.size(); ++w) {
    for (std::uint64_t bits = words_[w]; bits != 0; bits &= bits - 1)
      kept.push_back(static_cast<std::uint32_t>(w * 64 + std::countr_zero(bits)));
  }
  return kept;
}

void Mask::to_floats(std::span<float> out) const {
  if (out.size() != num_params_)
    fail("mask to_floats: output has {} entries, expected {}", out.size(), num_params_);
  const std::uint64_t* words = words_.data();
  float* dst = out.data();
  Kokkos::parallel_for(
      "lowsync::optim::mask_to_floats", HostRange(0, out.size()),
      [=](const std::int64_t j) { dst[j] = static_cast<float>((words[j >> 6] >> (j & 63)) & 1u); });
}

bool Mask::operator==(const Mask& other) const {
  return num_params_ == other.num_params_ && nnz_ == other.nnz_ &&
         std::equal(bytes().begin(), bytes().end(), other.bytes().begin());
}

// ---- SparseParams ----

SparseParams::SparseParams(std::shared_ptr<const Mask> mask)
    : mask_(std::move(mask)),
      values_("lowsync::optim::sparse_values", mask_ ? mask_->nnz() : 0),
      block_offsets_("lowsync::optim::sparse_block_offsets",
                     mask_ ? (mask_->size() + kBlockBits - 1) / kBlockBits + 1 : 1) {
  if (!mask_) fail("sparse params: null mask");
  const std::size_t num_words = num_words_for(mask_->size());
  constexpr std::size_t kWordsPerBlock = kBlockBits / 64;
  std::uint32_t running = 0;
  for (std::size_t b = 0; b + 1 < block_offsets_.size(); ++b) {
    block_offsets_[b] = running;
    const std::size_t w_end = std::min(num_words, (b + 1) * kWordsPerBlock);
    for (std::size_t w = b * kWordsPerBlock; w < w_end; ++w)
      running += static_cast<std::uint32_t>(std::popcount(mask_->words()[w]));
  }
  block_offsets_[block_offsets_.size() - 1] = running;
}

void SparseParams::gather(std::span<const float> dense) {
  if (dense.size() != num_params())
    fail("sparse gather: dense has {} entries, expected {}", dense.size(), num_params());
  float* values = values_.data();
  const float* src = dense.data();
  for_each_kept(*this, [=](std::size_t k, std::size_t j) { values[k] = src[j]; });
}

void SparseParams::scatter(std::span<float> dense) const {
  if (dense.size() != num_params())
    fail("sparse scatter: dense has {} entries, expected {}", dense.size(), num_params());
  float* dst = dense.data();
  Kokkos::parallel_for("lowsync::model::sparse_zero", HostRange(0, dense.size()),
                       [=](const std::int64_t j) { dst[j] = 0.0f; });
  const float* values = values_.data();
  for_each_kept(*this, [=](std::size_t k, std::size_t j) { dst[j] = values[k]; });
}

// ---- output units ----

void append_row_units(std::vector<OutputUnit>& units, std::size_t offset, std::size_t rows,
                      std::size_t row_length, const std::size_t* bias_offset) {
  for (std::size_t r = 0; r < rows; ++r) {
    OutputUnit unit{IndexRange{offset + r * row_length, row_length, 1}};
    if (bias_offset != nullptr) unit.push_back(IndexRange{*bias_offset + r, 1, 1});
    units.push_back(std::move(unit));
  }
}

}  // namespace lowsync::model
