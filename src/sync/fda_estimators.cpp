// FDA variance estimators (ALGORITHMS.md §4 "Estimators"): degree-3 polynomial hashes over
// 2^61 - 1, AMS sketch tables and median-of-rows norm, local states and V^ from their sum.
// All sums are fp64 in a fixed order, so every rank computes the same V^ from the same sum.
#include "lowsync/sync/fda_estimators.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

namespace lowsync::sync::fda {
namespace {

// Stream tags keep the sketch and xi draws apart from every other user of the run seed.
constexpr std::uint64_t kBucketTag = 0x4644412d42554b54ULL;  // "FDA-BUKT"
constexpr std::uint64_t kSignTag = 0x4644412d5349474eULL;    // "FDA-SIGN"
constexpr std::uint64_t kXiTag = 0x4644412d58492d30ULL;      // "FDA-XI-0"

// Adds s_r(first + i) * value(i) into every row for i in [0, n); value(i) is fp64. The row loop
// is outermost so each row (width doubles, 2 KB by default) stays in L1 while the codes stream
// through. Each bucket receives its terms in ascending coordinate order whatever the range split,
// so summing [0, d) in pieces gives the bits of one pass (local_state_16bit relies on it).
template <class ValueAt>
void sketch_accumulate(ValueAt value, const SketchHashes& hashes, std::size_t first, std::size_t n,
                       std::span<double> sketch) {
  const std::size_t d = hashes.num_params();
  const std::span<const std::uint16_t> codes = hashes.codes();
  for (int r = 0; r < hashes.depth(); ++r) {
    double* row = sketch.data() + static_cast<std::size_t>(r) * hashes.width();
    const std::uint16_t* code = codes.data() + static_cast<std::size_t>(r) * d + first;
    for (std::size_t i = 0; i < n; ++i) {
      // The sign is random per coordinate, so a branch on it would mispredict half the time:
      // flip the fp64 sign bit instead (bit 15 of the code moved to bit 63).
      const std::uint16_t c = code[i];
      const auto flip = static_cast<std::uint64_t>(c & SketchHashes::kSignBit) << 48;
      const auto bits = std::bit_cast<std::uint64_t>(static_cast<double>(value(i))) ^ flip;
      row[c & SketchHashes::kBucketMask] += std::bit_cast<double>(bits);
    }
  }
}

void check_sketch_args(const SketchHashes& hashes, std::size_t num_params, std::size_t sketch_size) {
  if (hashes.num_params() != num_params)
    fail("FDA sketch: vector has {} entries but the hash tables cover {}", num_params,
         hashes.num_params());
  const std::size_t want = static_cast<std::size_t>(hashes.depth()) * hashes.width();
  if (sketch_size != want)
    fail("FDA sketch: sketch has {} entries, expected depth*width = {}", sketch_size, want);
}

}  // namespace

std::uint64_t mod_mersenne61(unsigned __int128 x) {
  // 2^61 = 1 (mod p): fold the high bits onto the low ones twice, then one conditional subtract.
  std::uint64_t r = static_cast<std::uint64_t>(x & kMersenne61) + static_cast<std::uint64_t>(x >> 61);
  r = (r & kMersenne61) + (r >> 61);
  return r >= kMersenne61 ? r - kMersenne61 : r;
}

PolyHash4::PolyHash4(std::uint64_t key) {
  for (std::uint64_t j = 0; j < 4; ++j) a_[j] = mod_mersenne61(random_bits(key, j));
}

PolyHash4::PolyHash4(const std::array<std::uint64_t, 4>& coefficients) : a_(coefficients) {
  for (std::uint64_t a : a_)
    if (a >= kMersenne61) fail("FDA hash: coefficient {} is not below 2^61 - 1", a);
}

std::uint64_t PolyHash4::operator()(std::uint64_t x) const {
  x = mod_mersenne61(x);
  // Horner: h * x + a < p^2 + p < 2^122, within mod_mersenne61's range.
  std::uint64_t h = a_[3];
  for (int j = 2; j >= 0; --j)
    h = mod_mersenne61(static_cast<unsigned __int128>(h) * x + a_[static_cast<std::size_t>(j)]);
  return h;
}

// The sign needs its own polynomial. Taking it from a bit of the bucket hash would tie it to the
// bucket: with an even width (250), h mod width and h's low bit share parity, so two keys in the
// same bucket would always get the same sign and sum_c sk[c]^2 would be biased upward. AMS needs
// E[s(i) s(j)] = 0 for colliding i != j, which an independent 4-wise family gives.
PolyHash4 bucket_hash(std::uint64_t seed, int row) {
  return PolyHash4(stream_key({seed, kBucketTag, static_cast<std::uint64_t>(row)}));
}
PolyHash4 sign_hash(std::uint64_t seed, int row) {
  return PolyHash4(stream_key({seed, kSignTag, static_cast<std::uint64_t>(row)}));
}

SketchHashes::SketchHashes(std::size_t num_params, int depth, int width, std::uint64_t seed)
    : num_params_(num_params), depth_(depth), width_(width), seed_(seed) {
  validate(EstimatorSpec{Estimator::sketch, depth, width});
  codes_ = memory::TrackedBuffer<std::uint16_t>("fda_sketch_codes",
                                                 static_cast<std::size_t>(depth) * num_params);
  const auto m = static_cast<std::uint64_t>(width);
  for (int r = 0; r < depth; ++r) {
    const PolyHash4 hb = bucket_hash(seed, r);
    const PolyHash4 hs = sign_hash(seed, r);
    std::uint16_t* code = codes_.data() + row_offset(r);
    for (std::size_t i = 0; i < num_params; ++i) {
      // h mod m over h uniform in [0, p): bucket probabilities differ by at most m / p ~ 1e-16.
      // The sign is the low bit of the second hash: P(odd) = (2^60 - 1) / p, 1/2 to 2^-62.
      const auto bucket = static_cast<std::uint16_t>(hb(i) % m);
      const bool negative = (hs(i) & 1U) != 0;
      code[i] = static_cast<std::uint16_t>(bucket | (negative ? kSignBit : 0));
    }
  }
}

void sketch_add(std::span<const float> delta, const SketchHashes& hashes, std::span<double> sketch) {
  check_sketch_args(hashes, delta.size(), sketch.size());
  sketch_accumulate([&](std::size_t i) { return static_cast<double>(delta[i]); }, hashes, 0, delta.size(), sketch);
}

double sketch_row_norm(std::span<const double> sketch, int width, int row) {
  const double* r = sketch.data() + static_cast<std::size_t>(row) * width;
  double s = 0.0;
  for (int c = 0; c < width; ++c) s += r[c] * r[c];
  return s;
}

double sketch_norm_estimate(std::span<const double> sketch, int depth, int width) {
  if (depth < 1 || width < 1 || sketch.size() != static_cast<std::size_t>(depth) * width)
    fail("FDA sketch: {} entries do not form a {} x {} sketch", sketch.size(), depth, width);
  std::vector<double> rows(static_cast<std::size_t>(depth));
  for (int r = 0; r < depth; ++r) {
    rows[static_cast<std::size_t>(r)] = sketch_row_norm(sketch, width, r);
    // NaN has no place in an ordering (std::sort would be undefined): the estimate is NaN.
    if (std::isnan(rows[static_cast<std::size_t>(r)])) return rows[static_cast<std::size_t>(r)];
  }
  std::sort(rows.begin(), rows.end());
  const std::size_t mid = rows.size() / 2;
  return rows.size() % 2 == 1 ? rows[mid] : 0.5 * (rows[mid - 1] + rows[mid]);
}

Estimator parse_estimator(std::string_view name) {
  if (name == "naive") return Estimator::naive;
  if (name == "linear") return Estimator::linear;
  if (name == "sketch") return Estimator::sketch;
  fail("sync.fda.estimator: unknown estimator '{}' (expected naive, linear or sketch)", name);
}

std::string_view estimator_name(Estimator e) {
  switch (e) {
    case Estimator::naive: return "naive";
    case Estimator::linear: return "linear";
    case Estimator::sketch: return "sketch";
  }
  return "?";
}

void validate(const EstimatorSpec& spec) {
  if (spec.kind != Estimator::sketch) return;
  if (spec.sketch_depth < 1) fail("sync.fda.sketch_depth: {} is below 1", spec.sketch_depth);
  if (spec.sketch_width < 1 || spec.sketch_width > SketchHashes::kMaxWidth)
    fail("sync.fda.sketch_width: {} is outside [1, {}]", spec.sketch_width, SketchHashes::kMaxWidth);
  if (!std::isfinite(spec.sketch_eps)) fail("sync.fda.sketch_eps: {} is not finite", spec.sketch_eps);
}

double sketch_eps(const EstimatorSpec& spec) {
  if (spec.sketch_eps >= 0.0) return spec.sketch_eps;
  return kDefaultSketchEpsFactor / std::sqrt(static_cast<double>(spec.sketch_width));
}

std::size_t state_size(const EstimatorSpec& spec) {
  switch (spec.kind) {
    case Estimator::naive: return 1;
    case Estimator::linear: return 2;
    case Estimator::sketch:
      return 1 + static_cast<std::size_t>(spec.sketch_depth) * spec.sketch_width;
  }
  return 0;
}

namespace {

// Running sums of one rank's state over coordinate ranges taken in ascending order; the sketch
// rows accumulate in place in state[1..].
struct StateSums {
  double sq = 0.0, dot = 0.0, xi_sq = 0.0;
};

void check_state_args(const EstimatorSpec& spec, std::size_t d, std::size_t w0_size, std::size_t xi_size,
                      const SketchHashes* hashes, std::span<double> state) {
  validate(spec);
  if (w0_size != d) fail("FDA: reference model has {} entries, parameters {}", w0_size, d);
  if (state.size() != state_size(spec))
    fail("FDA: state has {} entries, the {} estimator needs {}", state.size(),
         estimator_name(spec.kind), state_size(spec));
  if (spec.kind == Estimator::linear && xi_size != d) fail("FDA: xi has {} entries, parameters {}", xi_size, d);
  if (spec.kind == Estimator::sketch) {
    if (hashes == nullptr) fail("FDA: the sketch estimator needs hash tables");
    if (hashes->depth() != spec.sketch_depth || hashes->width() != spec.sketch_width)
      fail("FDA: hash tables are {} x {}, the estimator wants {} x {}", hashes->depth(),
           hashes->width(), spec.sketch_depth, spec.sketch_width);
    check_sketch_args(*hashes, d, state.size() - 1);
  }
}

// Coordinates [first, first + params.size()): params, w0 (and xi, linear) are that range.
void accumulate_state(const EstimatorSpec& spec, std::span<const float> params, std::span<const float> w0,
                      std::span<const float> xi, const SketchHashes* hashes, std::size_t first,
                      StateSums& sums, std::span<double> state) {
  // fp64 difference of two floats: exact unless their exponents are ~29 apart.
  const auto delta = [&](std::size_t i) {
    return static_cast<double>(params[i]) - static_cast<double>(w0[i]);
  };
  const std::size_t n = params.size();
  if (spec.kind == Estimator::linear) {
    for (std::size_t i = 0; i < n; ++i) {
      const double v = delta(i);
      const double x = xi[i];
      sums.sq += v * v;
      sums.dot += x * v;
      sums.xi_sq += x * x;
    }
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const double v = delta(i);
    sums.sq += v * v;
  }
  if (spec.kind == Estimator::sketch) sketch_accumulate(delta, *hashes, first, n, state.subspan(1));
}

void finish_state(const EstimatorSpec& spec, const StateSums& sums, std::span<double> state) {
  state[0] = sums.sq;
  // A zero xi projects nothing: the estimator falls back to naive, still conservative.
  if (spec.kind == Estimator::linear) state[1] = sums.xi_sq > 0.0 ? sums.dot / std::sqrt(sums.xi_sq) : 0.0;
}

}  // namespace

void local_state(const EstimatorSpec& spec, std::span<const float> params,
                 std::span<const float> w0, std::span<const float> xi,
                 const SketchHashes* hashes, std::span<double> state) {
  check_state_args(spec, params.size(), w0.size(), xi.size(), hashes, state);
  std::fill(state.begin(), state.end(), 0.0);
  StateSums sums;
  accumulate_state(spec, params, w0, spec.kind == Estimator::linear ? xi : std::span<const float>(), hashes, 0,
                   sums, state);
  finish_state(spec, sums, state);
}

void local_state_16bit(const EstimatorSpec& spec, std::span<const std::uint16_t> params,
                       std::span<const std::uint16_t> w0, bool bf16, std::span<const float> xi,
                       const SketchHashes* hashes, std::span<double> state) {
  const std::size_t d = params.size();
  check_state_args(spec, d, w0.size(), xi.size(), hashes, state);
  std::fill(state.begin(), state.end(), 0.0);
  StateSums sums;
  // Decoding is exact, and every sum takes its terms in the order of the one-pass float kernel
  // (ranges in ascending order), so the state is bitwise local_state on the decoded vectors.
  const std::size_t chunk = std::min(kStateChunk, d);
  std::vector<float> p(chunk), w(chunk);  // the only fp32 copies: 2 * kStateChunk values
  for (std::size_t first = 0; first < d; first += chunk) {
    const std::size_t n = std::min(chunk, d - first);
    tensor::decode_16bit(params.subspan(first, n), std::span<float>(p.data(), n), bf16);
    tensor::decode_16bit(w0.subspan(first, n), std::span<float>(w.data(), n), bf16);
    accumulate_state(spec, std::span<const float>(p.data(), n), std::span<const float>(w.data(), n),
                     spec.kind == Estimator::linear ? xi.subspan(first, n) : std::span<const float>(), hashes,
                     first, sums, state);
  }
  finish_state(spec, sums, state);
}

double variance_estimate(const EstimatorSpec& spec, std::span<const double> state_sum,
                         int world_size) {
  validate(spec);
  if (world_size < 1) fail("FDA: world size {} is below 1", world_size);
  if (state_sum.size() != state_size(spec))
    fail("FDA: summed state has {} entries, the {} estimator needs {}", state_sum.size(),
         estimator_name(spec.kind), state_size(spec));
  if (!std::isfinite(state_sum[0])) return std::numeric_limits<double>::infinity();
  const double k = world_size;
  double v = state_sum[0] / k;
  if (spec.kind == Estimator::linear) {
    const double proj = state_sum[1] / k;
    v -= proj * proj;
  } else if (spec.kind == Estimator::sketch) {
    // M is quadratic and the median commutes with positive scaling, so M(sum / K) = M(sum) / K^2
    // (equal up to rounding) without copying the sketch.
    const double m = sketch_norm_estimate(state_sum.subspan(1), spec.sketch_depth, spec.sketch_width);
    v -= m / (k * k) / (1.0 + sketch_eps(spec));
  }
  if (!std::isfinite(v)) return std::numeric_limits<double>::infinity();
  return v < 0.0 ? 0.0 : v;
}

void shared_gaussian_unit(std::uint64_t seed, std::span<float> xi) {
  const std::uint64_t key = stream_key({seed, kXiTag});
  double sq = 0.0;
  for (std::size_t i = 0; i < xi.size(); ++i) {
    xi[i] = normal01(key, i);
    sq += static_cast<double>(xi[i]) * xi[i];
  }
  if (xi.empty()) return;
  if (!(sq > 0.0)) {  // all draws exactly 0: impossible in practice, but never divide by it
    std::fill(xi.begin(), xi.end(), 0.0f);
    xi[0] = 1.0f;
    return;
  }
  const double inv = 1.0 / std::sqrt(sq);
  for (float& x : xi) x = static_cast<float>(x * inv);
}

std::vector<float> shared_gaussian_unit(std::size_t num_params, std::uint64_t seed) {
  std::vector<float> xi(num_params);
  shared_gaussian_unit(seed, xi);
  return xi;
}

namespace {

// xi from w0 and w0_prev read through accessors (float spans, or 16-bit patterns decoded exactly):
// the same fp64 operations on the same values, so both storages give the same bits.
template <class W0, class W0Prev>
bool last_move_direction_impl(W0 w0, W0Prev w0_prev, std::size_t n, std::uint64_t seed, std::span<float> xi) {
  if (xi.size() != n) fail("FDA: xi from w0 ({}) into xi ({}): sizes differ", n, xi.size());
  double sq = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(w0(i)) - static_cast<double>(w0_prev(i));
    sq += v * v;
  }
  if (!(sq > 0.0) || !std::isfinite(sq)) {
    shared_gaussian_unit(seed, xi);
    return false;
  }
  const double inv = 1.0 / std::sqrt(sq);
  for (std::size_t i = 0; i < n; ++i)
    xi[i] = static_cast<float>((static_cast<double>(w0(i)) - static_cast<double>(w0_prev(i))) * inv);
  return true;
}

}  // namespace

