// Per-tensor scaled FP8 quantizer, fake quantization, straight-through backward and the
// ServerOptimize scale search (ALGORITHMS.md section 1). The span kernels are Kokkos loops over
// the branchless codecs of include/lowsync/tensor/fp8.hpp (one instantiation per format, so the
// format's constants fold and the loops vectorise); the 16-candidate scale search runs the
// candidates as the lanes of one vector, one pass over the tensor (ALGORITHMS.md §1 "Cost").
#include "lowsync/tensor/fp8.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

namespace lowsync::tensor {
namespace {

using SerialRange = Kokkos::RangePolicy<Kokkos::Serial, Kokkos::IndexType<std::int64_t>>;

SerialRange range(std::size_t n) { return SerialRange(0, static_cast<std::int64_t>(n)); }

void check_sizes(std::string_view what, std::size_t in, std::size_t out) {
  if (in != out) fail("{}: input has {} elements but output has {}", what, in, out);
}

void check_scale(std::string_view what, float scale) {
  if (!(std::isfinite(scale) && scale > 0.0f))
    fail("{}: scale must be finite and > 0, got {}", what, scale);
}

[[noreturn]] void fail_non_finite(std::string_view what, std::span<const float> x,
                                  Fp8Format format) {
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]))
      fail("{}: non-finite input x[{}] = {} cannot be quantized to {}", what, i, x[i],
           fp8_name(format));
  fail("{}: non-finite input reported but not found", what);
}

// y = clamp(x / s, -Fmax, Fmax). The clamp matters when x / s overflows to inf for a finite x
// (tiny explicit scale): the encoder would map inf to NaN in E4M3. Non-finite x passes through.
// On the bit patterns: for finite x and a finite scale > 0, y is never NaN, so min(|y|, Fmax)
// as integers with y's sign is fmin(fmax(y, -Fmax), Fmax), -0.0 included. Float compares or
// fminf here keep loops from vectorising (libm calls, or branches GCC will not if-convert).
KOKKOS_INLINE_FUNCTION float scaled_clamped(float x, float scale, float max_value) {
  const auto y_bits = std::bit_cast<std::uint32_t>(x / scale);
  const std::uint32_t y_abs = y_bits & 0x7fffffffu, max_bits = std::bit_cast<std::uint32_t>(max_value);
  const std::uint32_t clamped = (y_abs < max_bits ? y_abs : max_bits) | (y_bits & 0x80000000u);
  const std::uint32_t finite = 0u - static_cast<std::uint32_t>((std::bit_cast<std::uint32_t>(x) & 0x7fffffffu) < 0x7f800000u);
  return std::bit_cast<float>((clamped & finite) | (y_bits & ~finite));
}

// Runs body.template operator()<F>() with F the run-time format as a template argument.
template <class Body>
decltype(auto) with_format(Fp8Format format, Body&& body) {
  if (format == Fp8Format::e4m3) return body.template operator()<Fp8Format::e4m3>();
  return body.template operator()<Fp8Format::e5m2>();
}

// decoded[c] * scale for every code: dequantizing is then one table load per element.
std::array<float, 256> dequant_table(Fp8Format format, float scale) {
  std::array<float, 256> table{};
  for (int c = 0; c < 256; ++c) table[c] = fp8_decode(static_cast<std::uint8_t>(c), format) * scale;
  return table;
}

}  // namespace

float fp8_scale_from_amax(float amax, Fp8Format format) {
  if (!(std::isfinite(amax) && amax >= 0.0f))
    fail("fp8_scale_from_amax: amax must be finite and >= 0, got {}", amax);
  if (amax == 0.0f) return 1.0f;
  return std::fmax(amax / fp8_max(format), FLT_MIN);
}

