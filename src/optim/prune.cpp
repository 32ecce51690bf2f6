// Foresight pruning, model-independent parts (ALGORITHMS.md §2): bitmap mask, compressed kept
// parameters, density schedule, global top-k with one weight per output unit, baselines, and the
// data-free NTK residual and saliency.
#include "lowsync/optim/prune.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

namespace lowsync::optim {
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
  Kokkos::parallel_for("lowsync::optim::sparse_zero", HostRange(0, dense.size()),
                       [=](const std::int64_t j) { dst[j] = 0.0f; });
  const float* values = values_.data();
  for_each_kept(*this, [=](std::size_t k, std::size_t j) { dst[j] = values[k]; });
}

// ---- selection ----

double density_schedule(double final_sparsity, int round, int num_rounds) {
  if (!(final_sparsity >= 0.0 && final_sparsity < 1.0))
    fail("prune final sparsity {} outside [0, 1)", final_sparsity);
  if (num_rounds < 1) fail("prune rounds {} must be >= 1", num_rounds);
  if (round < 0 || round > num_rounds) fail("prune round {} outside [0, {}]", round, num_rounds);
  // Endpoints exact, so the last round hits the requested sparsity without pow rounding.
  if (round == 0) return 1.0;
  if (round == num_rounds) return 1.0 - final_sparsity;
  return std::pow(1.0 - final_sparsity, static_cast<double>(round) / num_rounds);
}

std::size_t kept_count(double density, std::size_t num_params) {
  if (!(density >= 0.0 && density <= 1.0)) fail("prune density {} outside [0, 1]", density);
  const double k = std::floor(density * static_cast<double>(num_params) + 0.5);
  return std::min(num_params, static_cast<std::size_t>(k));
}

void append_row_units(std::vector<OutputUnit>& units, std::size_t offset, std::size_t rows,
                      std::size_t row_length, const std::size_t* bias_offset) {
  for (std::size_t r = 0; r < rows; ++r) {
    OutputUnit unit{IndexRange{offset + r * row_length, row_length, 1}};
    if (bias_offset != nullptr) unit.push_back(IndexRange{*bias_offset + r, 1, 1});
    units.push_back(std::move(unit));
  }
}

Mask select_top_k(std::span<const float> scores, double density, std::span<const OutputUnit> units,
                  const Mask* within) {
  const std::size_t d = scores.size();
  if (within != nullptr && within->size() != d)
    fail("prune: mask has {} entries, scores {}", within->size(), d);
  for (std::size_t j = 0; j < d; ++j)
    if (std::isnan(scores[j])) fail("prune: NaN score at flat index {}", j);
  const auto candidate = [&](std::size_t j) { return within == nullptr || within->test(j); };
  // Strict total order: higher score first, ties -> lower flat index. The kept set is therefore
  // unique, whatever the selection algorithm does internally.
  const auto better = [&](std::size_t a, std::size_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  };

  Mask kept(d, false);
  std::size_t forced = 0;
  for (const OutputUnit& unit : units) {
    std::size_t best = d;
    for (const IndexRange& range : unit) {
      for (std::size_t c = 0; c < range.count; ++c) {
        const std::size_t j = range.offset + c * range.stride;
        if (j >= d) fail("prune: output unit index {} outside {} parameters", j, d);
        if (candidate(j) && (best == d || better(j, best))) best = j;
      }
    }
    if (best != d && !kept.test(best)) {
      kept.set(best, true);
      ++forced;
    }
  }

  const std::size_t num_candidates = within == nullptr ? d : within->nnz();
  const std::size_t target = std::max(forced, std::min(kept_count(density, d), num_candidates));
  const std::size_t fill = target - forced;
  if (fill == 0) return kept;

  std::vector<std::uint32_t> rest;
  rest.reserve(num_candidates - forced);
  for (std::size_t j = 0; j < d; ++j)
    if (candidate(j) && !kept.test(j)) rest.push_back(static_cast<std::uint32_t>(j));
  std::nth_element(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(fill - 1), rest.end(),
                   better);
  for (std::size_t i = 0; i < fill; ++i) kept.set(rest[i], true);
  return kept;
}

void magnitude_scores(std::span<const float> params, std::span<float> scores) {
  if (params.size() != scores.size())
    fail("magnitude scores: {} params, {} scores", params.size(), scores.size());
  const float* w = params.data();
  float* s = scores.data();
  Kokkos::parallel_for("lowsync::optim::magnitude_scores", HostRange(0, scores.size()),
                       [=](const std::int64_t j) { s[j] = std::fabs(w[j]); });
}

void random_scores(std::uint64_t seed, std::uint64_t round, std::span<float> scores) {
  const std::uint64_t key = stream_key({seed, round, kRandomPruneTag});
  float* s = scores.data();
  Kokkos::parallel_for(
      "lowsync::optim::random_scores", HostRange(0, scores.size()),
      [=](const std::int64_t j) { s[j] = uniform01(key, static_cast<std::uint64_t>(j)); });
}

