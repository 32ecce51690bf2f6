// FP8 codec and per-tensor quantizer (ALGORITHMS.md section 1) against the independent
// reference in tests/support/reference_fp8.hpp: all 256 codes per format, every rounding
// midpoint, saturation and NaN/inf, stochastic rounding statistics, and the span kernels.
#include "lowsync/tensor/fp8.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../../support/reference_fp8.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

namespace lowsync::tensor {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class Fp8 : public ::testing::TestWithParam<Fp8Format> {};

INSTANTIATE_TEST_SUITE_P(Formats, Fp8, ::testing::Values(Fp8Format::e4m3, Fp8Format::e5m2),
                         [](const auto& info) { return std::string(fp8_name(info.param)); });

// Codes of the non-negative finite values in increasing order (0x00 .. max code).
std::vector<std::uint8_t> finite_codes(Fp8Format f) {
  std::vector<std::uint8_t> codes;
  for (int c = 0; c < 128; ++c)
    if (std::isfinite(reference::fp8_decode(static_cast<std::uint8_t>(c), f)))
      codes.push_back(static_cast<std::uint8_t>(c));
  return codes;
}

// Pseudo-random float in +-[2^lo_exp, 2^hi_exp), log-uniform magnitude.
float random_float(std::uint64_t key, std::uint64_t i, int lo_exp, int hi_exp) {
  const float u = uniform01(key, 2 * i);
  const float magnitude = std::exp2(lo_exp + (hi_exp - lo_exp) * u);
  return (random_bits(key, 2 * i + 1) & 1) ? -magnitude : magnitude;
}

TEST_P(Fp8, DecodeMatchesReferenceForAll256Codes) {
  const Fp8Format f = GetParam();
  int nan_count = 0, inf_count = 0;
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    const float got = fp8_decode(code, f);
    const double want = reference::fp8_decode(code, f);
    EXPECT_EQ(fp8_is_nan(code, f), std::isnan(want)) << "code " << c;
    if (std::isnan(want)) {
      ++nan_count;
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
      continue;
    }
    if (std::isinf(want)) ++inf_count;
    EXPECT_EQ(static_cast<double>(got), want) << "code " << c;
    EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << "code " << c;  // -0 included
  }
  EXPECT_EQ(nan_count, f == Fp8Format::e4m3 ? 2 : 6);
  EXPECT_EQ(inf_count, f == Fp8Format::e4m3 ? 0 : 2);
}

// The scalar codec is constexpr, so kernels and tables can fold it.
static_assert(fp8_decode(0x7e, Fp8Format::e4m3) == 448.0f);
static_assert(fp8_encode_rne(448.0f, Fp8Format::e4m3) == 0x7e);
static_assert(fp8_encode_sr(1.0625f, Fp8Format::e4m3, 0.4f) == 0x39);  // p_hi = 0.5

TEST(Fp8Constants, KnownValuesFromTheSpec) {
  EXPECT_EQ(fp8_decode(0x7e, Fp8Format::e4m3), 448.0f);
  EXPECT_EQ(fp8_decode(0x08, Fp8Format::e4m3), 0x1p-6f);   // min normal
  EXPECT_EQ(fp8_decode(0x01, Fp8Format::e4m3), 0x1p-9f);   // min subnormal
  EXPECT_EQ(fp8_decode(0x38, Fp8Format::e4m3), 1.0f);
  EXPECT_EQ(fp8_decode(0x7b, Fp8Format::e5m2), 57344.0f);
  EXPECT_EQ(fp8_decode(0x04, Fp8Format::e5m2), 0x1p-14f);  // min normal
  EXPECT_EQ(fp8_decode(0x01, Fp8Format::e5m2), 0x1p-16f);  // min subnormal
  EXPECT_EQ(fp8_decode(0x3c, Fp8Format::e5m2), 1.0f);
  EXPECT_EQ(fp8_decode(0x7c, Fp8Format::e5m2), kInf);
  EXPECT_EQ(fp8_decode(0xfc, Fp8Format::e5m2), -kInf);
  EXPECT_EQ(fp8_max(Fp8Format::e4m3), reference::fp8_max(Fp8Format::e4m3));
  EXPECT_EQ(fp8_max(Fp8Format::e5m2), reference::fp8_max(Fp8Format::e5m2));
}

