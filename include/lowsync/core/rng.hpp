// Counter-based random numbers: a value is a pure function of (seed, keys..., counter), so any
// rank can regenerate any draw (ZO directions, stochastic rounding, shared FDA vectors) without
// storing it and without a stream that depends on call order. Mixer: SplitMix64 finalizer.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

namespace lowsync {

constexpr std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Hash a list of keys (seed, round, rank, tensor, ...) into one 64-bit stream key.
constexpr std::uint64_t stream_key(std::initializer_list<std::uint64_t> keys) {
  std::uint64_t h = 0x6a09e667f3bcc909ULL;
  for (std::uint64_t k : keys) h = mix64(h ^ mix64(k));
  return h;
}

// The i-th 64 random bits of the stream `key`.
constexpr std::uint64_t random_bits(std::uint64_t key, std::uint64_t i) {
  return mix64(key ^ mix64(i + 0x632be59bd9b4e019ULL));
}

// Uniform in [0, 1) with 24 random bits (exactly representable as float).
constexpr float uniform01(std::uint64_t key, std::uint64_t i) {
  return static_cast<float>(random_bits(key, i) >> 40) * (1.0f / 16777216.0f);
}

// Standard normal via Box-Muller on two 32-bit halves of one draw (u1 in (0,1]).
inline float normal01(std::uint64_t key, std::uint64_t i) {
  const std::uint64_t b = random_bits(key, i);
  const double u1 = (static_cast<double>(b >> 32) + 1.0) * (1.0 / 4294967296.0);
  const double u2 = static_cast<double>(b & 0xffffffffULL) * (1.0 / 4294967296.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace lowsync