float amax_abs_or_inf(std::span<const float> x) {
  // On the bit patterns: |x| as an unsigned integer orders like the float for every finite
  // value and puts inf and NaN (>= 0x7f800000) above them all; an integer max reduction
  // vectorises where a float one (NaN semantics) does not.
  const float* in = x.data();
  std::uint32_t lanes[16] = {};
  const std::size_t n = x.size(), body = n - n % 16;
  for (std::size_t i = 0; i < body; i += 16)
    for (std::size_t l = 0; l < 16; ++l) {
      const std::uint32_t a = std::bit_cast<std::uint32_t>(in[i + l]) & 0x7fffffffu;
      lanes[l] = a > lanes[l] ? a : lanes[l];
    }
  std::uint32_t amax = 0;
  for (std::size_t i = body; i < n; ++i) {
    const std::uint32_t a = std::bit_cast<std::uint32_t>(in[i]) & 0x7fffffffu;
    amax = a > amax ? a : amax;
  }
  for (std::uint32_t l : lanes) amax = l > amax ? l : amax;
  return amax >= 0x7f800000u ? std::numeric_limits<float>::infinity() : std::bit_cast<float>(amax);
}

float amax_abs(std::span<const float> x, std::string_view what) {
  const float amax = amax_abs_or_inf(x);
  if (!(amax <= FLT_MAX)) {
    for (std::size_t i = 0; i < x.size(); ++i)
      if (!std::isfinite(x[i])) fail("{}: non-finite input x[{}] = {}", what, i, x[i]);
  }
  return amax;
}

float fp8_scale(std::span<const float> x, Fp8Format format) {
  return fp8_scale_from_amax(amax_abs(x, "fp8_scale"), format);
}

namespace {

// Plain loops over the branchless codecs, restrict-qualified so the compiler needs no overlap
// check: each vectorises (checked with -fopt-info-vec; AVX-512 and AVX2 both have the per-lane
// shifts and selects they use).
template <Fp8Format F>
void encode_rne_loop(const float* __restrict in, std::uint8_t* __restrict out, std::size_t n, float scale) {
  const float max_value = fp8_max(F);
  for (std::size_t i = 0; i < n; ++i) out[i] = detail::fp8_encode_rne_lanes<F>(scaled_clamped(in[i], scale, max_value));
}

// lowsync::uniform01 with the 24-bit integer converted as int32: the same float (every value
// below 2^24 is exact either way), but the u64 -> float conversion GCC emits has a branch.
KOKKOS_INLINE_FUNCTION float uniform01_lanes(std::uint64_t key, std::uint64_t i) {
  return static_cast<float>(static_cast<std::int32_t>(random_bits(key, i) >> 40)) * (1.0f / 16777216.0f);
}

template <Fp8Format F>
void encode_sr_loop(const float* __restrict in, std::uint8_t* __restrict out, std::size_t n, float scale,
                    std::uint64_t rng_key) {
  const float max_value = fp8_max(F);
  for (std::size_t i = 0; i < n; ++i)
    out[i] = detail::fp8_encode_sr_lanes<F>(scaled_clamped(in[i], scale, max_value),
                                            uniform01_lanes(rng_key, static_cast<std::uint64_t>(i)));
}

void table_loop(const std::uint8_t* __restrict in, float* __restrict out, std::size_t n, const float* __restrict table) {
  for (std::size_t i = 0; i < n; ++i) out[i] = table[in[i]];
}

// x known finite, sizes and scale checked.
void encode_with_scale(std::span<const float> x, std::span<std::uint8_t> q, Fp8Format format, Rounding rounding,
                       std::uint64_t rng_key, float scale) {
  with_format(format, [&]<Fp8Format F>() {
    if (rounding == Rounding::stochastic)
      encode_sr_loop<F>(x.data(), q.data(), x.size(), scale, rng_key);
    else
      encode_rne_loop<F>(x.data(), q.data(), x.size(), scale);
  });
}

}  // namespace

float quantize(std::span<const float> x, std::span<std::uint8_t> q, Fp8Format format,
               Rounding rounding, std::uint64_t rng_key) {
  check_sizes("quantize", x.size(), q.size());
  const float scale = fp8_scale_from_amax(amax_abs(x, "quantize"), format);  // refuses non-finite x
  encode_with_scale(x, q, format, rounding, rng_key, scale);
  return scale;
}

