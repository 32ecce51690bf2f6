// OCP FP8 codecs (E4M3, E5M2) and the per-tensor scaled quantizer of ALGORITHMS.md section 1:
// scale s = amax/Fmax, y = clamp(x/s), q = round_F(y) (nearest-even or stochastic), x^ = q*s;
// fake quantization with its straight-through backward; the ServerOptimize scale search.
// Scalar codecs are header-only (kernels inline them); span kernels live in src/tensor/fp8.cpp.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <span>
#include <string_view>

#include "lowsync/core/dtype.hpp"

namespace lowsync::tensor {

enum class Fp8Format : std::uint8_t { e4m3, e5m2 };

enum class Rounding : std::uint8_t { nearest_even, stochastic };

// Layout of one format. Codes are sign | exponent field | mantissa field.
struct Fp8Spec {
  int mantissa_bits;        // M
  int bias;
  int min_exponent;         // of the smallest normal, 1 - bias; subnormal spacing 2^(emin - M)
  std::uint8_t max_code;    // magnitude code of Fmax
  std::uint8_t nan_code;    // magnitude code of the (canonical) NaN
  float max_value;          // Fmax
  bool has_inf;
};

constexpr Fp8Spec fp8_spec(Fp8Format format) {
  if (format == Fp8Format::e4m3) return {3, 7, -6, 0x7e, 0x7f, 448.0f, false};
  return {2, 15, -14, 0x7b, 0x7e, 57344.0f, true};
}

constexpr float fp8_max(Fp8Format format) { return fp8_spec(format).max_value; }

constexpr DType fp8_dtype(Fp8Format format) {
  return format == Fp8Format::e4m3 ? DType::fp8_e4m3 : DType::fp8_e5m2;
}

constexpr std::string_view fp8_name(Fp8Format format) { return dtype_name(fp8_dtype(format)); }

// Code -> float, exact. E4M3: S.1111.111 is NaN, no infinities. E5M2: exponent 11111 is inf
// (mantissa 0) or NaN. NaNs decode to a quiet float NaN with the code's sign.
constexpr float fp8_decode(std::uint8_t code, Fp8Format format) {
  const Fp8Spec spec = fp8_spec(format);
  const std::uint32_t sign = static_cast<std::uint32_t>(code & 0x80u) << 24;
  const std::uint32_t magnitude = code & 0x7fu;
  const std::uint32_t exponent = magnitude >> spec.mantissa_bits;
  const std::uint32_t mantissa = magnitude & ((1u << spec.mantissa_bits) - 1u);
  if (magnitude > spec.max_code) {  // above Fmax there are only NaN (and E5M2's inf)
    if (spec.has_inf && mantissa == 0) return std::bit_cast<float>(sign | 0x7f800000u);
    return std::bit_cast<float>(sign | 0x7fc00000u);
  }
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^(emin - M)
    const float spacing = std::bit_cast<float>(
        static_cast<std::uint32_t>(spec.min_exponent - spec.mantissa_bits + 127) << 23);
    const float value = static_cast<float>(mantissa) * spacing;
    return sign ? -value : value;
  }
  const std::uint32_t float_exponent = exponent - static_cast<std::uint32_t>(spec.bias) + 127u;
  return std::bit_cast<float>(sign | (float_exponent << 23) |
                              (mantissa << (23 - spec.mantissa_bits)));
}

constexpr bool fp8_is_nan(std::uint8_t code, Fp8Format format) {
  const Fp8Spec spec = fp8_spec(format);
  const std::uint32_t magnitude = code & 0x7fu;
  return magnitude > spec.max_code && !(spec.has_inf && (magnitude & 0x3u) == 0);
}

namespace detail {

// |x| on the FP8 grid, truncated toward zero, for finite 0 <= |x| < Fmax given as float bits.
// `rest` and `half` describe the dropped bits so a caller can round to nearest-even.
struct Fp8Truncated {
  std::uint32_t code;
  std::uint32_t rest;
  std::uint32_t half;
};

constexpr Fp8Truncated fp8_truncate(std::uint32_t abs_bits, const Fp8Spec& spec) {
  const int exponent = static_cast<int>(abs_bits >> 23) - 127;
  const std::uint32_t float_mantissa = abs_bits & 0x7fffffu;
  if (exponent >= spec.min_exponent) {  // FP8 normal: same exponent, fewer mantissa bits
    const int drop = 23 - spec.mantissa_bits;
    const std::uint32_t code =
        (static_cast<std::uint32_t>(exponent + spec.bias) << spec.mantissa_bits) |
        (float_mantissa >> drop);
    return {code, abs_bits & ((1u << drop) - 1u), 1u << (drop - 1)};
  }
  // FP8 subnormal: count units of 2^(emin - M); |x| = m * 2^(exponent - 23), implicit bit in m.
  const int shift = 23 + spec.min_exponent - spec.mantissa_bits - exponent;
  if (shift > 24) return {0, 1, 2};  // below half the smallest subnormal (float subnormals too)
  const std::uint32_t m = float_mantissa | 0x800000u;
  return {m >> shift, m & ((1u << shift) - 1u), 1u << (shift - 1)};
}

}  // namespace detail

