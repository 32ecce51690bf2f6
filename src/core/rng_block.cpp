// normal01 in blocks (core/rng_block.hpp): Box-Muller over SIMD loops with fdlibm's log and
// sin/cos kernels (branch-free forms of e_log.c, k_sin.c, k_cos.c, e_rem_pio2.c), then a guard
// that sends every value libm could round to a different fp32 to the scalar normal01.
#include "lowsync/core/rng_block.hpp"

#include "lowsync/core/rng.hpp"

#include <bit>
#include <cmath>

#include <immintrin.h>

namespace lowsync {
namespace {

constexpr std::size_t kChunk = 64;

// fdlibm e_log.c, valid for positive normal x; log(1) = +0 exactly (the sign of zero matters:
// normal01 multiplies sqrt(-2 * log u1) = -0 by the cosine).
inline double log_fdlibm(double x) {
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  constexpr double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                   Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                   Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                   Lg7 = 1.479819860511658591e-01;
  const std::uint64_t bits = std::bit_cast<std::uint64_t>(x);
  std::int64_t hx = static_cast<std::int64_t>(bits >> 32);
  std::int64_t k = (hx >> 20) - 1023;
  hx &= 0x000fffff;
  const std::int64_t i = (hx + 0x95f64) & 0x100000;
  // Mantissa scaled into [sqrt(2)/2, sqrt(2)).
  const std::uint64_t mbits = (static_cast<std::uint64_t>(hx | (i ^ 0x3ff00000)) << 32) | (bits & 0xffffffffULL);
  k += i >> 20;
  const double f = std::bit_cast<double>(mbits) - 1.0;
  const double s = f / (2.0 + f);
  const double dk = static_cast<double>(k);
  const double z = s * s, w = z * z;
  const double t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
  const double t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
  const double R = t2 + t1;
  const double hfsq = 0.5 * f * f;
  return dk * ln2_hi - ((hfsq - (s * (hfsq + R) + dk * ln2_lo)) - f);
}

// fdlibm cos for x in [0, 2*pi): reduction by n * pi/2 in two Cody-Waite steps (e_rem_pio2.c's
// second iteration, ~118 bits), then k_cos / k_sin on the double-double remainder (y0, y1).
inline double cos_fdlibm(double x) {
  constexpr double invpio2 = 6.36619772367581382433e-01, pio2_1 = 1.57079632673412561417e+00,
                   pio2_2 = 6.07710050630396597660e-11, pio2_2t = 2.02226624879595063154e-21;
  const double fn = static_cast<double>(static_cast<std::int64_t>(x * invpio2 + 0.5));
  const double r1 = x - fn * pio2_1;
  double w = fn * pio2_2;
  const double r = r1 - w;
  w = fn * pio2_2t - ((r1 - r) - w);
  const double y0 = r - w;
  const double y1 = (r - y0) - w;
  const std::int64_t n = static_cast<std::int64_t>(fn) & 3;

  const double z = y0 * y0;
  // k_cos.c
  constexpr double C1 = 4.16666666666666019037e-02, C2 = -1.38888888888741095749e-03,
                   C3 = 2.48015872894767294178e-05, C4 = -2.75573143513906633035e-07,
                   C5 = 2.08757232129817482790e-09, C6 = -1.13596475577881948265e-11;
  const double rc = z * (C1 + z * (C2 + z * (C3 + z * (C4 + z * (C5 + z * C6)))));
  const std::uint64_t ix = (std::bit_cast<std::uint64_t>(y0) >> 32) & 0x7fffffffULL;
  const double quarter = std::bit_cast<double>((ix - 0x00200000ULL) << 32);  // |y0|/4, low word 0
  const double qx = ix < 0x3FD33333ULL ? 0.0 : (ix > 0x3fe90000ULL ? 0.28125 : quarter);
  const double hz = 0.5 * z - qx;
  const double a = 1.0 - qx;
  const double c = a - (hz - (z * rc - y0 * y1));
  // k_sin.c with iy = 1
  constexpr double S1 = -1.66666666666666324348e-01, S2 = 8.33333333332248946124e-03,
                   S3 = -1.98412698298579493134e-04, S4 = 2.75573137070700676789e-06,
                   S5 = -2.50507602534068634195e-08, S6 = 1.58969099521155010221e-10;
  const double v = z * y0;
  const double rs = S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)));
  const double s = y0 - ((z * (0.5 * y1 - v * rs) - y1) - v * S1);
  const double mag = (n & 1) != 0 ? s : c;
  return (n == 1 || n == 2) ? -mag : mag;
}

// IEEE sqrt over an array: GCC keeps std::sqrt a scalar libm call under -fmath-errno (the
// project default), so the vector instruction is spelled out; all of them round correctly.
inline void sqrt_array(double* x, std::size_t count) {
  std::size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 8 <= count; i += 8) _mm512_storeu_pd(x + i, _mm512_sqrt_pd(_mm512_loadu_pd(x + i)));
#elif defined(__AVX__)
  for (; i + 4 <= count; i += 4) _mm256_storeu_pd(x + i, _mm256_sqrt_pd(_mm256_loadu_pd(x + i)));
#endif
  for (; i < count; ++i) x[i] = std::sqrt(x[i]);
}

// One chunk from its 64-bit draws: the fp32 normals and a flag per value the guard rejects.
inline void box_muller_chunk(const std::uint64_t* bits, std::size_t count, float* out, std::uint8_t* redo) {
  alignas(64) double radius[kChunk], cosine[kChunk];
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t b = bits[i];
    const double u1 = (static_cast<double>(b >> 32) + 1.0) * (1.0 / 4294967296.0);
    const double u2 = static_cast<double>(b & 0xffffffffULL) * (1.0 / 4294967296.0);
    radius[i] = -2.0 * log_fdlibm(u1);
    cosine[i] = cos_fdlibm(6.283185307179586 * u2);
  }
  sqrt_array(radius, count);
  for (std::size_t i = 0; i < count; ++i) {
    const double m = radius[i] * cosine[i];
    out[i] = static_cast<float>(m);
    // fp32 keeps 24 of the 53 significant bits: the low 29 decide the rounding, which flips only
    // at the midpoint 2^28. Zero (u1 = 1) is exact in both maths.
    const std::uint64_t low = std::bit_cast<std::uint64_t>(m) & ((1ULL << 29) - 1);
    const std::uint64_t dist = low > (1ULL << 28) ? low - (1ULL << 28) : (1ULL << 28) - low;
    redo[i] = dist <= kNormalBlockGuardUlps ? 1 : 0;
  }
}

template <class Index>
void normal01_chunks(std::uint64_t key, std::size_t count, float* out, Index index) {
  alignas(64) std::uint64_t bits[kChunk];
  alignas(64) std::uint8_t redo[kChunk];
  for (std::size_t first = 0; first < count; first += kChunk) {
    const std::size_t n = count - first < kChunk ? count - first : kChunk;
    for (std::size_t i = 0; i < n; ++i) bits[i] = random_bits(key, index(first + i));
    box_muller_chunk(bits, n, out + first, redo);
    for (std::size_t i = 0; i < n; ++i)
      if (redo[i] != 0) out[first + i] = normal01(key, index(first + i));
  }
}

}  // namespace

void normal01_block(std::uint64_t key, std::uint64_t first, std::size_t count, float* out) {
  normal01_chunks(key, count, out, [first](std::size_t i) { return first + i; });
}

void normal01_gather(std::uint64_t key, const std::uint64_t* index, std::size_t count, float* out) {
  normal01_chunks(key, count, out, [index](std::size_t i) { return index[i]; });
}

}  // namespace lowsync
