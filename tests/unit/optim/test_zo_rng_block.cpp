// normal01_block / normal01_gather (core/rng_block.hpp), the vectorised normals of the
// zeroth-order directions, against the scalar normal01 bit for bit: millions of consecutive
// draws, the Box-Muller edge cases (u1 = 1 gives a signed zero, u1 near 2^-32 the largest value,
// cosine near its zeros), gathers in arbitrary order, and chunk tails.
#include "lowsync/core/rng.hpp"
#include "lowsync/core/rng_block.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <vector>

namespace lowsync {
namespace {

std::size_t count_mismatches(std::uint64_t key, const std::vector<std::uint64_t>& index) {
  std::vector<float> block(index.size());
  normal01_gather(key, index.data(), index.size(), block.data());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < index.size(); ++i)
    bad += std::bit_cast<std::uint32_t>(block[i]) != std::bit_cast<std::uint32_t>(normal01(key, index[i])) ? 1 : 0;
  return bad;
}

TEST(NormalBlock, ConsecutiveDrawsBitwiseEqualScalar) {
  // 3 x 2^21 draws: at the measured fallback rate (~1e-6) a few go through the scalar path, and
  // any error of the vector maths beyond the guard would show as a mismatch.
  const std::size_t n = std::size_t{1} << 21;
  std::vector<float> block(n);
  for (const std::uint64_t key : {std::uint64_t{1}, std::uint64_t{0x7a6f}, stream_key({3, 5, 7})}) {
    normal01_block(key, 12345, n, block.data());
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i)
      bad += std::bit_cast<std::uint32_t>(block[i]) != std::bit_cast<std::uint32_t>(normal01(key, 12345 + i)) ? 1 : 0;
    EXPECT_EQ(bad, 0u) << "key " << key;
  }
}

TEST(NormalBlock, GatherInAnyOrderAndChunkTails) {
  std::vector<std::uint64_t> index;
  for (std::uint64_t i = 0; i < 1000; ++i) index.push_back((i * 2654435761ULL) % 1000003ULL);
  EXPECT_EQ(count_mismatches(42, index), 0u);
  for (const std::size_t n : {std::size_t{1}, std::size_t{63}, std::size_t{64}, std::size_t{65}, std::size_t{129}}) {
    std::vector<std::uint64_t> head(index.begin(), index.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_EQ(count_mismatches(43, head), 0u) << n;
  }
}

// Counters whose 64 random bits land on the Box-Muller edge cases: found by search over the
// stream, so the test exercises them through the public function.
TEST(NormalBlock, EdgeCasesOfBoxMuller) {
  const std::uint64_t key = 77;
  std::vector<std::uint64_t> near_one, tiny_u1, cos_zero;
  for (std::uint64_t j = 0; j < (std::uint64_t{1} << 24) && (near_one.size() < 64 || cos_zero.size() < 64); ++j) {
    const std::uint64_t b = random_bits(key, j);
    if ((b >> 32) >= 0xFFFF0000ULL && near_one.size() < 64) near_one.push_back(j);    // u1 -> 1: r -> 0
    if ((b >> 32) < 0x100ULL && tiny_u1.size() < 64) tiny_u1.push_back(j);            // u1 -> 2^-32: |u| large
    const std::uint64_t lo = b & 0xffffffffULL, q = 0x40000000ULL;                     // u2 near 1/4, 3/4
    if ((lo % (2 * q) > q - 4096 && lo % (2 * q) < q + 4096) && cos_zero.size() < 64) cos_zero.push_back(j);
  }
  ASSERT_GE(near_one.size(), 16u);
  ASSERT_GE(cos_zero.size(), 16u);
  EXPECT_EQ(count_mismatches(key, near_one), 0u);
  EXPECT_EQ(count_mismatches(key, tiny_u1), 0u);
  EXPECT_EQ(count_mismatches(key, cos_zero), 0u);
}

}  // namespace
}  // namespace lowsync