void quantize_with_scale(std::span<const float> x, std::span<std::uint8_t> q, Fp8Format format,
                         Rounding rounding, std::uint64_t rng_key, float scale) {
  check_sizes("quantize_with_scale", x.size(), q.size());
  check_scale("quantize_with_scale", scale);
  // Finiteness first (one vectorised pass), so the encoding loops carry no exit branch.
  if (!(amax_abs_or_inf(x) <= FLT_MAX)) fail_non_finite("quantize", x, format);
  encode_with_scale(x, q, format, rounding, rng_key, scale);
}

void dequantize(std::span<const std::uint8_t> q, float scale, Fp8Format format,
                std::span<float> out) {
  check_sizes("dequantize", q.size(), out.size());
  check_scale("dequantize", scale);
  const std::array<float, 256> table = dequant_table(format, scale);
  table_loop(q.data(), out.data(), q.size(), table.data());
}

void fake_quantize(std::span<const float> x, std::span<float> out, Fp8Format format,
                   float scale) {
  check_sizes("fake_quantize", x.size(), out.size());
  check_scale("fake_quantize", scale);
  const std::array<float, 256> table = dequant_table(format, scale);
  // Through a small code buffer, so that out may alias x and both loops still vectorise.
  constexpr std::size_t kBlock = 1024;
  std::uint8_t codes[kBlock];
  with_format(format, [&]<Fp8Format F>() {
    for (std::size_t first = 0; first < x.size(); first += kBlock) {
      const std::size_t n = std::min(kBlock, x.size() - first);
      encode_rne_loop<F>(x.data() + first, codes, n, scale);
      table_loop(codes, out.data() + first, n, table.data());
    }
  });
}

void ste_backward(std::span<const float> x, float scale, Fp8Format format,
                  std::span<float> grad) {
  check_sizes("ste_backward", x.size(), grad.size());
  check_scale("ste_backward", scale);
  const float* __restrict in = x.data();
  float* __restrict g = grad.data();
  const float max_value = fp8_max(format);
  // Same y = x / s as the forward, so the clamped set matches it element for element.
  for (std::size_t i = 0; i < x.size(); ++i) g[i] = std::fabs(in[i] / scale) > max_value ? 0.0f : g[i];
}

// The scalar reference of quantize_sq_errors (one candidate, the constexpr codec per element).
double quantize_sq_error(std::span<const float> w, Fp8Format format, float scale) {
  check_scale("quantize_sq_error", scale);
  const std::array<float, 256> table = dequant_table(format, scale);
  const float* in = w.data();
  const float max_value = fp8_max(format);
  double error = 0.0;
  Kokkos::parallel_reduce(
      "lowsync::quantize_sq_error", range(w.size()),
      KOKKOS_LAMBDA(const std::int64_t i, double& acc) {
        const float w_hat = table[fp8_encode_rne(scaled_clamped(in[i], scale, max_value), format)];
        const double d = static_cast<double>(w_hat) - static_cast<double>(in[i]);
        acc += d * d;
      },
      error);
  return error;
}

float best_scale_candidate(float s0, int j) {
  // 2^(-j/4) in double, one rounding to float: the same candidates on every rank and build.
  const double s = static_cast<double>(s0) * std::exp2(-0.25 * j);
  return std::fmax(static_cast<float>(s), FLT_MIN);
}

std::array<float, kBestScaleCandidates> best_scale_candidates(float s0) {
  std::array<float, kBestScaleCandidates> out{};
  for (int j = 0; j < kBestScaleCandidates; ++j) out[static_cast<std::size_t>(j)] = best_scale_candidate(s0, j);
  return out;
}

int best_scale_index(std::span<const double, kBestScaleCandidates> errors) {
  int best = 0;
  for (int j = 1; j < kBestScaleCandidates; ++j)
    if (errors[static_cast<std::size_t>(j)] < errors[static_cast<std::size_t>(best)]) best = j;  // strict: ties keep the smaller j
  return best;
}

