// Per-tensor scaled FP8 quantizer, fake quantization, straight-through backward and the
// ServerOptimize scale search (ALGORITHMS.md section 1), as Kokkos kernels over the scalar
// codecs of include/lowsync/tensor/fp8.hpp.
#include "lowsync/tensor/fp8.hpp"

#include <Kokkos_Core.hpp>

#include <array>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
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
inline float scaled_clamped(float x, float scale, float max_value) {
  const float y = x / scale;
  if (!std::isfinite(x)) return y;
  return std::fmin(std::fmax(y, -max_value), max_value);
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

float amax_abs(std::span<const float> x, std::string_view what) {
  const float* in = x.data();
  float amax = 0.0f;
  // Non-finite elements reduce as +inf, so one pass both finds amax and detects them.
  Kokkos::parallel_reduce(
      "lowsync::amax_abs", range(x.size()),
      KOKKOS_LAMBDA(const std::int64_t i, float& acc) {
        float v = std::fabs(in[i]);
        if (!(v <= FLT_MAX)) v = std::numeric_limits<float>::infinity();
        if (v > acc) acc = v;
      },
      Kokkos::Max<float>(amax));
  if (x.empty()) return 0.0f;
  if (!(amax <= FLT_MAX)) {
    for (std::size_t i = 0; i < x.size(); ++i)
      if (!std::isfinite(x[i])) fail("{}: non-finite input x[{}] = {}", what, i, x[i]);
  }
  return amax;
}

float fp8_scale(std::span<const float> x, Fp8Format format) {
  return fp8_scale_from_amax(amax_abs(x, "fp8_scale"), format);
}

float quantize(std::span<const float> x, std::span<std::uint8_t> q, Fp8Format format,
               Rounding rounding, std::uint64_t rng_key) {
  check_sizes("quantize", x.size(), q.size());
  const float scale = fp8_scale_from_amax(amax_abs(x, "quantize"), format);
  quantize_with_scale(x, q, format, rounding, rng_key, scale);
  return scale;
}

void quantize_with_scale(std::span<const float> x, std::span<std::uint8_t> q, Fp8Format format,
                         Rounding rounding, std::uint64_t rng_key, float scale) {
  check_sizes("quantize_with_scale", x.size(), q.size());
  check_scale("quantize_with_scale", scale);
  const float* in = x.data();
  std::uint8_t* out = q.data();
  const float max_value = fp8_max(format);
  const bool stochastic = rounding == Rounding::stochastic;
  std::int64_t non_finite = 0;
  // Writes q and counts non-finite inputs in the same pass; the count decides the error.
  Kokkos::parallel_reduce(
      "lowsync::quantize", range(x.size()),
      KOKKOS_LAMBDA(const std::int64_t i, std::int64_t& bad) {
        if (!std::isfinite(in[i])) {
          ++bad;
          return;
        }
        const float y = scaled_clamped(in[i], scale, max_value);
        out[i] = stochastic
                     ? fp8_encode_sr(y, format, uniform01(rng_key, static_cast<std::uint64_t>(i)))
                     : fp8_encode_rne(y, format);
      },
      non_finite);
  if (non_finite > 0) fail_non_finite("quantize", x, format);
}

void dequantize(std::span<const std::uint8_t> q, float scale, Fp8Format format,
                std::span<float> out) {
  check_sizes("dequantize", q.size(), out.size());
  check_scale("dequantize", scale);
  const std::array<float, 256> table = dequant_table(format, scale);
  const std::uint8_t* in = q.data();
  float* dst = out.data();
  Kokkos::parallel_for("lowsync::dequantize", range(q.size()),
                       KOKKOS_LAMBDA(const std::int64_t i) { dst[i] = table[in[i]]; });
}

void fake_quantize(std::span<const float> x, std::span<float> out, Fp8Format format,
                   float scale) {
  check_sizes("fake_quantize", x.size(), out.size());
  check_scale("fake_quantize", scale);
  const std::array<float, 256> table = dequant_table(format, scale);
  const float* in = x.data();
  float* dst = out.data();
  const float max_value = fp8_max(format);
  Kokkos::parallel_for(
      "lowsync::fake_quantize", range(x.size()), KOKKOS_LAMBDA(const std::int64_t i) {
        dst[i] = table[fp8_encode_rne(scaled_clamped(in[i], scale, max_value), format)];
      });
}

void ste_backward(std::span<const float> x, float scale, Fp8Format format,
                  std::span<float> grad) {
  check_sizes("ste_backward", x.size(), grad.size());
  check_scale("ste_backward", scale);
  const float* in = x.data();
  float* g = grad.data();
  const float max_value = fp8_max(format);
  // Same y = x / s as the forward, so the clamped set matches it element for element.
  Kokkos::parallel_for(
      "lowsync::ste_backward", range(x.size()), KOKKOS_LAMBDA(const std::int64_t i) {
        if (std::fabs(in[i] / scale) > max_value) g[i] = 0.0f;
      });
}

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

float best_scale(std::span<const float> w, Fp8Format format) {
  const float amax = amax_abs(w, "best_scale");
  if (amax == 0.0f) return 1.0f;
  const float s0 = fp8_scale_from_amax(amax, format);
  float best = s0;
  double best_error = quantize_sq_error(w, format, s0);
  for (int j = 1; j < kBestScaleCandidates; ++j) {
    const float s = best_scale_candidate(s0, j);
    const double error = quantize_sq_error(w, format, s);
    if (error < best_error) {  // strict: ties keep the smaller j
      best_error = error;
      best = s;
    }
  }
  return best;
}

}  // namespace lowsync::tensor