// float -> code, round-to-nearest-even on the FP8 grid. Finite |x| >= Fmax saturates to +-Fmax
// (never NaN); NaN -> NaN; inf -> inf in E5M2, NaN in E4M3 (it has no inf, and an overflow
// must not pass as a finite value). Signed zero keeps its sign.
constexpr std::uint8_t fp8_encode_rne(float x, Fp8Format format) {
  const Fp8Spec spec = fp8_spec(format);
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t sign = (bits >> 24) & 0x80u;
  const std::uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return static_cast<std::uint8_t>(sign | spec.nan_code);
  if (abs_bits == 0x7f800000u)
    return static_cast<std::uint8_t>(sign | (spec.has_inf ? 0x7cu : spec.nan_code));
  if (abs_bits >= std::bit_cast<std::uint32_t>(spec.max_value))
    return static_cast<std::uint8_t>(sign | spec.max_code);
  detail::Fp8Truncated t = detail::fp8_truncate(abs_bits, spec);
  // A carry out of the mantissa field moves into the exponent field: the next binade, or the
  // smallest normal from the top subnormal. It cannot pass max_code because |x| < Fmax.
  if (t.rest > t.half || (t.rest == t.half && (t.code & 1u))) ++t.code;
  return static_cast<std::uint8_t>(sign | t.code);
}

// Stochastic rounding (ALGORITHMS.md section 1): lo = |y| truncated toward zero, hi = the next
// code away from zero, D = hi - lo; returns hi with probability (|y| - lo) / D, that is when
// uniform01 < (|y| - lo) / D, so E[result] = y for |y| <= Fmax. |y| >= Fmax gives Fmax (never
// past it). NaN and inf as in fp8_encode_rne.
constexpr std::uint8_t fp8_encode_sr(float y, Fp8Format format, float uniform01) {
  const Fp8Spec spec = fp8_spec(format);
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(y);
  const std::uint32_t sign = (bits >> 24) & 0x80u;
  const std::uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits >= 0x7f800000u) return fp8_encode_rne(y, format);
  if (abs_bits >= std::bit_cast<std::uint32_t>(spec.max_value))
    return static_cast<std::uint8_t>(sign | spec.max_code);
  const std::uint32_t lo = detail::fp8_truncate(abs_bits, spec).code;
  const float lo_value = fp8_decode(static_cast<std::uint8_t>(lo), format);
  const float spacing = fp8_decode(static_cast<std::uint8_t>(lo + 1), format) - lo_value;
  // Both differences are exact: |y| and lo share a binade (or lo is 0), and spacing is 2^k.
  const float p_hi = (std::bit_cast<float>(abs_bits) - lo_value) / spacing;
  return static_cast<std::uint8_t>(sign | (uniform01 < p_hi ? lo + 1 : lo));
}

namespace detail {

// Branchless forms of fp8_encode_rne / fp8_encode_sr for the span kernels: no data-dependent
// branch or library call, so loops over them vectorise (variable per-lane shifts and selects).
// Bit-exact with the scalar codecs above for every float (tests/unit/tensor/test_fp8.cpp sweeps
// the float patterns); the scalar codecs stay the readable reference.
//
// Truncation toward zero on the grid, per lane, for finite |x| < Fmax given as abs_bits: the FP8
// normal range keeps the float's exponent and drops 23 - M mantissa bits (the code is the
// shifted pattern minus the exponent rebias); below 2^emin the value is counted in units of
// 2^(emin - M) from the mantissa with its implicit bit, the shift capped at 25 (a shift > 24
// leaves code 0 with rest < half, as fp8_truncate's early return does).
template <Fp8Format F>
struct Fp8Lanes {
  static constexpr Fp8Spec spec = fp8_spec(F);
  static constexpr int kDrop = 23 - spec.mantissa_bits;
  static constexpr std::uint32_t kRebias = static_cast<std::uint32_t>(127 - spec.bias) << spec.mantissa_bits;
  static constexpr std::uint32_t kMaxBits = std::bit_cast<std::uint32_t>(spec.max_value);
  static constexpr std::uint8_t kInfCode = spec.has_inf ? 0x7c : spec.nan_code;
  static constexpr int kSubShift0 = 23 + spec.min_exponent - spec.mantissa_bits;  // shift = this - exponent

