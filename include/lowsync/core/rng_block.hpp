// Blocks of counter-based standard normals, bitwise equal to normal01 (core/rng.hpp) but
// vectorised: the hash, log, cos and sqrt of Box-Muller run as SIMD loops over a block, and the
// rare value whose fp32 rounding the vector maths cannot decide is recomputed by normal01 itself.
// Used where one step draws millions of normals (zeroth-order directions, ALGORITHMS.md §2).
#pragma once

#include <cstddef>
#include <cstdint>

namespace lowsync {

// out[i] = normal01(key, first + i) for i < count, bitwise.
void normal01_block(std::uint64_t key, std::uint64_t first, std::size_t count, float* out);
// out[i] = normal01(key, index[i]) for i < count, bitwise (indices in any order).
void normal01_gather(std::uint64_t key, const std::uint64_t* index, std::size_t count, float* out);

// How far (in units of the last place of the double Box-Muller product) the vector maths may be
// from libm's before a value is sent to the scalar path: values whose product lies within this many
// double ulps of an fp32 rounding midpoint are recomputed with normal01. The vector log and cos
// are within a few ulps of the correctly rounded ones (fdlibm's algorithms; measured by the unit
// test), so the guard is an order of magnitude wider than the worst difference.
inline constexpr std::uint64_t kNormalBlockGuardUlps = 256;

}  // namespace lowsync