TEST_P(Fp8, EveryFiniteCodeRoundTrips) {
  const Fp8Format f = GetParam();
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    if (!std::isfinite(reference::fp8_decode(code, f))) continue;
    const float v = fp8_decode(code, f);
    EXPECT_EQ(fp8_encode_rne(v, f), code) << "code " << c;
    // An exact value has nothing to round: SR returns it for any uniform draw.
    for (float u : {0.0f, 0.5f, 0.99999994f}) EXPECT_EQ(fp8_encode_sr(v, f, u), code) << c;
  }
}

TEST_P(Fp8, TiesGoToEvenAtEveryMidpoint) {
  const Fp8Format f = GetParam();
  const std::vector<std::uint8_t> codes = finite_codes(f);
  for (std::size_t k = 0; k + 1 < codes.size(); ++k) {
    const std::uint8_t lo = codes[k], hi = codes[k + 1];
    const double mid_d = 0.5 * (reference::fp8_decode(lo, f) + reference::fp8_decode(hi, f));
    const auto mid = static_cast<float>(mid_d);
    ASSERT_EQ(static_cast<double>(mid), mid_d);  // midpoints are exact floats
    const std::uint8_t even = (lo & 1) ? hi : lo;
    for (float sign : {1.0f, -1.0f}) {
      const std::uint8_t s = sign < 0 ? 0x80 : 0;
      EXPECT_EQ(fp8_encode_rne(sign * mid, f), even | s) << "midpoint " << mid;
      EXPECT_EQ(fp8_encode_rne(sign * std::nextafter(mid, 0.0f), f), lo | s) << mid;
      EXPECT_EQ(fp8_encode_rne(sign * std::nextafter(mid, kInf), f), hi | s) << mid;
      EXPECT_EQ(reference::fp8_encode_rne(sign * mid_d, f), even | s);
    }
  }
}