bool last_move_direction(std::span<const float> w0, std::span<const float> w0_prev,
                         std::uint64_t seed, std::span<float> xi) {
  if (w0_prev.size() != w0.size() || xi.size() != w0.size())
    fail("FDA: xi from w0 ({}), w0_prev ({}) into xi ({}): sizes differ", w0.size(),
         w0_prev.size(), xi.size());
  return last_move_direction_impl([&](std::size_t i) { return w0[i]; }, [&](std::size_t i) { return w0_prev[i]; },
                                  w0.size(), seed, xi);
}

bool last_move_direction_16bit(std::span<const std::uint16_t> w0, std::span<const std::uint16_t> w0_prev,
                               bool bf16, std::uint64_t seed, std::span<float> xi) {
  if (w0_prev.size() != w0.size() || xi.size() != w0.size())
    fail("FDA: xi from w0 ({}), w0_prev ({}) into xi ({}): sizes differ", w0.size(),
         w0_prev.size(), xi.size());
  return last_move_direction_impl([&](std::size_t i) { return tensor::decode_16bit(w0[i], bf16); },
                                  [&](std::size_t i) { return tensor::decode_16bit(w0_prev[i], bf16); }, w0.size(), seed,
                                  xi);
}

}  // namespace lowsync::sync::fda
