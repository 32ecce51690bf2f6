// fp16 and bf16 codecs (ALGORITHMS.md section 3): fp16 against GCC's _Float16 (hardware or
// libgcc conversion), bf16 against a rounding written from the format definition in double.
// Decoding is checked on all 2^16 patterns; encoding on every midpoint and 4M random floats.
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

namespace lowsync::tensor {
namespace {

constexpr std::uint64_t kRandomFloats = 4'000'000;

static_assert(fp16_encode(1.0f) == 0x3c00 && fp16_decode(0x3c00) == 1.0f);
static_assert(bf16_encode(1.0f) == 0x3f80 && bf16_decode(0x3f80) == 1.0f);

std::uint32_t bits_of(float x) { return std::bit_cast<std::uint32_t>(x); }
float float_of(std::uint32_t b) { return std::bit_cast<float>(b); }

// The compiler's IEEE binary16: F16C's vcvtps2ph or libgcc, round-to-nearest-even.
std::uint16_t gcc_fp16_encode(float x) {
  volatile float v = x;  // keep the conversion at run time, not folded by the compiler
  return std::bit_cast<std::uint16_t>(static_cast<_Float16>(v));
}
float gcc_fp16_decode(std::uint16_t h) {
  volatile std::uint16_t v = h;
  return static_cast<float>(std::bit_cast<_Float16>(static_cast<std::uint16_t>(v)));
}

// bf16 value from its fields: 8 exponent bits (bias 127), 7 mantissa bits.
double reference_bf16_decode(std::uint16_t h) {
  const int e = (h >> 7) & 0xff, m = h & 0x7f;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0xff)
    return m == 0 ? sign * std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(m / 128.0, -126);
  return sign * std::ldexp(1.0 + m / 128.0, e - 127);
}

// Nearest bf16 value to finite x: 8 significant bits, spacing 2^-133 below 2^-126, ties to an
// even significand; a result of 2^128 (past the largest value 255 * 2^120) is inf.
double reference_bf16_round(float x) {
  const double a = std::fabs(static_cast<double>(x));
  if (a == 0.0) return x;
  int exponent = 0;
  std::frexp(a, &exponent);  // a in [2^(exponent-1), 2^exponent)
  const int quantum = std::max(exponent - 8, -133);
  const double units = std::ldexp(a, -quantum);  // exact
  double n = std::floor(units);
  const double fraction = units - n;
  if (fraction > 0.5 || (fraction == 0.5 && std::fmod(n, 2.0) == 1.0)) n += 1.0;
  double r = std::ldexp(n, quantum);
  if (r >= 0x1p128) r = std::numeric_limits<double>::infinity();
  return std::copysign(r, static_cast<double>(x));
}

// Floats that stress a 16-bit encoder: every midpoint between adjacent finite non-negative
// 16-bit values and its two float neighbours, both signs, then random bit patterns.
template <class Decode>
std::vector<float> encode_inputs(Decode decode, std::uint16_t max_finite, std::uint64_t key) {
  std::vector<float> xs;
  for (std::uint32_t h = 0; h < max_finite; ++h) {
    const float lo = decode(std::uint16_t(h)), hi = decode(std::uint16_t(h + 1));
    const auto m = static_cast<float>(0.5 * (double(lo) + double(hi)));  // exact in float
    for (float v : {m, std::nextafter(m, 0.0f), std::nextafter(m, INFINITY), lo}) {
      xs.push_back(v);
      xs.push_back(-v);
    }
  }
  for (std::uint64_t i = 0; i < kRandomFloats; ++i)
    xs.push_back(float_of(static_cast<std::uint32_t>(random_bits(key, i))));
  return xs;
}

TEST(Fp16, DecodeMatchesGccForAll65536Patterns) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float got = fp16_decode_soft(std::uint16_t(h));
    const float want = gcc_fp16_decode(std::uint16_t(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      ASSERT_EQ(std::signbit(got), std::signbit(want)) << std::hex << h;
    } else {
      ASSERT_EQ(bits_of(got), bits_of(want)) << std::hex << h;  // -0 and subnormals exact
    }
  }
  EXPECT_EQ(fp16_decode_soft(0x0001), 0x1p-24f);
  EXPECT_EQ(fp16_decode_soft(0x0400), 0x1p-14f);
  EXPECT_EQ(fp16_decode_soft(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_decode_soft(0x3c00), 1.0f);
  EXPECT_EQ(fp16_decode_soft(0xfc00), -INFINITY);
}

TEST(Fp16, EncodeMatchesGccOnMidpointsAndRandomFloats) {
  const std::vector<float> xs =
      encode_inputs([](std::uint16_t v) { return fp16_decode_soft(v); }, 0x7bff, stream_key({11}));
  ASSERT_GT(xs.size(), kRandomFloats);
  std::uint64_t mismatches = 0, nans = 0;
  for (float x : xs) {
    const std::uint16_t got = fp16_encode_soft(x), want = gcc_fp16_encode(x);
    if (std::isnan(x)) {
      ++nans;
      // Quiet NaN, sign kept; the payload rule (top 10 bits, quiet bit set) matches F16C.
      EXPECT_EQ(got & 0x7e00, 0x7e00);
      EXPECT_EQ(got & 0x8000, bits_of(x) >> 16 & 0x8000);
    }
    if (got != want && ++mismatches < 10)
      ADD_FAILURE() << "x = " << x << " (0x" << std::hex << bits_of(x) << "): got 0x" << got
                    << ", want 0x" << want;
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(nans, 0u);
}

TEST(Fp16, RoundTripAndEdges) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float v = fp16_decode_soft(std::uint16_t(h));
    if (!std::isnan(v)) {
      ASSERT_EQ(fp16_encode_soft(v), h) << std::hex << h;
    }
  }
  EXPECT_EQ(fp16_encode_soft(65504.0f), 0x7bff);
  EXPECT_EQ(fp16_encode_soft(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(fp16_encode_soft(65520.0f), 0x7c00);  // tie with an odd 65504: rounds up to inf
  EXPECT_EQ(fp16_encode_soft(-1e10f), 0xfc00);
  EXPECT_EQ(fp16_encode_soft(0x1p-25f), 0x0000);  // tie between 0 and 2^-24: even is 0
  EXPECT_EQ(fp16_encode_soft(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(fp16_encode_soft(0x1.8p-24f), 0x0002);  // tie between 1 and 2 units: even is 2
  EXPECT_EQ(fp16_encode_soft(-0.0f), 0x8000);
  EXPECT_EQ(fp16_encode_soft(float_of(0x7f800001u)) & 0x7fff, 0x7e00);  // signalling NaN: NaN, not inf
  EXPECT_EQ(fp16_round(1.0f + 0x1p-11f), 1.0f);                    // half an ulp is lost
  EXPECT_EQ(fp16_round(1.0f + 0x1p-10f), 1.0f + 0x1p-10f);
}

// The codec the library uses (F16C when the build has it) against the software codec above.
TEST(Fp16, FastCodecMatchesSoftwareCodec) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float fast = fp16_decode(std::uint16_t(h)), soft = fp16_decode_soft(std::uint16_t(h));
    if (std::isnan(soft))
      ASSERT_TRUE(std::isnan(fast) && std::signbit(fast) == std::signbit(soft)) << std::hex << h;
    else
      ASSERT_EQ(bits_of(fast), bits_of(soft)) << std::hex << h;
  }
  const std::vector<float> xs =
      encode_inputs([](std::uint16_t v) { return fp16_decode_soft(v); }, 0x7bff, stream_key({12}));
  std::uint64_t mismatches = 0;
  for (float x : xs) mismatches += fp16_encode(x) != fp16_encode_soft(x);
  EXPECT_EQ(mismatches, 0u);
}

TEST(Half, AllFiniteMatchesDecodeForEveryPattern) {
  for (bool bf16 : {true, false}) {
    for (std::uint32_t h = 0; h < 65536; ++h) {
      const std::uint16_t bits = static_cast<std::uint16_t>(h);
      const double v = bf16 ? reference_bf16_decode(bits) : static_cast<double>(fp16_decode_soft(bits));
      ASSERT_EQ(all_finite_16bit(std::span<const std::uint16_t>(&bits, 1), bf16), std::isfinite(v))
          << (bf16 ? "bf16 " : "fp16 ") << std::hex << h;
    }
  }
  const std::vector<std::uint16_t> mixed = {0x3c00, 0x0001, 0x7c00};
  EXPECT_FALSE(all_finite_16bit(mixed, false));
  EXPECT_TRUE(all_finite_16bit(std::span(mixed).first(2), false));
}

TEST(Bf16, DecodeMatchesReferenceForAll65536Patterns) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float got = bf16_decode(std::uint16_t(h));
    const double want = reference_bf16_decode(std::uint16_t(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
    }
    ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;
  }
}

TEST(Bf16, EncodeMatchesReferenceOnMidpointsAndRandomFloats) {
  const std::vector<float> xs =
      encode_inputs([](std::uint16_t v) { return bf16_decode(v); }, 0x7f7f, stream_key({12}));
  std::uint64_t mismatches = 0;
  for (float x : xs) {
    const std::uint16_t got = bf16_encode(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(bf16_decode(got))) << std::hex << bits_of(x);
      ASSERT_EQ(got & 0x0040, 0x0040);                    // quiet
      ASSERT_EQ(got & 0x8000, bits_of(x) >> 16 & 0x8000);  // sign kept
      continue;
    }
    const double want = reference_bf16_round(x);
    const float got_value = bf16_decode(got);
    if ((double(got_value) != want || std::signbit(got_value) != std::signbit(x)) &&
        ++mismatches < 10)
      ADD_FAILURE() << "x = " << x << " (0x" << std::hex << bits_of(x) << "): got " << got_value
                    << ", want " << want;
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST(Bf16, RoundTripAndEdges) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float v = bf16_decode(std::uint16_t(h));
    if (!std::isnan(v)) {
      ASSERT_EQ(bf16_encode(v), h) << std::hex << h;
    }
  }
  EXPECT_EQ(bf16_encode(FLT_MAX), 0x7f80);                // rounds past the largest: inf
  EXPECT_EQ(bf16_encode(float_of(0x7f7f7fffu)), 0x7f7f);  // just below that midpoint
  EXPECT_EQ(bf16_encode(float_of(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(bf16_encode(float_of(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(bf16_encode(float_of(0x00008000u)), 0x0000);  // subnormal tie to even zero
  EXPECT_EQ(bf16_encode(float_of(0x00018000u)), 0x0002);
  EXPECT_EQ(bf16_encode(float_of(0x7f800001u)) & 0x7fc0, 0x7fc0);  // signalling NaN stays NaN
  EXPECT_EQ(bf16_encode(float_of(0xff800001u)), 0xffc0);
  EXPECT_EQ(bf16_round(1.0f + 0x1p-8f), 1.0f);  // ulp(1) = 2^-7: half an ulp is lost
  EXPECT_EQ(bf16_round(1.0f + 0x1p-7f), 1.0f + 0x1p-7f);
}

TEST(Half, SpanKernelsMatchScalarLoops) {
  const std::uint64_t key = stream_key({13});
  std::vector<float> x(10007);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 100.0f * normal01(key, i);
  x[5] = INFINITY;
  x[6] = NAN;
  x[7] = 1e-30f;
  std::vector<std::uint16_t> h(x.size()), b(x.size());
  std::vector<float> back_h(x.size()), back_b(x.size());
  fp16_encode(x, h);
  bf16_encode(x, b);
  fp16_decode(h, back_h);
  bf16_decode(b, back_b);
  for (std::size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(h[i], gcc_fp16_encode(x[i])) << i;
    ASSERT_EQ(b[i], bf16_encode(x[i])) << i;
    ASSERT_EQ(bits_of(back_h[i]), bits_of(fp16_decode(h[i]))) << i;
    ASSERT_EQ(bits_of(back_b[i]), bits_of(bf16_decode(b[i]))) << i;
  }
  std::vector<std::uint16_t> short_out(3);
  std::vector<float> short_float(3);
  EXPECT_THROW(fp16_encode(x, short_out), lowsync::Error);
  EXPECT_THROW(bf16_encode(x, short_out), lowsync::Error);
  EXPECT_THROW(fp16_decode(h, short_float), lowsync::Error);
  EXPECT_THROW(bf16_decode(b, short_float), lowsync::Error);
}

// The span kernels (vectorised: F16C blocks for fp16, restrict loops for bf16) against the scalar
// codecs: every 16-bit pattern decoded, a stride through all float patterns encoded and rounded
// (NaN payloads, subnormals, overflow), all_finite_16bit with one special at every offset of a
// short span, and sizes that leave every remainder after an 8-wide block.
TEST(Half, SpanCodecsMatchScalarOnEveryPatternAndAFloatSweep) {
  std::vector<std::uint16_t> patterns(65536);
  for (std::size_t h = 0; h < patterns.size(); ++h) patterns[h] = static_cast<std::uint16_t>(h);
  for (const bool bf16 : {true, false}) {
    std::vector<float> decoded(patterns.size());
    decode_16bit(patterns, decoded, bf16);
    for (std::size_t h = 0; h < patterns.size(); ++h) {
      const float want = decode_16bit(patterns[h], bf16);
      ASSERT_EQ(bits_of(decoded[h]), bits_of(want)) << (bf16 ? "bf16 " : "fp16 ") << std::hex << h;
      const std::uint16_t exponent = bf16 ? 0x7f80 : 0x7c00;
      ASSERT_EQ(all_finite_16bit(std::span<const std::uint16_t>(&patterns[h], 1), bf16), (patterns[h] & exponent) != exponent);
    }
    std::vector<float> xs;
    for (std::uint64_t b = 0; b < (std::uint64_t{1} << 32); b += 4099) xs.push_back(float_of(static_cast<std::uint32_t>(b)));
    for (std::size_t n : {xs.size(), std::size_t{1}, std::size_t{7}, std::size_t{9}, std::size_t{2053}}) {
      const std::span<const float> x(xs.data(), n);
      std::vector<std::uint16_t> encoded(n);
      encode_16bit(x, encoded, bf16);
      std::vector<float> rounded(x.begin(), x.end());
      round_to_16bit(rounded, bf16);
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(encoded[i], encode_16bit(x[i], bf16)) << (bf16 ? "bf16 " : "fp16 ") << std::hex << bits_of(x[i]);
        ASSERT_EQ(bits_of(rounded[i]), bits_of(bf16 ? bf16_round(x[i]) : fp16_round(x[i]))) << std::hex << bits_of(x[i]);
      }
    }
    std::vector<std::uint16_t> finite(37, bf16 ? bf16_encode(1.5f) : fp16_encode(1.5f));
    EXPECT_TRUE(all_finite_16bit(finite, bf16));
    for (std::size_t at = 0; at < finite.size(); ++at) {
      for (float bad : {INFINITY, -INFINITY, NAN}) {
        std::vector<std::uint16_t> h = finite;
        h[at] = bf16 ? bf16_encode(bad) : fp16_encode(bad);
        EXPECT_FALSE(all_finite_16bit(h, bf16)) << at;
      }
    }
  }
}

// Stochastic rounding (precision.update_rounding = stochastic) against the definition, over every
// pair of neighbouring finite values of both formats, both signs, subnormals and zero included:
// x between lo and hi rounds to hi exactly when u < (x - lo) / (hi - lo).
TEST(Half, StochasticRoundingPicksTheNeighbourTheUniformSelects) {
  for (const bool bf16 : {true, false}) {
    const auto dec = [bf16](std::uint16_t h) { return bf16 ? bf16_decode(h) : fp16_decode(h); };
    const std::uint16_t max_finite = bf16 ? 0x7f7f : 0x7bff;
    std::size_t checked = 0;
    for (std::uint16_t m = 0; m < max_finite; ++m) {
      for (const bool negative : {false, true}) {
        // Neighbours as bit patterns, ordered by value.
        const auto a = static_cast<std::uint16_t>(negative ? 0x8000 | (m + 1) : m);
        const auto b = static_cast<std::uint16_t>(negative ? 0x8000 | m : m + 1);
        const double lo = dec(a), hi = dec(b);
        for (const double f : {0.25, 0.5, 0.75}) {
          const auto x = static_cast<float>(lo + f * (hi - lo));
          if (!(x > lo && x < hi)) continue;
          const double p = (static_cast<double>(x) - lo) / (hi - lo);
          ASSERT_EQ(encode_16bit_stochastic(x, static_cast<float>(p / 2), bf16), b) << std::hex << m << " " << x;
          ASSERT_EQ(encode_16bit_stochastic(x, static_cast<float>((p + 1) / 2), bf16), a) << std::hex << m << " " << x;
          ++checked;
        }
      }
    }
    EXPECT_GT(checked, bf16 ? 190000u : 170000u);
    // Grid values, infinities and NaN: as nearest-even, whatever u; beyond the largest finite
    // value (upper neighbour infinite) too.
    for (const float u : {0.0f, 0.5f, 0.999f}) {
      EXPECT_EQ(encode_16bit_stochastic(1.5f, u, bf16), bf16 ? bf16_encode(1.5f) : fp16_encode(1.5f));
      EXPECT_EQ(encode_16bit_stochastic(INFINITY, u, bf16), bf16 ? bf16_encode(INFINITY) : fp16_encode(INFINITY));
      EXPECT_TRUE(std::isnan(dec(encode_16bit_stochastic(NAN, u, bf16))));
      const float beyond = std::nextafter(dec(max_finite), INFINITY) * (bf16 ? 1.0f : 1.0002f);  // rounds to the max
      EXPECT_EQ(encode_16bit_stochastic(beyond, u, bf16), bf16 ? bf16_encode(beyond) : fp16_encode(beyond));
    }
  }
}

// Unbiased: the mean of many draws at x = lo + 0.3 (hi - lo) is x within 5 standard errors.
TEST(Half, StochasticRoundingIsUnbiased) {
  for (const bool bf16 : {true, false}) {
    const auto dec = [bf16](std::uint16_t h) { return bf16 ? bf16_decode(h) : fp16_decode(h); };
    for (const float lo : {1.0f, -3.0f, bf16 ? 1e-39f : 3e-6f}) {
      const std::uint16_t a = bf16 ? bf16_encode(lo) : fp16_encode(lo);
      const double l = dec(a), h = dec(static_cast<std::uint16_t>(a + 1));  // next magnitude
      const auto x = static_cast<float>(l + 0.3 * (h - l));
      const double p = (x - l) / (h - l);
      const int n = 200000;
      double sum = 0.0;
      for (int i = 0; i < n; ++i) sum += dec(encode_16bit_stochastic(x, uniform01(77, i), bf16));
      const double se = std::abs(h - l) * std::sqrt(p * (1 - p) / n);
      EXPECT_NEAR(sum / n, x, 5 * se) << (bf16 ? "bf16 " : "fp16 ") << lo;
    }
  }
}

}  // namespace
}  // namespace lowsync::tensor