TEST_P(Fp8, RneMatchesReferenceOnRandomValues) {
  const Fp8Format f = GetParam();
  const std::uint64_t key = stream_key({1, static_cast<std::uint64_t>(f)});
  int mismatches = 0;
  // Magnitudes from far below the smallest subnormal to far above Fmax.
  for (std::uint64_t i = 0; i < 300'000; ++i) {
    const float x = random_float(key, i, -24, 20);
    if (fp8_encode_rne(x, f) != reference::fp8_encode_rne(x, f) && ++mismatches < 10)
      ADD_FAILURE() << "x = " << x << ": got " << int(fp8_encode_rne(x, f)) << ", want "
                    << int(reference::fp8_encode_rne(x, f));
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_P(Fp8, SaturatesFiniteOverflowAndHandlesNanAndInf) {
  const Fp8Format f = GetParam();
  const std::uint8_t max_code = f == Fp8Format::e4m3 ? 0x7e : 0x7b;
  const float fmax = fp8_max(f);
  // Just above Fmax, at the would-be next value's midpoint, far above, and the largest float.
  const float next_step = f == Fp8Format::e4m3 ? 32.0f : 8192.0f;
  for (float x : {std::nextafter(fmax, kInf), fmax + next_step / 2, fmax + next_step, 1e30f,
                  FLT_MAX}) {
    EXPECT_EQ(fp8_encode_rne(x, f), max_code) << x;
    EXPECT_EQ(fp8_encode_rne(-x, f), max_code | 0x80) << x;
    EXPECT_EQ(fp8_encode_sr(x, f, 0.999f), max_code) << x;
    EXPECT_EQ(fp8_encode_sr(-x, f, 0.999f), max_code | 0x80) << x;
  }
  for (float x : {kNaN, -kNaN, std::bit_cast<float>(0x7f800001u)}) {
    EXPECT_TRUE(fp8_is_nan(fp8_encode_rne(x, f), f));
    EXPECT_TRUE(fp8_is_nan(fp8_encode_sr(x, f, 0.5f), f));
    EXPECT_TRUE(std::isnan(fp8_decode(fp8_encode_rne(x, f), f)));
  }
  if (f == Fp8Format::e5m2) {
    EXPECT_EQ(fp8_encode_rne(kInf, f), 0x7c);
    EXPECT_EQ(fp8_encode_rne(-kInf, f), 0xfc);
    EXPECT_EQ(fp8_decode(fp8_encode_sr(-kInf, f, 0.1f), f), -kInf);
  } else {  // no inf in E4M3: an infinite input must not pass as a finite value
    EXPECT_TRUE(fp8_is_nan(fp8_encode_rne(kInf, f), f));
    EXPECT_TRUE(fp8_is_nan(fp8_encode_rne(-kInf, f), f));
  }
  EXPECT_EQ(fp8_encode_rne(-0.0f, f), 0x80);
  EXPECT_EQ(fp8_encode_rne(1e-30f, f), 0x00);
  EXPECT_EQ(fp8_encode_rne(std::bit_cast<float>(0x00000001u), f), 0x00);  // float subnormal
}

TEST_P(Fp8, StochasticRoundingReturnsLoOrHiWithTheExactThreshold) {
  const Fp8Format f = GetParam();
  const std::uint64_t key = stream_key({2, static_cast<std::uint64_t>(f)});
  for (std::uint64_t i = 0; i < 20'000; ++i) {
    const float y = random_float(key, i, -20, 18);
    const reference::Fp8Bracket b = reference::fp8_bracket(y, f);
    // On the 24-bit uniform grid, hi iff u < p_hi.
    for (int k = 0; k < 8; ++k) {
      const float u = uniform01(key ^ 0x55, i * 8 + k);
      const std::uint8_t got = fp8_encode_sr(y, f, u);
      const std::uint8_t want = static_cast<double>(u) < b.p_hi ? b.hi : b.lo;
      ASSERT_EQ(got, want) << "y = " << y << ", u = " << u << ", p_hi = " << b.p_hi;
      EXPECT_LE(std::fabs(fp8_decode(got, f)), fp8_max(f));
    }
  }
}

TEST_P(Fp8, StochasticRoundingIsUnbiased) {
  const Fp8Format f = GetParam();
  const float fmax = fp8_max(f);
  const std::uint64_t key = stream_key({3, static_cast<std::uint64_t>(f)});
  constexpr int kDraws = 20'000;
  const float sub = fp8_decode(0x01, f);  // smallest subnormal
  for (float y : {0.3f * sub, 2.7f * sub, 1.1f, -1.3f, 3.14159f, -0.07f, 0.9f * fmax,
                  -0.97f * fmax, 100.3f, std::nextafter(fmax, 0.0f)}) {
    const reference::Fp8Bracket b = reference::fp8_bracket(y, f);
    const double lo = reference::fp8_decode(b.lo, f), hi = reference::fp8_decode(b.hi, f);
    double sum = 0.0;
    for (int i = 0; i < kDraws; ++i) {
      const std::uint8_t q = fp8_encode_sr(y, f, uniform01(key, static_cast<std::uint64_t>(i)));
      ASSERT_TRUE(q == b.lo || q == b.hi) << y;
      sum += fp8_decode(q, f);
    }
    const double sigma = std::fabs(hi - lo) * std::sqrt(b.p_hi * (1.0 - b.p_hi));
    const double bound = 5.0 * sigma / std::sqrt(double(kDraws)) + 1e-7 * std::fabs(y);
    EXPECT_NEAR(sum / kDraws, static_cast<double>(y), bound) << "y = " << y;
  }
}

TEST_P(Fp8, QuantizeMatchesNaiveLoopAndErrorBound) {
  const Fp8Format f = GetParam();
  const Fp8Spec spec = fp8_spec(f);
  const std::uint64_t key = stream_key({4, static_cast<std::uint64_t>(f)});
  std::vector<float> x(5000);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = random_float(key, i, -12, 3);
  x[17] = -9.5f;  // the amax element, negative
  std::vector<std::uint8_t> q(x.size());
  const float s = quantize(x, q, f, Rounding::nearest_even, 0);
  EXPECT_EQ(s, 9.5f / spec.max_value);
  EXPECT_EQ(q[17], spec.max_code | 0x80);  // amax lands on -Fmax exactly
  std::vector<float> xh(x.size());
  dequantize(q, s, f, xh);
  const double subnormal_half_step = std::ldexp(1.0, spec.min_exponent - spec.mantissa_bits - 1);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float y = std::fmin(std::fmax(x[i] / s, -spec.max_value), spec.max_value);
    ASSERT_EQ(q[i], reference::fp8_encode_rne(y, f)) << i;
    ASSERT_EQ(xh[i], static_cast<float>(reference::fp8_decode(q[i], f)) * s) << i;
    // Half a step of the grid: relative 2^-(M+1) in the normal range, absolute below it;
    // 1e-6 covers the two float roundings of x / s and q * s.
    const double bound = std::max(std::fabs(x[i]) * std::ldexp(1.0, -spec.mantissa_bits - 1),
                                  s * subnormal_half_step) * (1.0 + 1e-6);
    ASSERT_LE(std::fabs(double(xh[i]) - double(x[i])), bound) << "x = " << x[i];
  }
}

TEST_P(Fp8, StochasticQuantizeUsesTheKeyedUniformPerElement) {
  const Fp8Format f = GetParam();
  const std::uint64_t data_key = stream_key({5, static_cast<std::uint64_t>(f)});
  std::vector<float> x(4000);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = random_float(data_key, i, -8, 2);
  const std::uint64_t key = stream_key({42, 7, 1, 3});  // seed, round, rank, tensor
  std::vector<std::uint8_t> q(x.size()), q_again(x.size()), q_other(x.size());
  const float s = quantize(x, q, f, Rounding::stochastic, key);
  quantize(x, q_again, f, Rounding::stochastic, key);
  quantize(x, q_other, f, Rounding::stochastic, stream_key({42, 7, 2, 3}));
  EXPECT_EQ(q, q_again);
  EXPECT_NE(q, q_other);
  // Rounding errors are independent, zero-mean, variance D^2 p (1 - p): their sum stays
  // within 5 sigma of zero.
  double error_sum = 0.0, variance = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float y = std::fmin(std::fmax(x[i] / s, -fp8_max(f)), fp8_max(f));
    const reference::Fp8Bracket b = reference::fp8_bracket(y, f);
    const std::uint8_t want = double(uniform01(key, i)) < b.p_hi ? b.hi : b.lo;
    ASSERT_EQ(q[i], want) << i;
    const double step = reference::fp8_decode(b.hi, f) - reference::fp8_decode(b.lo, f);
    error_sum += reference::fp8_decode(q[i], f) - y;
    variance += step * step * b.p_hi * (1.0 - b.p_hi);
  }
  EXPECT_GT(variance, 0.0);
  EXPECT_LE(std::fabs(error_sum), 5.0 * std::sqrt(variance));
}

