// 16-bit float codecs: IEEE binary16 (fp16) and bfloat16 (bf16), stored as their raw bit
// patterns in std::uint16_t. Scalar conversions are header-only so kernels inline them; span
// conversions are Kokkos kernels in src/tensor/half.cpp. Rounding rules: ALGORITHMS.md section 3
// (round-to-nearest-even, overflow to inf, fp16 subnormals, NaN stays a quiet NaN).
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <type_traits>

namespace lowsync::tensor {

// Raw bit patterns; aliases rather than wrapper structs so buffers go to the communicator as
// plain u16 arrays (DType::bf16 / DType::f16 tell the reader which codec applies).
using Bf16Bits = std::uint16_t;
using Fp16Bits = std::uint16_t;

// float -> bf16, round-to-nearest-even; overflow rounds to inf; NaN becomes a quiet NaN with the
// sign and top payload bits kept (truncating a signalling NaN's payload could give inf).
constexpr Bf16Bits bf16_encode(float x) {
  const std::uint32_t f = std::bit_cast<std::uint32_t>(x);
  // Adding 0x7fff plus the kept LSB rounds half-way cases to the even neighbour; the carry may
  // run into the exponent, which is the correct next binade (or inf past the largest value).
  const std::uint32_t rounding_bias = 0x7fffu + ((f >> 16) & 1u);
  const std::uint32_t rounded = (f + rounding_bias) >> 16;
  const std::uint32_t quiet_nan = (f >> 16) | 0x0040u;
  // A select, not an early return, so loops over this codec vectorise.
  return static_cast<Bf16Bits>((f & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// bf16 -> float is exact: bf16 is the top half of a float.
constexpr float bf16_decode(Bf16Bits h) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

// float -> fp16, round-to-nearest-even with IEEE overflow to inf (|x| >= 65520) and gradual
// underflow (subnormals down to 2^-24); NaN becomes a quiet NaN keeping sign and top payload.
constexpr Fp16Bits fp16_encode_soft(float x) {
  const std::uint32_t f = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t sign = (f >> 16) & 0x8000u;
  const std::uint32_t a = f & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<Fp16Bits>(sign | 0x7e00u | ((a >> 13) & 0x03ffu));
  if (a >= 0x477ff000u) return static_cast<Fp16Bits>(sign | 0x7c00u);  // 65520 and up, inf
  if (a >= 0x38800000u) {  // fp16 normal range, |x| >= 2^-14
    // Rebias the exponent (127 -> 15) and drop 13 mantissa bits, rounding to nearest even; a
    // mantissa carry moves into the exponent field, which is the right result.
    std::uint32_t h = (a - 0x38000000u) >> 13;
    const std::uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<Fp16Bits>(sign | h);
  }
  if (a <= 0x33000000u) return static_cast<Fp16Bits>(sign);  // <= 2^-25: ties to even zero
  // Subnormal: |x| = m * 2^(e-150) with the implicit bit in m; units of 2^-24 are m >> (126-e).
  // A carry out of the top subnormal lands exactly on the smallest normal's pattern.
  const std::uint32_t e = a >> 23;
  const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - e;  // 14..24 here
  std::uint32_t h = m >> shift;
  const std::uint32_t rest = m & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (h & 1u))) ++h;
  return static_cast<Fp16Bits>(sign | h);
}

// fp16 -> float is exact (every fp16 value, subnormals included, is a normal float).
constexpr float fp16_decode_soft(Fp16Bits h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x03ffu;
  if (exponent == 0x1fu)  // inf or NaN: payload shifted into the float mantissa
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// The fp16 conversions used everywhere: the CPU's (F16C vcvtps2ph / vcvtph2ps, through GCC's
// _Float16) at run time when the build targets it — native fp16 storage converts every value
// of the model several times per step, and with the branchy software codec above native fp16
// MLP training ran at 4.3k instead of 15.2k samples/s (README "Precision") —
// and the software codec in constant evaluation or without F16C. tests/unit/tensor/test_half.cpp
// checks the software codec against _Float16 on every pattern and millions of floats, so both
// give the same bits (a decoded signalling NaN aside: the CPU sets its quiet bit).
constexpr Fp16Bits fp16_encode(float x) {
#if defined(__F16C__)
  if (!std::is_constant_evaluated()) return std::bit_cast<Fp16Bits>(static_cast<_Float16>(x));
#endif
  return fp16_encode_soft(x);
}

constexpr float fp16_decode(Fp16Bits h) {
#if defined(__F16C__)
  if (!std::is_constant_evaluated()) return static_cast<float>(std::bit_cast<_Float16>(h));
#endif
  return fp16_decode_soft(h);
}

// Round a float to the nearest value the 16-bit format holds (emulates 16-bit storage).
constexpr float bf16_round(float x) { return bf16_decode(bf16_encode(x)); }
constexpr float fp16_round(float x) { return fp16_decode(fp16_encode(x)); }

// One value in the format chosen at run time (bf16, else fp16).
inline std::uint16_t encode_16bit(float x, bool bf16) { return bf16 ? bf16_encode(x) : fp16_encode(x); }
inline float decode_16bit(std::uint16_t h, bool bf16) { return bf16 ? bf16_decode(h) : fp16_decode(h); }

// Span conversions (Kokkos kernels). Sizes must match, else lowsync::Error naming both sizes.
void bf16_encode(std::span<const float> x, std::span<Bf16Bits> out);    // [n] -> [n]
void bf16_decode(std::span<const Bf16Bits> h, std::span<float> out);    // [n] -> [n]
void fp16_encode(std::span<const float> x, std::span<Fp16Bits> out);    // [n] -> [n]
void fp16_decode(std::span<const Fp16Bits> h, std::span<float> out);    // [n] -> [n]
// x[i] = bf16_round(x[i]) (bf16) or fp16_round(x[i]): 16-bit storage emulated in float buffers.
void round_to_16bit(std::span<float> x, bool bf16);                     // [n] in place
// The codec chosen at run time (bf16, else fp16): native 16-bit storage stages through these.
void encode_16bit(std::span<const float> x, std::span<std::uint16_t> out, bool bf16);  // [n] -> [n]
void decode_16bit(std::span<const std::uint16_t> h, std::span<float> out, bool bf16);  // [n] -> [n]
// No inf or NaN among bf16 (bf16 = true) or fp16 bit patterns: an all-ones exponent field.
bool all_finite_16bit(std::span<const std::uint16_t> h, bool bf16);

// Stochastic rounding to the 16-bit grid, unbiased: x lies between two neighbouring grid values
// lo and hi, and the result is hi when u < (x - lo) / (hi - lo), u uniform in [0, 1). Values on
// the grid, NaN, infinities and values beyond the largest finite (whose upper neighbour would be
// infinite) encode as nearest-even does. Inline: the optimizer calls it once per parameter.
inline std::uint16_t encode_16bit_stochastic(float x, float u, bool bf16) {
  if (bf16) {
    // bf16 keeps the top 16 bits of the fp32 pattern; within a binade the dropped 16 bits L are
    // linear in value, so the neighbour away from zero has probability L / 2^16 (1 - that for
    // the neighbour above a negative x).
    const auto bits = std::bit_cast<std::uint32_t>(x);
    const auto toward_zero = static_cast<std::uint16_t>(bits >> 16);
    const auto away = static_cast<std::uint16_t>(toward_zero + 1);
    if ((toward_zero & 0x7f80u) == 0x7f80u || (away & 0x7f80u) == 0x7f80u) return bf16_encode(x);  // inf/NaN, overflow
    const float p_away = static_cast<float>(bits & 0xffffu) * (1.0f / 65536.0f);
    const bool take_away = (bits >> 31) != 0 ? !(u < 1.0f - p_away) : u < p_away;
    return take_away ? away : toward_zero;
  }
  const Fp16Bits h = fp16_encode(x);
  const float v = fp16_decode(h);
  if (!(x - x == 0.0f) || !(v - v == 0.0f) || v == x) return h;  // NaN or inf, or on the grid
  // Sign-magnitude patterns: the other neighbour is one magnitude step from v toward x
  // (nearest-even kept x's sign, also for a zero v).
  const auto sign = static_cast<std::uint16_t>(h & 0x8000u), magnitude = static_cast<std::uint16_t>(h & 0x7fffu);
  const bool x_outside = (x < 0.0f ? -x : x) > (v < 0.0f ? -v : v);
  const auto other = static_cast<std::uint16_t>(sign | (x_outside ? magnitude + 1 : magnitude - 1));
  const float w = fp16_decode(other);
  if (!(w - w == 0.0f)) return h;  // the neighbour above the largest finite is infinite
  const bool v_below = v < x;
  const float lo = v_below ? v : w, hi = v_below ? w : v;
  return u < (x - lo) / (hi - lo) ? (v_below ? other : h) : (v_below ? h : other);
}

}  // namespace lowsync::tensor