namespace {

// GCC vector extensions, whatever SIMD width the target has (the compiler splits or fuses).
// (Spelled out per width: GCC 12 drops vector_size with a size that depends on a template
// parameter.)
template <int N>
struct Lanes;
template <>
struct Lanes<4> {
  using F32 = float __attribute__((vector_size(16)));
  using I32 = std::int32_t __attribute__((vector_size(16)));
  using U32 = std::uint32_t __attribute__((vector_size(16)));
  using F64 = double __attribute__((vector_size(32)));
};
template <>
struct Lanes<8> {
  using F32 = float __attribute__((vector_size(32)));
  using I32 = std::int32_t __attribute__((vector_size(32)));
  using U32 = std::uint32_t __attribute__((vector_size(32)));
  using F64 = double __attribute__((vector_size(64)));
};
using F32x4 = Lanes<4>::F32;
using U32x4 = Lanes<4>::U32;
using I32x4 = Lanes<4>::I32;
using F64x4 = Lanes<4>::F64;
using F32x8 = Lanes<8>::F32;
using F64x8 = Lanes<8>::F64;
static_assert(kBestScaleCandidates == 16, "the candidates fill two 8-lane vectors");

// For N candidates (lane j: y_j = x / s_j, already divided): w_hat = fp8 grid value of
// clamp(y_j) (nearest-even) times s_j; returns (w_hat - x)^2 in double. The rounding works on the
// float itself: in the FP8 normal range by the add-half-and-mask rule on the bit pattern (a
// carry moves into the exponent, which is right), below 2^emin by counting units of
// 2^(emin - M) with an integer shift; the result equals fp8_decode(fp8_encode_rne(y)) exactly,
// and w_hat = q * s_j rounds once as the scalar table does.
template <Fp8Format F, int N>
inline typename Lanes<N>::F64 sq_error_lanes(typename Lanes<N>::F32 y, typename Lanes<N>::F32 s, double x) {
  using F32 = typename Lanes<N>::F32;
  using I32 = typename Lanes<N>::I32;
  using U32 = typename Lanes<N>::U32;
  using F64 = typename Lanes<N>::F64;
  using L = detail::Fp8Lanes<F>;
  constexpr int M = L::spec.mantissa_bits, drop = L::kDrop;
  constexpr float kSubSpacing = std::bit_cast<float>(static_cast<std::uint32_t>(L::spec.min_exponent - M + 127) << 23);
  const F32 fmax = F32{} + L::spec.max_value;
  const U32 one = U32{} + 1u;
  y = y > fmax ? fmax : y;
  y = y < -fmax ? -fmax : y;
  const auto bits = std::bit_cast<U32>(y);
  const U32 sign = bits & 0x80000000u;
  const U32 a = bits & 0x7fffffffu;
  const I32 exponent = std::bit_cast<I32>(a >> 23u) - 127;
  // Normal range: round the float to M mantissa bits, ties to even.
  const U32 rounded = (a + ((1u << (drop - 1)) - 1u) + ((a >> static_cast<unsigned>(drop)) & 1u)) & ~((1u << drop) - 1u);
  // Subnormal range: units of 2^(emin - M), nearest-even, from the mantissa with its implicit bit.
  I32 shift_i = L::kSubShift0 - exponent;
  shift_i = shift_i > 25 ? I32{} + 25 : shift_i;
  shift_i = shift_i < 1 ? I32{} + 1 : shift_i;
  const auto shift = std::bit_cast<U32>(shift_i);
  const U32 m = (a & 0x7fffffu) | 0x800000u;
  U32 units = m >> shift;
  const U32 rest = m & ((one << shift) - 1u), half = one << (shift - 1u);
  units += rest + (units & 1u) > half ? one : U32{};  // ties to even
  const F32 sub = __builtin_convertvector(std::bit_cast<I32>(units), F32) * kSubSpacing;
  const F32 q_abs = exponent >= L::spec.min_exponent ? std::bit_cast<F32>(rounded) : sub;
  const F32 w_hat = std::bit_cast<F32>(std::bit_cast<U32>(q_abs) | sign) * s;
  const F64 d = __builtin_convertvector(w_hat, F64) - x;
  return d * d;
}

// sq_error_lanes for lanes known to be in the FP8 normal range (|y| >= 2^emin, clamped to
// Fmax, which is on the grid) or to round to zero (|y| <= half the smallest step, kZeroMax):
// nearest-even on the float's mantissa, no clamp or subnormal work.
template <Fp8Format F, int N>
inline typename Lanes<N>::F64 normal_or_zero_lanes(typename Lanes<N>::F32 y, typename Lanes<N>::F32 s, double x) {
  using U32 = typename Lanes<N>::U32;
  using L = detail::Fp8Lanes<F>;
  constexpr std::uint32_t drop = L::kDrop;
  constexpr std::uint32_t kNormalMin = static_cast<std::uint32_t>(L::spec.min_exponent + 127) << 23;
  const auto bits = std::bit_cast<U32>(y);
  const U32 a = bits & 0x7fffffffu;
  const U32 rounded = (a + ((1u << (drop - 1)) - 1u) + ((a >> drop) & 1u)) & ~((1u << drop) - 1u);
  const U32 q_abs = a >= kNormalMin ? rounded : U32{};
  const auto w_hat = std::bit_cast<typename Lanes<N>::F32>(q_abs | (bits & 0x80000000u)) * s;
  const typename Lanes<N>::F64 d = __builtin_convertvector(w_hat, typename Lanes<N>::F64) - x;
  return d * d;
}

// The 16 candidates are the lanes of two 8-lane sums; each lane adds its terms over the elements
// in order, so errors[j] has the bits of the scalar quantize_sq_error.
//
// best_scale's candidates halve every 4 steps (s_{j+4} = s_j / 2 exactly, checked: "halving"),
// which saves most of the work. Then x / s_{j+4k} = 2^k (x / s_j) exactly, and where
// 2^emin <= |x / s_j| and 8 |x / s_j| <= Fmax (the FP8 normal range for every k = 0..3, no clamp)
// rounding to the grid commutes with the factor 2^k, so w_hat_{j+4k} = (2^k q) (2^-k s_j) is the
// same real product as q s_j: the 16 terms are the 4 terms of j = 0..3 repeated, computed once on
// 4 lanes. The same holds where 8 |x / s_j| <= half the smallest FP8 step (every k rounds to a
// zero of x's sign). An element with a lane in neither range (about 1 in 40 for Gaussian
// weights: the ends of the clamp, the FP8 subnormals) takes the 16-lane path.
template <Fp8Format F>
void sq_errors_lanes(const float* w, std::size_t n, const float* scales, double* errors) {
  using L = detail::Fp8Lanes<F>;
  F32x8 s_lo, s_hi;
  std::memcpy(&s_lo, scales, sizeof s_lo);
  std::memcpy(&s_hi, scales + 8, sizeof s_hi);
  F64x8 acc_lo = F64x8{}, acc_hi = F64x8{};
  bool halving = true;
  // A normal half is exact (a subnormal scale could be a rounded half).
  for (int j = 0; j + 4 < kBestScaleCandidates; ++j)
    halving = halving && scales[j + 4] == scales[j] * 0.5f && scales[j + 4] >= FLT_MIN;
  if (!halving) {
    for (std::size_t i = 0; i < n; ++i) {
      const float x = w[i];
      acc_lo += sq_error_lanes<F, 8>(x / s_lo, s_lo, static_cast<double>(x));
      acc_hi += sq_error_lanes<F, 8>(x / s_hi, s_hi, static_cast<double>(x));
    }
  } else {
    constexpr std::uint32_t kNormalMin = static_cast<std::uint32_t>(L::spec.min_exponent + 127) << 23;
    constexpr std::uint32_t kNormalMax = std::bit_cast<std::uint32_t>(L::spec.max_value * 0.125f);
    constexpr std::uint32_t kZeroMax = static_cast<std::uint32_t>(L::spec.min_exponent - L::spec.mantissa_bits - 1 - 3 + 127) << 23;
    F32x4 s4;
    std::memcpy(&s4, scales, sizeof s4);
    const F32x8 k_lo = {1.0f, 1.0f, 1.0f, 1.0f, 2.0f, 2.0f, 2.0f, 2.0f};
    const F32x8 k_hi = {4.0f, 4.0f, 4.0f, 4.0f, 8.0f, 8.0f, 8.0f, 8.0f};
    const auto all_lanes = [](I32x4 m) {
      const I32x4 pairs = m & __builtin_shufflevector(m, m, 2, 3, 0, 1);
      return (pairs & __builtin_shufflevector(pairs, pairs, 1, 0, 3, 2))[0] != 0;
    };
    const F32x8 fmax = F32x8{} + L::spec.max_value;
    for (std::size_t i = 0; i < n; ++i) {
      const float x = w[i];
      const F32x4 y4 = x / s4;
      const U32x4 a = std::bit_cast<U32x4>(y4) & 0x7fffffffu;
      const I32x4 zero = a <= kZeroMax;
      if (all_lanes((a >= kNormalMin && a <= kNormalMax) || zero)) {
        // The 4 terms repeat for k = 0..3.
        const F64x4 t = normal_or_zero_lanes<F, 4>(y4, s4, static_cast<double>(x));
        const F64x8 t8 = __builtin_shufflevector(t, t, 0, 1, 2, 3, 0, 1, 2, 3);
        acc_lo += t8;
        acc_hi += t8;
      } else {
        const F32x8 y8 = __builtin_shufflevector(y4, y4, 0, 1, 2, 3, 0, 1, 2, 3);
        F32x8 y_lo = y8 * k_lo, y_hi = y8 * k_hi;
        if (all_lanes(a >= kNormalMin || zero)) {
          // No lane in the FP8 subnormal range for any k: clamp, then the normal rounding.
          y_lo = y_lo > fmax ? fmax : y_lo;
          y_lo = y_lo < -fmax ? -fmax : y_lo;
          y_hi = y_hi > fmax ? fmax : y_hi;
          y_hi = y_hi < -fmax ? -fmax : y_hi;
          acc_lo += normal_or_zero_lanes<F, 8>(y_lo, s_lo, static_cast<double>(x));
          acc_hi += normal_or_zero_lanes<F, 8>(y_hi, s_hi, static_cast<double>(x));
        } else {
          acc_lo += sq_error_lanes<F, 8>(y_lo, s_lo, static_cast<double>(x));
          acc_hi += sq_error_lanes<F, 8>(y_hi, s_hi, static_cast<double>(x));
        }
      }
    }
  }
  std::memcpy(errors, &acc_lo, sizeof acc_lo);
  std::memcpy(errors + 8, &acc_hi, sizeof acc_hi);
}

}  // namespace

void quantize_sq_errors(std::span<const float> w, Fp8Format format,
                        std::span<const float, kBestScaleCandidates> scales,
                        std::span<double, kBestScaleCandidates> errors) {
  for (float s : scales) check_scale("quantize_sq_errors", s);
  with_format(format, [&]<Fp8Format F>() { sq_errors_lanes<F>(w.data(), w.size(), scales.data(), errors.data()); });
}

float best_scale(std::span<const float> w, Fp8Format format) {
  const float amax = amax_abs(w, "best_scale");
  if (amax == 0.0f) return 1.0f;
  const auto candidates = best_scale_candidates(fp8_scale_from_amax(amax, format));
  std::array<double, kBestScaleCandidates> errors{};
  quantize_sq_errors(w, format, candidates, errors);
  return candidates[static_cast<std::size_t>(best_scale_index(errors))];
}

}  // namespace lowsync::tensor