TEST_P(Fp8, QuantizeEdgeCases) {
  const Fp8Format f = GetParam();
  std::vector<float> zeros(10, 0.0f);
  std::vector<std::uint8_t> q(10, 0xaa);
  EXPECT_EQ(quantize(zeros, q, f, Rounding::nearest_even, 0), 1.0f);
  for (std::uint8_t c : q) EXPECT_EQ(c, 0);

  // amax / Fmax underflows in fp32: the scale is clamped to the smallest normal float.
  std::vector<float> tiny = {1e-44f, -3e-45f, 0.0f};
  std::vector<std::uint8_t> qt(3);
  const float s = quantize(tiny, qt, f, Rounding::stochastic, 9);
  EXPECT_TRUE(std::isfinite(s));
  EXPECT_GT(s, 0.0f);
  EXPECT_EQ(s, FLT_MIN);

  // Non-finite input is refused, naming the element.
  for (float bad : {kNaN, kInf, -kInf}) {
    std::vector<float> x = {1.0f, 2.0f, bad, 3.0f};
    std::vector<std::uint8_t> qb(4);
    try {
      quantize(x, qb, f, Rounding::nearest_even, 0);
      ADD_FAILURE() << "quantize accepted " << bad;
    } catch (const lowsync::Error& e) {
      EXPECT_NE(std::string(e.what()).find("x[2]"), std::string::npos) << e.what();
    }
    EXPECT_THROW(quantize_with_scale(x, qb, f, Rounding::stochastic, 0, 1.0f), lowsync::Error);
    EXPECT_THROW(fp8_scale(x, f), lowsync::Error);
    EXPECT_THROW(best_scale(x, f), lowsync::Error);
  }
  std::vector<float> x = {1.0f, 2.0f};
  std::vector<std::uint8_t> q1(1), q2(2);
  EXPECT_THROW(quantize(x, q1, f, Rounding::nearest_even, 0), lowsync::Error);
  for (float bad_scale : {0.0f, -1.0f, kNaN, kInf})
    EXPECT_THROW(quantize_with_scale(x, q2, f, Rounding::nearest_even, 0, bad_scale),
                 lowsync::Error);
  std::vector<float> out(1);
  EXPECT_THROW(dequantize(q2, 1.0f, f, out), lowsync::Error);

  // A tiny explicit scale makes x / s overflow to inf: it must saturate, not become NaN.
  std::vector<float> big = {3e38f, -3e38f};
  quantize_with_scale(big, q2, f, Rounding::nearest_even, 0, 1e-30f);
  EXPECT_EQ(q2[0], fp8_spec(f).max_code);
  EXPECT_EQ(q2[1], fp8_spec(f).max_code | 0x80);
}