  struct Truncated {
    std::uint32_t code, rest, half;
    bool normal;
    std::int32_t exponent;
  };
  static constexpr Truncated truncate(std::uint32_t abs_bits) {
    const std::int32_t exponent = static_cast<std::int32_t>(abs_bits >> 23) - 127;
    const bool normal = exponent >= spec.min_exponent;
    std::int32_t sub_shift = kSubShift0 - exponent;
    sub_shift = sub_shift > 25 ? 25 : sub_shift;
    sub_shift = sub_shift < 1 ? 1 : sub_shift;  // only in lanes that take the normal path
    const std::uint32_t shift = normal ? static_cast<std::uint32_t>(kDrop) : static_cast<std::uint32_t>(sub_shift);
    const std::uint32_t source = normal ? abs_bits : ((abs_bits & 0x7fffffu) | 0x800000u);
    const std::uint32_t code = (source >> shift) - (normal ? kRebias : 0u);
    return {code, source & ((1u << shift) - 1u), 1u << (shift - 1u), normal, exponent};
  }
  // Specials and saturation, as the scalar codecs order them: NaN, inf, then |x| >= Fmax.
  // Blended by bit masks, not ?:, so GCC cannot turn the rounding work into a branch taken only
  // for ordinary values (which it then refuses to vectorise: the float work might trap).
  static constexpr std::uint32_t blend(bool take, std::uint32_t value, std::uint32_t otherwise) {
    const std::uint32_t mask = 0u - static_cast<std::uint32_t>(take);
    return (value & mask) | (otherwise & ~mask);
  }
  static constexpr std::uint32_t special(std::uint32_t abs_bits, std::uint32_t code) {
    code = blend(abs_bits >= kMaxBits, spec.max_code, code);
    code = blend(abs_bits == 0x7f800000u, kInfCode, code);
    return blend(abs_bits > 0x7f800000u, spec.nan_code, code);
  }
};

template <Fp8Format F>
constexpr std::uint8_t fp8_encode_rne_lanes(float x) {
  using L = Fp8Lanes<F>;
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t abs_bits = bits & 0x7fffffffu;
  const auto t = L::truncate(abs_bits);
  // rest > half, or rest == half with an odd code (ties to even), as one comparison: a mix of
  // bool operators here keeps GCC 12 from vectorising the loops.
  const std::uint32_t up = t.rest + (t.code & 1u) > t.half ? 1u : 0u;
  return static_cast<std::uint8_t>(((bits >> 24) & 0x80u) | L::special(abs_bits, t.code + up));
}

// p_hi = (|y| - lo) / D as fp8_encode_sr computes it: both are exact, and D is a power of two
// (2^(max(e, emin) - M)), so the division is the exact product with 2^(M - max(e, emin)).
template <Fp8Format F>
constexpr std::uint8_t fp8_encode_sr_lanes(float y, float uniform01) {
  using L = Fp8Lanes<F>;
  constexpr int M = L::spec.mantissa_bits;
  constexpr float kSubSpacing = std::bit_cast<float>(
      static_cast<std::uint32_t>(L::spec.min_exponent - M + 127) << 23);
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(y);
  const std::uint32_t abs_bits = bits & 0x7fffffffu;
  const auto t = L::truncate(abs_bits);
  // Both candidates computed, then blended by a bit mask: with a ?: GCC sinks the product into
  // one arm, where a float operation may trap (-ftrapping-math), and will not vectorise.
  const std::uint32_t lo_normal = abs_bits & ~((1u << L::kDrop) - 1u);
  const auto lo_subnormal = std::bit_cast<std::uint32_t>(static_cast<float>(static_cast<std::int32_t>(t.code)) * kSubSpacing);
  const float lo_value = std::bit_cast<float>(L::blend(t.normal, lo_normal, lo_subnormal));
  const std::int32_t e = t.exponent > L::spec.min_exponent ? t.exponent : L::spec.min_exponent;
  // 127 + M - e >= 2 for every exponent field, so the reciprocal spacing is a normal float.
  const float inv_spacing = std::bit_cast<float>(static_cast<std::uint32_t>(127 + M - e) << 23);
  const float p_hi = (std::bit_cast<float>(abs_bits) - lo_value) * inv_spacing;
  const std::uint32_t up = uniform01 < p_hi ? 1u : 0u;
  return static_cast<std::uint8_t>(((bits >> 24) & 0x80u) | L::special(abs_bits, t.code + up));
}

}  // namespace detail

