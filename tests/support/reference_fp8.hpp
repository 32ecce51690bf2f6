// Slow reference FP8 codec written from the OCP definitions in ALGORITHMS.md section 1, sharing
// no code with src/tensor: decode by ldexp of the bit fields, encode by searching all codes in
// double precision. Used by tests/unit/tensor/test_fp8.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "lowsync/tensor/fp8.hpp"

namespace lowsync::reference {

struct Fp8Layout {
  int exponent_bits;
  int mantissa_bits;
  int bias;
  bool ieee_specials;  // E5M2: all-ones exponent is inf/NaN; E4M3: only S.1111.111 is NaN
};

inline Fp8Layout fp8_layout(tensor::Fp8Format format) {
  return format == tensor::Fp8Format::e4m3 ? Fp8Layout{4, 3, 7, false} : Fp8Layout{5, 2, 15, true};
}

// Value of a code from its fields: (-1)^s * 2^(e - bias) * (1 + m / 2^M), or
// (-1)^s * 2^(1 - bias) * (m / 2^M) when e == 0.
inline double fp8_decode(std::uint8_t code, tensor::Fp8Format format) {
  const Fp8Layout l = fp8_layout(format);
  const int s = code >> 7;
  const int e = (code >> l.mantissa_bits) & ((1 << l.exponent_bits) - 1);
  const int m = code & ((1 << l.mantissa_bits) - 1);
  const int e_all_ones = (1 << l.exponent_bits) - 1;
  const int m_all_ones = (1 << l.mantissa_bits) - 1;
  const double sign = s ? -1.0 : 1.0;
  if (l.ieee_specials && e == e_all_ones)
    return m == 0 ? sign * std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::quiet_NaN();
  if (!l.ieee_specials && e == e_all_ones && m == m_all_ones)
    return std::numeric_limits<double>::quiet_NaN();
  const double fraction = static_cast<double>(m) / static_cast<double>(1 << l.mantissa_bits);
  if (e == 0) return sign * std::ldexp(fraction, 1 - l.bias);
  return sign * std::ldexp(1.0 + fraction, e - l.bias);
}

// Largest finite value, found by scanning the codes rather than assumed.
inline double fp8_max(tensor::Fp8Format format) {
  double best = 0.0;
  for (int c = 0; c < 128; ++c) {
    const double v = reference::fp8_decode(static_cast<std::uint8_t>(c), format);
    if (std::isfinite(v) && v > best) best = v;
  }
  return best;
}

// Non-negative finite code nearest to |x| (ties: the code with an even last bit); |x| beyond
// every finite value saturates; the sign bit is then copied from x. NaN x returns 0xff.
inline std::uint8_t fp8_encode_rne(double x, tensor::Fp8Format format) {
  if (std::isnan(x)) return 0xff;
  const double a = std::fabs(x);
  int best = -1;
  double best_distance = 0.0;
  for (int c = 0; c < 128; ++c) {
    const double v = reference::fp8_decode(static_cast<std::uint8_t>(c), format);
    if (!std::isfinite(v)) continue;
    const double d = std::fabs(v - a);
    if (best < 0 || d < best_distance || (d == best_distance && (c & 1) == 0)) {
      best = c;
      best_distance = d;
    }
  }
  return static_cast<std::uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

// Stochastic-rounding neighbours of finite x: lo = largest code value <= |x| (truncation
// toward zero), hi = smallest code value > |x|, both with x's sign; hi == lo when |x| >= Fmax.
// p_hi = (|x| - |lo|) / (|hi| - |lo|).
struct Fp8Bracket {
  std::uint8_t lo;
  std::uint8_t hi;
  double p_hi;
};

inline Fp8Bracket fp8_bracket(double x, tensor::Fp8Format format) {
  const double a = std::fabs(x);
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0;
  int lo = 0, hi = -1;
  double v_lo = 0.0, v_hi = 0.0;
  for (int c = 0; c < 128; ++c) {
    const double v = reference::fp8_decode(static_cast<std::uint8_t>(c), format);
    if (!std::isfinite(v)) continue;
    if (v <= a && v >= v_lo) lo = c, v_lo = v;
    if (v > a && (hi < 0 || v < v_hi)) hi = c, v_hi = v;
  }
  const auto lo_code = static_cast<std::uint8_t>(lo | sign);
  if (hi < 0) return {lo_code, lo_code, 0.0};
  return {lo_code, static_cast<std::uint8_t>(hi | sign), (a - v_lo) / (v_hi - v_lo)};
}

}  // namespace lowsync::reference