TEST_P(Fp8, FakeQuantizeAndSteBackwardMatchNaiveLoops) {
  const Fp8Format f = GetParam();
  const float fmax = fp8_max(f);
  const std::uint64_t key = stream_key({6, static_cast<std::uint64_t>(f)});
  std::vector<float> x(3000);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = random_float(key, i, -10, 4);
  // Half the amax scale: the largest elements are clamped in the forward.
  const float s = fp8_scale(x, f) * 0.5f;
  std::vector<float> out(x.size()), grad(x.size());
  fake_quantize(x, out, f, s);
  for (std::size_t i = 0; i < x.size(); ++i) grad[i] = 1.0f + 0.001f * float(i);
  std::vector<float> grad_in = grad;
  ste_backward(x, s, f, grad);
  int clamped = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float y = x[i] / s;
    const bool clamp = std::fabs(y) > fmax;
    const float yc = clamp ? std::copysign(fmax, y) : y;
    const double ref = reference::fp8_decode(reference::fp8_encode_rne(yc, f), f);
    ASSERT_EQ(out[i], static_cast<float>(ref) * s) << i;
    ASSERT_EQ(grad[i], clamp ? 0.0f : grad_in[i]) << i;
    clamped += clamp;
  }
  EXPECT_GT(clamped, 10);
  EXPECT_LT(clamped, 1000);

  // |x / s| == Fmax exactly is not clamped: its gradient passes; one float above is clamped.
  const std::vector<float> edge = {0.5f * fmax, -0.5f * fmax, std::nextafter(0.5f * fmax, kInf),
                                   -std::nextafter(0.5f * fmax, kInf)};
  std::vector<float> edge_grad = {1.0f, 2.0f, 3.0f, 4.0f};
  ste_backward(edge, 0.5f, f, edge_grad);
  EXPECT_EQ(edge_grad, (std::vector<float>{1.0f, 2.0f, 0.0f, 0.0f}));

  std::vector<float> in_place = x;  // out may alias x
  fake_quantize(in_place, in_place, f, s);
  EXPECT_EQ(in_place, out);

  // Non-finite values propagate instead of throwing (the loss check catches them).
  std::vector<float> special = {kNaN, kInf, 1.0f}, special_out(3);
  fake_quantize(special, special_out, f, 1.0f);
  EXPECT_TRUE(std::isnan(special_out[0]));
  EXPECT_TRUE(f == Fp8Format::e5m2 ? std::isinf(special_out[1]) : std::isnan(special_out[1]));
  EXPECT_EQ(special_out[2], 1.0f);
}

// Naive ServerOptimize: error of every candidate with the reference codec.
double naive_error(const std::vector<float>& w, Fp8Format f, float s) {
  double e = 0.0;
  for (float v : w) {
    const float y = std::fmin(std::fmax(v / s, -fp8_max(f)), fp8_max(f));
    const double q = reference::fp8_decode(reference::fp8_encode_rne(y, f), f);
    const float w_hat = static_cast<float>(q) * s;
    e += (double(w_hat) - double(v)) * (double(w_hat) - double(v));
  }
  return e;
}

TEST_P(Fp8, BestScaleIsTheArgminOfTheCandidates) {
  const Fp8Format f = GetParam();
  const std::uint64_t key = stream_key({7, static_cast<std::uint64_t>(f)});
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<float> w(2000);
    for (std::size_t i = 0; i < w.size(); ++i)
      w[i] = 0.05f * normal01(key, trial * 10000 + i);
    if (trial > 0) w[3] = 40.0f * trial;  // an outlier stretches amax
    const float s0 = fp8_scale(w, f);
    int best_j = 0;
    double best_e = naive_error(w, f, s0);
    for (int j = 1; j < kBestScaleCandidates; ++j) {
      const double e = naive_error(w, f, best_scale_candidate(s0, j));
      if (e < best_e) best_e = e, best_j = j;
    }
    const float s = best_scale(w, f);
    EXPECT_EQ(s, best_scale_candidate(s0, best_j)) << "trial " << trial;
    EXPECT_LE(naive_error(w, f, s), naive_error(w, f, s0));
    EXPECT_DOUBLE_EQ(quantize_sq_error(w, f, s), naive_error(w, f, s));
  }
  EXPECT_EQ(best_scale_candidate(1.0f, 4), 0.5f);
  EXPECT_EQ(best_scale_candidate(1.0f, 0), 1.0f);
  std::vector<float> zeros(5, 0.0f);
  EXPECT_EQ(best_scale(zeros, f), 1.0f);
}

