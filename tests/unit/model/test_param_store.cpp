// ParamStore (model/param_store.hpp): the one view optimizers, strategies and checkpoints take.
// Its fp32 reads and writes against the scalar bf16/fp16 codecs of tensor/half.hpp, the chunked
// visitor against a whole-buffer write, and the refusals (wrong dtype, range, sizes).
#include "lowsync/model/param_store.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <vector>

namespace lowsync::model {
namespace {

std::vector<float> sample_values(std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::ldexp(2.0f * uniform01(5, i) - 1.0f, static_cast<int>(i % 40) - 20);
  return v;
}

TEST(ParamStore, Fp32ReadWriteAreCopies) {
  std::vector<float> stored(100, 0.0f);
  const ParamStore s(stored);
  EXPECT_EQ(s.dtype(), StoreDType::fp32);
  EXPECT_EQ(s.bytes_per_value(), 4u);
  EXPECT_EQ(s.raw_bytes().size(), 400u);
  const auto values = sample_values(100);
  s.write_fp32(values);
  EXPECT_EQ(stored, values);
  EXPECT_EQ(s.to_fp32(), values);
  EXPECT_THROW(s.bits(), Error);
}

TEST(ParamStore, SixteenBitMatchesScalarCodecs) {
  for (const bool bf16 : {true, false}) {
    const std::size_t n = 1000;
    std::vector<std::uint16_t> bits(n);
    const ParamStore s(bits, bf16);
    EXPECT_EQ(s.dtype(), bf16 ? StoreDType::bf16 : StoreDType::fp16);
    EXPECT_EQ(s.raw_bytes().size(), 2 * n);
    EXPECT_THROW(s.fp32(), Error);
    const auto values = sample_values(n);
    s.write_fp32(values);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < n; ++i) differ += bits[i] != tensor::encode_16bit(values[i], bf16);
    EXPECT_EQ(differ, 0u) << (bf16 ? "bf16" : "fp16");
    const auto back = s.to_fp32();
    for (std::size_t i = 0; i < n; ++i)
      ASSERT_EQ(std::bit_cast<std::uint32_t>(back[i]), std::bit_cast<std::uint32_t>(tensor::decode_16bit(bits[i], bf16)));
  }
}

TEST(ParamStore, ChunkedVisitorEqualsWholeBufferWrite) {
  for (const bool bf16 : {true, false}) {
    const std::size_t n = 1001;  // not a multiple of the chunk
    std::vector<std::uint16_t> a(n), b(n);
    const auto values = sample_values(n);
    const ParamStore whole(a, bf16), chunked(b, bf16);
    whole.write_fp32(values);
    chunked.write_fp32(values);
    // Halve every value: through the visitor in chunks of 64, and directly on the decoded copy.
    std::vector<std::size_t> offsets;
    chunked.visit_fp32([&](std::span<float> c, std::size_t offset) {
      offsets.push_back(offset);
      for (float& x : c) x *= 0.5f;
    }, 64);
    auto halved = whole.to_fp32();
    for (float& x : halved) x *= 0.5f;
    whole.write_fp32(halved);
    EXPECT_EQ(a, b);
    EXPECT_EQ(offsets.size(), (n + 63) / 64);
    EXPECT_EQ(offsets.back(), 64 * (offsets.size() - 1));
  }
}

TEST(ParamStore, SubspanFiniteAndRefusals) {
  std::vector<float> stored = sample_values(10);
  const ParamStore s(stored);
  EXPECT_TRUE(s.all_finite());
  stored[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(s.all_finite());
  EXPECT_TRUE(s.subspan(0, 7).all_finite());
  EXPECT_FALSE(s.subspan(5, 5).all_finite());
  EXPECT_THROW(s.subspan(5, 6), Error);
  std::vector<float> wrong(9);
  EXPECT_THROW(s.read_fp32(wrong), Error);
  EXPECT_THROW(s.write_fp32(wrong), Error);
  std::vector<std::uint16_t> bits(4, 0x7c00);  // fp16 +inf; in bf16 a finite 2^121
  EXPECT_FALSE(ParamStore(bits, false).all_finite());
  EXPECT_TRUE(ParamStore(bits, true).all_finite());
}

}  // namespace
}  // namespace lowsync::model