// ---- NTK saliency ----

namespace {

void check_ntk_sizes(std::span<const float> w0, std::span<const float> delta,
                     std::span<const float> m) {
  if (delta.size() != w0.size() || m.size() != w0.size())
    fail("ntk: w0 has {} entries, delta {}, mask {}", w0.size(), delta.size(), m.size());
}

// R for explicit masked weight vectors; out_a, out_b are [batch, output_size] scratch.
double residual_of(const NtkProblem& problem, std::span<const float> w_a,
                   std::span<const float> w_b, std::vector<float>& out_a,
                   std::vector<float>& out_b) {
  problem.forward(w_a, out_a);
  problem.forward(w_b, out_b);
  double sum = 0.0;
  for (std::size_t i = 0; i < out_a.size(); ++i) {
    const double diff = static_cast<double>(out_a[i]) - out_b[i];
    sum += diff * diff;
  }
  return sum / static_cast<double>(problem.batch);
}

}  // namespace

void draw_delta(std::uint64_t key, float eps, std::span<float> delta) {
  float* dst = delta.data();
  Kokkos::parallel_for(
      "lowsync::optim::ntk_delta", HostRange(0, delta.size()),
      [=](const std::int64_t j) { dst[j] = eps * normal01(key, static_cast<std::uint64_t>(j)); });
}

double ntk_residual(const NtkProblem& problem, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m) {
  check_ntk_sizes(w0, delta, m);
  if (problem.batch == 0) fail("ntk: batch must be > 0");
  std::vector<float> w_a(w0.size()), w_b(w0.size());
  for (std::size_t j = 0; j < w0.size(); ++j) {
    w_a[j] = w0[j] * m[j];
    w_b[j] = (w0[j] + delta[j]) * m[j];
  }
  std::vector<float> out_a(problem.batch * problem.output_size);
  std::vector<float> out_b(out_a.size());
  return residual_of(problem, w_a, w_b, out_a, out_b);
}

double ntk_trace_estimate(const NtkProblem& problem, std::span<const float> w0,
                          std::span<const float> m, float eps, std::uint64_t seed, int draws) {
  if (draws < 1) fail("ntk: draws {} must be >= 1", draws);
  if (!(eps > 0.0f)) fail("ntk: eps {} must be > 0", eps);
  std::vector<float> delta(w0.size());
  double sum = 0.0;
  for (int t = 0; t < draws; ++t) {
    draw_delta(stream_key({seed, static_cast<std::uint64_t>(t)}), eps, delta);
    sum += ntk_residual(problem, w0, delta, m);
  }
  return sum / draws / (static_cast<double>(eps) * eps);
}

double ntk_saliency(const ResidualGradFn& residual_grad, std::span<const float> w0,
                    std::span<const float> delta, std::span<const float> m,
                    std::span<float> saliency) {
  check_ntk_sizes(w0, delta, m);
  if (saliency.size() != w0.size())
    fail("ntk: saliency has {} entries, expected {}", saliency.size(), w0.size());
  const std::size_t d = w0.size();
  std::vector<float> w_a(d), w_b(d), grad_a(d), grad_b(d);
  for (std::size_t j = 0; j < d; ++j) {
    w_a[j] = w0[j] * m[j];
    w_b[j] = (w0[j] + delta[j]) * m[j];
  }
  const double r = residual_grad(w_a, w_b, grad_a, grad_b);
  for (std::size_t j = 0; j < d; ++j) {
    const double dr_dm = static_cast<double>(grad_a[j]) * w0[j] +
                         static_cast<double>(grad_b[j]) * (static_cast<double>(w0[j]) + delta[j]);
    saliency[j] = static_cast<float>(std::fabs(m[j] * dr_dm));
  }
  return r;
}

void ntk_saliency_fd(const NtkProblem& problem, std::span<const float> w0,
                     std::span<const float> delta, std::span<const float> m, float h,
                     std::span<float> saliency) {
  check_ntk_sizes(w0, delta, m);
  if (saliency.size() != w0.size())
    fail("ntk: saliency has {} entries, expected {}", saliency.size(), w0.size());
  if (!(h > 0.0f)) fail("ntk: finite-difference step {} must be > 0", h);
  std::vector<float> m_step(m.begin(), m.end());
  for (std::size_t j = 0; j < w0.size(); ++j) {
    if (m[j] == 0.0f) {
      saliency[j] = 0.0f;
      continue;
    }
    m_step[j] = m[j] + h;
    const double r_plus = ntk_residual(problem, w0, delta, m_step);
    m_step[j] = m[j] - h;
    const double r_minus = ntk_residual(problem, w0, delta, m_step);
    m_step[j] = m[j];
    saliency[j] = static_cast<float>(std::fabs(m[j] * (r_plus - r_minus) / (2.0 * h)));
  }
}

}  // namespace lowsync::optim
