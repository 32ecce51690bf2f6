// FDA variance estimators (ALGORITHMS.md §4): the local state each rank contributes per step
// (naive, linear, AMS sketch), the estimate V^ computed from the sum of those states over ranks,
// the 4-wise independent hash family behind the sketch and the shared direction xi.
// Pure functions, no MPI: the strategy (sync/fda.hpp) does the allreduce.
#pragma once

#include "lowsync/core/memory.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace lowsync::sync::fda {

// ---- hash family --------------------------------------------------------------------------

inline constexpr std::uint64_t kMersenne61 = (std::uint64_t{1} << 61) - 1;  // p = 2^61 - 1

// x mod p for x < 2^122 (a product of two residues), without a 128-bit division.
std::uint64_t mod_mersenne61(unsigned __int128 x);

// h(x) = a3 x^3 + a2 x^2 + a1 x + a0 mod p with a_j uniform in [0, p): a 4-wise independent
// family over keys in [0, p). Coefficients a_j = random_bits(key, j) mod p.
class PolyHash4 {
 public:
  PolyHash4() = default;
  explicit PolyHash4(std::uint64_t key);
  explicit PolyHash4(const std::array<std::uint64_t, 4>& coefficients);  // a0..a3, each < p
  std::uint64_t operator()(std::uint64_t x) const;                       // in [0, p)
  const std::array<std::uint64_t, 4>& coefficients() const { return a_; }

 private:
  std::array<std::uint64_t, 4> a_{};
};

// Row r of the sketch uses two independent polynomials drawn from the shared seed: one for the
// bucket, one for the sign (fda_estimators.cpp says why one polynomial cannot serve both).
PolyHash4 bucket_hash(std::uint64_t seed, int row);
PolyHash4 sign_hash(std::uint64_t seed, int row);

// Per-coordinate bucket and sign tables for every row, built once (d * depth polynomial pairs)
// so that sketching a step is a table walk. One uint16 code per (row, coordinate): bucket in the
// low 15 bits, bit 15 set for sign -1. Memory: 2 * depth * num_params bytes (10 MB for the
// default depth 5 and d = 1e6), held in a TrackedBuffer.
class SketchHashes {
 public:
  static constexpr int kMaxWidth = 1 << 15;
  static constexpr std::uint16_t kSignBit = 0x8000;
  static constexpr std::uint16_t kBucketMask = 0x7fff;

  SketchHashes() = default;
  SketchHashes(std::size_t num_params, int depth, int width, std::uint64_t seed);

  std::size_t num_params() const { return num_params_; }
  int depth() const { return depth_; }
  int width() const { return width_; }
  std::uint64_t seed() const { return seed_; }
  int bucket(int row, std::size_t i) const { return codes_[row_offset(row) + i] & kBucketMask; }
  int sign(int row, std::size_t i) const { return (codes_[row_offset(row) + i] & kSignBit) ? -1 : 1; }
  // [depth, num_params] codes, row-major.
  std::span<const std::uint16_t> codes() const { return codes_.span(); }
  std::size_t table_bytes() const { return codes_.bytes(); }

 private:
  std::size_t row_offset(int row) const { return static_cast<std::size_t>(row) * num_params_; }
  std::size_t num_params_ = 0;
  int depth_ = 0;
  int width_ = 0;
  std::uint64_t seed_ = 0;
  memory::TrackedBuffer<std::uint16_t> codes_;
};

// ---- AMS sketch ---------------------------------------------------------------------------

// sketch[r * width + h_r(i)] += s_r(i) * delta[i] for every row r (fp64 sums, accumulated into
// whatever sketch holds). delta.size() == hashes.num_params(), sketch.size() == depth * width.
void sketch_add(std::span<const float> delta, const SketchHashes& hashes, std::span<double> sketch);

// Row r's estimate of ||x||^2: sum_c sketch[r][c]^2.
double sketch_row_norm(std::span<const double> sketch, int width, int row);
// M(sk) = median over rows of the row estimates (mean of the two middle ones for even depth).
double sketch_norm_estimate(std::span<const double> sketch, int depth, int width);

// ---- estimators ---------------------------------------------------------------------------

