// Span conversions between float and the 16-bit formats (ALGORITHMS.md section 3), as Kokkos
// kernels over the scalar codecs of include/lowsync/tensor/half.hpp.
#include "lowsync/tensor/half.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>

#include <cstddef>
#include <cstdint>

#include "lowsync/core/error.hpp"

namespace lowsync::tensor {
namespace {

using SerialRange = Kokkos::RangePolicy<Kokkos::Serial, Kokkos::IndexType<std::int64_t>>;

void check_sizes(const char* what, std::size_t in, std::size_t out) {
  if (in != out) fail("{}: input has {} elements but output has {}", what, in, out);
}

}  // namespace

void bf16_encode(std::span<const float> x, std::span<Bf16Bits> out) {
  check_sizes("bf16_encode", x.size(), out.size());
  const float* in = x.data();
  Bf16Bits* dst = out.data();
  Kokkos::parallel_for("lowsync::bf16_encode", SerialRange(0, static_cast<std::int64_t>(x.size())),
                       KOKKOS_LAMBDA(const std::int64_t i) { dst[i] = bf16_encode(in[i]); });
}

void bf16_decode(std::span<const Bf16Bits> h, std::span<float> out) {
  check_sizes("bf16_decode", h.size(), out.size());
  const Bf16Bits* in = h.data();
  float* dst = out.data();
  Kokkos::parallel_for("lowsync::bf16_decode", SerialRange(0, static_cast<std::int64_t>(h.size())),
                       KOKKOS_LAMBDA(const std::int64_t i) { dst[i] = bf16_decode(in[i]); });
}

void fp16_encode(std::span<const float> x, std::span<Fp16Bits> out) {
  check_sizes("fp16_encode", x.size(), out.size());
  const float* in = x.data();
  Fp16Bits* dst = out.data();
  Kokkos::parallel_for("lowsync::fp16_encode", SerialRange(0, static_cast<std::int64_t>(x.size())),
                       KOKKOS_LAMBDA(const std::int64_t i) { dst[i] = fp16_encode(in[i]); });
}

void fp16_decode(std::span<const Fp16Bits> h, std::span<float> out) {
  check_sizes("fp16_decode", h.size(), out.size());
  const Fp16Bits* in = h.data();
  float* dst = out.data();
  Kokkos::parallel_for("lowsync::fp16_decode", SerialRange(0, static_cast<std::int64_t>(h.size())),
                       KOKKOS_LAMBDA(const std::int64_t i) { dst[i] = fp16_decode(in[i]); });
}

void round_to_16bit(std::span<float> x, bool bf16) {
  float* p = x.data();
  if (bf16)
    Kokkos::parallel_for("lowsync::bf16_round", SerialRange(0, static_cast<std::int64_t>(x.size())),
                         KOKKOS_LAMBDA(const std::int64_t i) { p[i] = bf16_round(p[i]); });
  else
    Kokkos::parallel_for("lowsync::fp16_round", SerialRange(0, static_cast<std::int64_t>(x.size())),
                         KOKKOS_LAMBDA(const std::int64_t i) { p[i] = fp16_round(p[i]); });
}

void encode_16bit(std::span<const float> x, std::span<std::uint16_t> out, bool bf16) {
  if (bf16) bf16_encode(x, out);
  else fp16_encode(x, out);
}

bool all_finite_16bit(std::span<const std::uint16_t> h, bool bf16) {
  const std::uint16_t exponent = bf16 ? 0x7f80u : 0x7c00u;
  return std::none_of(h.begin(), h.end(), [&](std::uint16_t x) { return (x & exponent) == exponent; });
}

void decode_16bit(std::span<const std::uint16_t> h, std::span<float> out, bool bf16) {
  if (bf16) bf16_decode(h, out);
  else fp16_decode(h, out);
}

}  // namespace lowsync::tensor