TEST_P(Fp8, BestScaleLeavesAmaxWhenTheBulkFitsASmallerGrid) {
  // Relative rounding error is the same in every normal binade, so a smaller scale pays only
  // when it moves many values onto the grid: 64 copies of 1.25 * 2^emax_top at s_1 are exact,
  // but sit 5% off the grid at s_0; that outweighs clamping amax (1 - 2^(-1/4) of it).
  const Fp8Format f = GetParam();
  const float top_binade = f == Fp8Format::e4m3 ? 256.0f : 32768.0f;
  const float s0 = 1.0f / fp8_max(f);
  const float s1 = best_scale_candidate(s0, 1);
  std::vector<float> w(65, 1.25f * top_binade * s1);
  w[0] = 1.0f;  // amax
  ASSERT_EQ(fp8_scale(w, f), s0);
  const float s = best_scale(w, f);
  EXPECT_LT(s, s0);
  EXPECT_LT(naive_error(w, f, s), naive_error(w, f, s0));
  int best_j = 0;
  for (int j = 1; j < kBestScaleCandidates; ++j) {
    const double e = naive_error(w, f, best_scale_candidate(s0, j));
    if (e < naive_error(w, f, best_scale_candidate(s0, best_j))) best_j = j;
  }
  EXPECT_EQ(s, best_scale_candidate(s0, best_j));
}

// ---- The vectorised paths against the scalar reference (bit-exact) ----

std::uint32_t bits_of(float x) { return std::bit_cast<std::uint32_t>(x); }
float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }

std::uint8_t rne_lanes(float x, Fp8Format f) {
  return f == Fp8Format::e4m3 ? detail::fp8_encode_rne_lanes<Fp8Format::e4m3>(x)
                              : detail::fp8_encode_rne_lanes<Fp8Format::e5m2>(x);
}
std::uint8_t sr_lanes(float x, Fp8Format f, float u) {
  return f == Fp8Format::e4m3 ? detail::fp8_encode_sr_lanes<Fp8Format::e4m3>(x, u)
                              : detail::fp8_encode_sr_lanes<Fp8Format::e5m2>(x, u);
}

// Float patterns where an encoder can go wrong: a stride through all 2^32 patterns (both signs,
// NaN payloads, float subnormals), every pattern within 3 ulps of each FP8 grid value and each
// midpoint between neighbours, zeros, FLT_MIN/FLT_MAX, Fmax's neighbours and the infinities.
std::vector<float> edge_patterns(Fp8Format f) {
  std::vector<float> out;
  for (std::uint64_t b = 0; b < (std::uint64_t{1} << 32); b += 4099) out.push_back(from_bits(static_cast<std::uint32_t>(b)));
  const auto near = [&](float v) {
    for (int d = -3; d <= 3; ++d)
      for (float sign : {1.0f, -1.0f}) out.push_back(sign * from_bits(static_cast<std::uint32_t>(static_cast<std::int64_t>(bits_of(v)) + d)));
  };
  const std::vector<std::uint8_t> codes = finite_codes(f);
  for (std::size_t k = 0; k < codes.size(); ++k) {
    const float v = fp8_decode(codes[k], f);
    if (v > 0.0f) near(v);
    if (k + 1 < codes.size()) near(0.5f * (v + fp8_decode(codes[k + 1], f)));  // exact in float
  }
  for (float v : {FLT_MIN, FLT_MAX, std::nextafter(0.0f, 1.0f), 1e-40f, 1.0f}) near(v);
  for (float v : {0.0f, -0.0f, kInf, -kInf, kNaN, -kNaN, from_bits(0x7f800001u), from_bits(0xffa00000u)}) out.push_back(v);
  return out;
}

TEST_P(Fp8, LanesCodecsMatchScalarCodecsBitwise) {
  const Fp8Format f = GetParam();
  const std::uint64_t key = stream_key({8, static_cast<std::uint64_t>(f)});
  const std::vector<float> xs = edge_patterns(f);
  ASSERT_GT(xs.size(), 1000000u);
  std::size_t i = 0, thresholds = 0;
  for (float x : xs) {
    ASSERT_EQ(rne_lanes(x, f), fp8_encode_rne(x, f)) << std::hex << bits_of(x);
    std::vector<float> us = {0.0f, 0x1p-24f, 0.5f, 1.0f - 0x1p-24f, uniform01(key, i)};
    // The reference bracket scans all codes: every 8th value keeps the test at a second or two.
    if (i++ % 8 == 0 && std::isfinite(x) && std::fabs(x) < fp8_max(f)) {
      // The uniform at the threshold itself and one step below: p_hi is k / 2^n, exact here.
      const float p_hi = static_cast<float>(reference::fp8_bracket(x, f).p_hi);
      if (p_hi > 0.0f) {
        us.push_back(p_hi);
        us.push_back(std::nextafter(p_hi, 0.0f));
        ++thresholds;
      }
    }
    for (float u : us) ASSERT_EQ(sr_lanes(x, f, u), fp8_encode_sr(x, f, u)) << std::hex << bits_of(x) << " u " << u;
  }
  EXPECT_GT(thresholds, 1000u);
}