enum class Estimator : std::uint8_t { naive, linear, sketch };
Estimator parse_estimator(std::string_view name);  // "naive" | "linear" | "sketch"
std::string_view estimator_name(Estimator e);

// The sketch's (1 + eps) discount. ALGORITHMS.md §4 gives eps = 1/sqrt(m); with depth 5 that
// leaves V^ >= V in only ~91% of trials with K >= 2 (a row estimate of ||x||^2 is about
// ||x||^2 chi2_m / m, standard deviation sqrt(2/m) ||x||^2). Our default is
// kDefaultSketchEpsFactor / sqrt(m), which brings it to ~97-98% (README "FDA" has the numbers).
inline constexpr double kDefaultSketchEpsFactor = 1.5;

struct EstimatorSpec {
  Estimator kind = Estimator::linear;
  int sketch_depth = 5;
  int sketch_width = 250;
  double sketch_eps = -1.0;  // sync.fda.sketch_eps; negative = kDefaultSketchEpsFactor / sqrt(width)
};
// depth >= 1, width in [1, SketchHashes::kMaxWidth], sketch_eps finite
void validate(const EstimatorSpec& spec);
// The eps used by variance_estimate: spec.sketch_eps, or the default when it is negative.
double sketch_eps(const EstimatorSpec& spec);

// Doubles in one rank's state: naive 1, linear 2, sketch 1 + depth * width.
// Layout: [0] = ||Delta||^2; linear [1] = <xi, Delta> / ||xi||; sketch [1..] = sketch rows.
std::size_t state_size(const EstimatorSpec& spec);

// This rank's state from Delta = params - w0 (formed in fp64, so no fp32 cancellation). xi is
// read only by the linear estimator and need not be exactly unit: the projection is divided by
// its fp64 norm, which keeps V^ >= V up to fp64 rounding. hashes only by the sketch.
void local_state(const EstimatorSpec& spec, std::span<const float> params,
                 std::span<const float> w0, std::span<const float> xi,
                 const SketchHashes* hashes, std::span<double> state);

// The same state from native 16-bit storage: params and w0 are bf16 (bf16 = true) or fp16 bit
// patterns. Decoded kStateChunk values at a time into a small fp32 scratch (no model-sized fp32
// copy) and summed in the order of local_state, so the state is bitwise local_state applied to
// the decoded vectors: native and float storage take the same decisions on the same values.
inline constexpr std::size_t kStateChunk = 4096;
void local_state_16bit(const EstimatorSpec& spec, std::span<const std::uint16_t> params,
                       std::span<const std::uint16_t> w0, bool bf16, std::span<const float> xi,
                       const SketchHashes* hashes, std::span<double> state);

// V^ from the element-wise SUM over the world_size ranks of their states:
//   naive  (1/K) sum ||D||^2
//   linear (1/K) sum ||D||^2 - ((1/K) sum <xi, D>)^2
//   sketch (1/K) sum ||D||^2 - M(sum sketch / K) / (1 + sketch_eps(spec))
// Negative -> 0 (no sync); non-finite -> +inf (forces a sync).
double variance_estimate(const EstimatorSpec& spec, std::span<const double> state_sum,
                         int world_size);

// ---- shared direction xi ------------------------------------------------------------------

// xi[i] = normal01(stream_key({seed, tag}), i), normalised in fp64: the same on every rank.
void shared_gaussian_unit(std::uint64_t seed, std::span<float> xi);
std::vector<float> shared_gaussian_unit(std::size_t num_params, std::uint64_t seed);

// xi = (w0 - w0_prev) / ||w0 - w0_prev||, the direction of the last global move; when the move
// is zero (first round, a sync that changed nothing) or not finite, the shared Gaussian instead.
// Returns true when the move was used.
bool last_move_direction(std::span<const float> w0, std::span<const float> w0_prev,
                         std::uint64_t seed, std::span<float> xi);
// The same from 16-bit w0 and w0_prev (native storage; bf16 or fp16 bits): bitwise the float
// function on the decoded vectors. xi itself stays fp32 (README "Precision").
bool last_move_direction_16bit(std::span<const std::uint16_t> w0, std::span<const std::uint16_t> w0_prev,
                               bool bf16, std::uint64_t seed, std::span<float> xi);

}  // namespace lowsync::sync::fda