// Scale for a tensor whose largest |x| is amax: amax / Fmax, 1 when amax == 0, never below
// FLT_MIN (so it is finite, > 0 and normal even when amax / Fmax underflows). amax must be
// finite and >= 0, else lowsync::Error.
float fp8_scale_from_amax(float amax, Fp8Format format);

// max |x| over the span (Kokkos reduction); 0 for an empty span. Non-finite x -> lowsync::Error
// naming the first such element.
float amax_abs(std::span<const float> x, std::string_view what = "amax_abs");

// max |x| over the span, +inf when some element is NaN or inf; never throws. For callers that
// decide about non-finite input together (the sharded server search, sync/wire.cpp).
float amax_abs_or_inf(std::span<const float> x);

// fp8_scale_from_amax(amax_abs(x)): the per-tensor scale; refuses non-finite x.
float fp8_scale(std::span<const float> x, Fp8Format format);

// Per-tensor scaled quantizer: computes s from amax, writes q[i] = round_F(clamp(x[i] / s)) and
// returns s. Stochastic rounding draws lowsync::uniform01(rng_key, i) for element i; build
// rng_key = lowsync::stream_key({seed, round, rank, tensor_id}). Non-finite x -> lowsync::Error.
float quantize(std::span<const float> x, std::span<std::uint8_t> q, Fp8Format format,
               Rounding rounding, std::uint64_t rng_key);  // x [n] -> q [n]

// As quantize, with a caller-chosen scale (finite and > 0, else lowsync::Error). On error q is
// left partly written.
void quantize_with_scale(std::span<const float> x, std::span<std::uint8_t> q, Fp8Format format,
                         Rounding rounding, std::uint64_t rng_key, float scale);

// out[i] = fp8_decode(q[i]) * scale, rounded once to float.
void dequantize(std::span<const std::uint8_t> q, float scale, Fp8Format format,
                std::span<float> out);  // q [n] -> out [n]

// QAT forward: out = dequantize(quantize_with_scale(x, nearest_even, scale)); out may alias x.
// Unlike quantize, non-finite x is not refused: NaN stays NaN and inf becomes inf (E5M2) or NaN
// (E4M3), so a diverging step shows up in the loss, which all ranks check at the same point.
void fake_quantize(std::span<const float> x, std::span<float> out, Fp8Format format,
                   float scale);  // [n] -> [n]

// Straight-through estimator: grad[i] = 0 where |x[i] / scale| > Fmax (the forward clamped it),
// unchanged elsewhere. x is the forward's input, grad the incoming gradient (updated in place).
void ste_backward(std::span<const float> x, float scale, Fp8Format format,
                  std::span<float> grad);  // x [n], grad [n]

// sum_i (dequantize(quantize_det(w; scale))[i] - w[i])^2, accumulated in double.
double quantize_sq_error(std::span<const float> w, Fp8Format format, float scale);

inline constexpr int kBestScaleCandidates = 16;

// errors[j] = quantize_sq_error(w, format, scales[j]) for all 16 candidates in one pass over w:
// the candidates are the SIMD lanes, each summed over the elements in order from 0.0, so every
// errors[j] has the bits of the scalar quantize_sq_error. w must be finite (unchecked: callers
// check it once); scales finite and > 0, else lowsync::Error.
void quantize_sq_errors(std::span<const float> w, Fp8Format format,
                        std::span<const float, kBestScaleCandidates> scales,
                        std::span<double, kBestScaleCandidates> errors);

// ServerOptimize scale search: argmin over s_j = fp8_scale(w) * 2^(-j/4), j = 0..15, of
// quantize_sq_error(w, s_j); ties go to the smaller j. 1 for an all-zero w. One pass over w
// (quantize_sq_errors); chooses exactly what 16 quantize_sq_error calls would.
float best_scale(std::span<const float> w, Fp8Format format);

// ServerOptimize's scale search over a whole model (sync::ServerAverager) looks at a fixed strided
// subsample of each large tensor (ALGORITHMS.md §1 "Cost"): element i of a tensor of at least
// kScaleSearchFullBelow values takes part when i % kScaleSearchStride == 0; smaller tensors take
// part whole. The candidates still come from the whole tensor's amax.
inline constexpr std::size_t kScaleSearchStride = 8;
inline constexpr std::size_t kScaleSearchFullBelow = 4096;

// The j-th candidate of best_scale for a tensor of scale s0 (never below FLT_MIN).
float best_scale_candidate(float s0, int j);

// All candidates of a tensor of scale s0, j = 0..15.
std::array<float, kBestScaleCandidates> best_scale_candidates(float s0);

// The j of the smallest error, the first on ties (best_scale's rule).
int best_scale_index(std::span<const double, kBestScaleCandidates> errors);

}  // namespace lowsync::tensor