// y = clamp(x / s) as the scalar reference writes it (non-finite x passes through unclamped).
float reference_scaled(float x, float s, Fp8Format f) {
  const float y = x / s;
  return std::isfinite(x) ? std::fmin(std::fmax(y, -fp8_max(f)), fp8_max(f)) : y;
}

// Inputs for the span kernels: log-uniform magnitudes over the whole float range (float
// subnormals included), zeros of both signs, values near Fmax * s; sizes that leave every
// possible remainder after the vector body.
std::vector<float> edge_tensor(Fp8Format f, std::size_t n, std::uint64_t salt) {
  const std::uint64_t key = stream_key({9, static_cast<std::uint64_t>(f), salt});
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) {
    switch (i % 5) {
      case 0: x[i] = random_float(key, i, -149, 127); break;
      case 1: x[i] = random_float(key, i, -12, 6); break;
      case 2: x[i] = (i % 2 ? -1.0f : 1.0f) * fp8_max(f) * (0.99f + 0.02f * uniform01(key, i)); break;
      case 3: x[i] = i % 2 ? -0.0f : 0.0f; break;
      default: x[i] = random_float(key, i, -130, -120); break;  // float subnormals and just above
    }
  }
  return x;
}

TEST_P(Fp8, SpanKernelsMatchScalarLoopsOnEdgeInputs) {
  const Fp8Format f = GetParam();
  const std::uint64_t key = stream_key({10, static_cast<std::uint64_t>(f)});
  for (std::size_t n : {std::size_t{1}, std::size_t{15}, std::size_t{16}, std::size_t{17}, std::size_t{64}, std::size_t{1003}, std::size_t{4099}}) {
    const std::vector<float> x = edge_tensor(f, n, n);
    for (float s : {1.0f, 1e-30f, FLT_MIN, 1e30f, 3.7e-3f, 0.5f}) {
      std::vector<std::uint8_t> q(n), q_sr(n);
      quantize_with_scale(x, q, f, Rounding::nearest_even, 0, s);
      quantize_with_scale(x, q_sr, f, Rounding::stochastic, key, s);
      std::vector<float> fq(n), grad(n, 1.0f), deq(n);
      fake_quantize(x, fq, f, s);
      ste_backward(x, s, f, grad);
      dequantize(q, s, f, deq);
      for (std::size_t i = 0; i < n; ++i) {
        const float y = reference_scaled(x[i], s, f);
        ASSERT_EQ(q[i], fp8_encode_rne(y, f)) << "n " << n << " s " << s << " x " << x[i];
        ASSERT_EQ(q_sr[i], fp8_encode_sr(y, f, uniform01(key, i))) << "n " << n << " s " << s << " x " << x[i];
        ASSERT_EQ(bits_of(fq[i]), bits_of(fp8_decode(q[i], f) * s)) << "n " << n << " s " << s << " x " << x[i];
        ASSERT_EQ(bits_of(deq[i]), bits_of(fp8_decode(q[i], f) * s));
        ASSERT_EQ(grad[i], std::fabs(x[i] / s) > fp8_max(f) ? 0.0f : 1.0f);
      }
    }
  }
  // fake_quantize passes NaN and inf through the codec; in the body and in the tail.
  std::vector<float> special(37, 0.25f);
  for (std::size_t i : {std::size_t{3}, std::size_t{20}, std::size_t{35}}) special[i] = kNaN;
  special[4] = kInf;
  special[36] = -kInf;
  std::vector<float> out(special.size());
  fake_quantize(special, out, f, 0.5f);
  for (std::size_t i = 0; i < special.size(); ++i) {
    const float want = fp8_decode(fp8_encode_rne(reference_scaled(special[i], 0.5f, f), f), f) * 0.5f;
    if (std::isnan(want)) ASSERT_TRUE(std::isnan(out[i])) << i;
    else ASSERT_EQ(bits_of(out[i]), bits_of(want)) << i;
  }
  // Every code decodes through the table exactly as the scalar codec (NaN as NaN).
  std::vector<std::uint8_t> all(256);
  for (int c = 0; c < 256; ++c) all[static_cast<std::size_t>(c)] = static_cast<std::uint8_t>(c);
  std::vector<float> decoded(256);
  dequantize(all, 0.75f, f, decoded);
  for (int c = 0; c < 256; ++c) {
    const float want = fp8_decode(static_cast<std::uint8_t>(c), f) * 0.75f;
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(decoded[static_cast<std::size_t>(c)]));
    else EXPECT_EQ(bits_of(decoded[static_cast<std::size_t>(c)]), bits_of(want)) << c;
  }
}

