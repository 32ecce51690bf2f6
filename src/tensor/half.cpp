// Span conversions between float and the 16-bit formats (ALGORITHMS.md section 3): vectorised
// loops over the scalar codecs of include/lowsync/tensor/half.hpp (bf16) and F16C (fp16).
#include "lowsync/tensor/half.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "lowsync/core/error.hpp"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace lowsync::tensor {
namespace {

void check_sizes(const char* what, std::size_t in, std::size_t out) {
  if (in != out) fail("{}: input has {} elements but output has {}", what, in, out);
}

// Plain restrict-qualified loops (no overlap check, so they vectorise). The fp16 ones go
// through F16C eight values at a time: GCC 12 does not vectorise conversions through _Float16
// without AVX512-FP16. vcvtps2ph (nearest-even) and vcvtph2ps are the instructions the scalar
// fp16_encode / fp16_decode compile to, so the bits are the same (test_half checks every
// pattern); the tail and non-F16C builds use the scalar codec.
void fp16_encode_loop(const float* __restrict in, Fp16Bits* __restrict out, std::size_t n) {
  std::size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) out[i] = fp16_encode(in[i]);
}

void fp16_decode_loop(const Fp16Bits* __restrict in, float* __restrict out, std::size_t n) {
  std::size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
  for (; i < n; ++i) out[i] = fp16_decode(in[i]);
}

}  // namespace

void bf16_encode(std::span<const float> x, std::span<Bf16Bits> out) {
  check_sizes("bf16_encode", x.size(), out.size());
  const float* __restrict in = x.data();
  Bf16Bits* __restrict dst = out.data();
  for (std::size_t i = 0; i < x.size(); ++i) dst[i] = bf16_encode(in[i]);
}

void bf16_decode(std::span<const Bf16Bits> h, std::span<float> out) {
  check_sizes("bf16_decode", h.size(), out.size());
  const Bf16Bits* __restrict in = h.data();
  float* __restrict dst = out.data();
  for (std::size_t i = 0; i < h.size(); ++i) dst[i] = bf16_decode(in[i]);
}

void fp16_encode(std::span<const float> x, std::span<Fp16Bits> out) {
  check_sizes("fp16_encode", x.size(), out.size());
  fp16_encode_loop(x.data(), out.data(), x.size());
}

void fp16_decode(std::span<const Fp16Bits> h, std::span<float> out) {
  check_sizes("fp16_decode", h.size(), out.size());
  fp16_decode_loop(h.data(), out.data(), h.size());
}

void round_to_16bit(std::span<float> x, bool bf16) {
  float* __restrict p = x.data();
  const std::size_t n = x.size();
  if (bf16) {
    for (std::size_t i = 0; i < n; ++i) p[i] = bf16_round(p[i]);
    return;
  }
  // fp16: through a small buffer of bit patterns, so both halves take the F16C loops.
  constexpr std::size_t kBlock = 1024;
  Fp16Bits bits[kBlock];
  for (std::size_t first = 0; first < n; first += kBlock) {
    const std::size_t m = std::min(kBlock, n - first);
    fp16_encode_loop(p + first, bits, m);
    fp16_decode_loop(bits, p + first, m);
  }
}

void encode_16bit(std::span<const float> x, std::span<std::uint16_t> out, bool bf16) {
  if (bf16) bf16_encode(x, out);
  else fp16_encode(x, out);
}

bool all_finite_16bit(std::span<const std::uint16_t> h, bool bf16) {
  // One OR-reduction of "exponent field all ones" over the span, no early exit: vectorises.
  const std::uint16_t exponent = bf16 ? 0x7f80u : 0x7c00u;
  const std::uint16_t* __restrict in = h.data();
  std::uint32_t special = 0;
  for (std::size_t i = 0; i < h.size(); ++i) special |= (in[i] & exponent) == exponent ? 1u : 0u;
  return special == 0;
}

void decode_16bit(std::span<const std::uint16_t> h, std::span<float> out, bool bf16) {
  if (bf16) bf16_decode(h, out);
  else fp16_decode(h, out);
}

}  // namespace lowsync::tensor