TEST_P(Fp8, QuantizeSqErrorsMatchesScalarPerCandidateBitwise) {
  const Fp8Format f = GetParam();
  const std::uint64_t key = stream_key({11, static_cast<std::uint64_t>(f)});
  std::vector<std::vector<float>> tensors;
  std::vector<float> w(1007);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.05f * normal01(key, i);
  tensors.push_back(w);
  w[3] = 40.0f;  // an outlier: most values fall in the subnormal range of the small candidates
  tensors.push_back(w);
  for (float& v : w) v *= 1e-38f;  // amax / Fmax underflows: candidates clamped to FLT_MIN
  tensors.push_back(w);
  tensors.push_back(edge_tensor(f, 333, 1));
  std::vector<float> huge(50);
  for (std::size_t i = 0; i < huge.size(); ++i) huge[i] = random_float(key, i, 100, 127);
  tensors.push_back(huge);
  tensors.push_back({-0.0f, 0.0f, 1e-45f});
  tensors.push_back({2.5f});
  for (std::size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    const auto candidates = best_scale_candidates(fp8_scale(t, f));
    std::array<double, kBestScaleCandidates> errors{};
    quantize_sq_errors(t, f, candidates, errors);
    int best_j = 0;
    for (int j = 0; j < kBestScaleCandidates; ++j) {
      const double scalar = quantize_sq_error(t, f, candidates[static_cast<std::size_t>(j)]);
      EXPECT_EQ(errors[static_cast<std::size_t>(j)], scalar) << "tensor " << k << " j " << j;
      if (scalar < quantize_sq_error(t, f, candidates[static_cast<std::size_t>(best_j)])) best_j = j;
    }
    EXPECT_EQ(best_scale_index(errors), best_j) << "tensor " << k;
    EXPECT_EQ(best_scale(t, f), candidates[static_cast<std::size_t>(best_j)]) << "tensor " << k;
  }
  // Arbitrary scales, far from the amax one: saturation everywhere, or everything below the grid.
  const std::vector<float> t = tensors[0];
  std::array<float, kBestScaleCandidates> scales{};
  for (int j = 0; j < kBestScaleCandidates; ++j) scales[static_cast<std::size_t>(j)] = std::ldexp(1.3f, 8 * j - 64);
  scales[0] = FLT_MIN;
  std::array<double, kBestScaleCandidates> errors{};
  quantize_sq_errors(t, f, scales, errors);
  for (int j = 0; j < kBestScaleCandidates; ++j)
    EXPECT_EQ(errors[static_cast<std::size_t>(j)], quantize_sq_error(t, f, scales[static_cast<std::size_t>(j)])) << j;
  std::array<double, kBestScaleCandidates> empty_errors{};
  empty_errors.fill(7.0);
  quantize_sq_errors(std::span<const float>(), f, scales, empty_errors);
  for (double e : empty_errors) EXPECT_EQ(e, 0.0);
  scales[5] = 0.0f;
  EXPECT_THROW(quantize_sq_errors(t, f, scales, errors), lowsync::Error);
}

TEST(Fp8Amax, OrInfMatchesTheScalarMaximumAndFlagsNonFinite) {
  const std::uint64_t key = stream_key({12});
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{16}, std::size_t{37}, std::size_t{1000}}) {
    std::vector<float> x(n);
    for (std::size_t i = 0; i < n; ++i) x[i] = random_float(key, i, -149, 127);
    float want = 0.0f;
    for (float v : x) want = std::max(want, std::fabs(v));
    EXPECT_EQ(amax_abs_or_inf(x), want) << n;
    EXPECT_EQ(amax_abs(x), want) << n;
    for (std::size_t at : {std::size_t{0}, n / 2, n > 0 ? n - 1 : 0}) {
      if (n == 0) break;
      for (float bad : {kNaN, -kNaN, kInf, -kInf}) {
        std::vector<float> y = x;
        y[at] = bad;
        EXPECT_EQ(amax_abs_or_inf(y), kInf) << n << " at " << at;
        EXPECT_THROW(amax_abs(y), lowsync::Error);
      }
    }
  }
  EXPECT_EQ(bits_of(amax_abs_or_inf(std::vector<float>{-0.0f})), 0u);
}

}  // namespace
}  // namespace lowsync::tensor
