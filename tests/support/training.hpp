// Helpers for MPI tests that train: synthetic batches that are a pure function of (seed, step,
// sample), so N ranks x batch b and 1 rank x batch N*b can see exactly the same samples.
#pragma once

#include "lowsync/core/rng.hpp"
#include "lowsync/data/batch.hpp"

#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace lowsync::testing {

struct SyntheticBatch {
  std::vector<float> images;
  std::vector<std::int32_t> labels;
  data::Batch batch() const { return {images.data(), labels.data(), static_cast<int>(labels.size())}; }
};

// Samples [first, first + n) of step `step`: images with a label-dependent bright band, so a
// model can learn something in a few steps.
inline SyntheticBatch synthetic_batch(std::uint64_t seed, std::int64_t step, int first, int n) {
  SyntheticBatch b;
  b.images.resize(static_cast<std::size_t>(n) * 784);
  b.labels.resize(n);
  for (int i = 0; i < n; ++i) {
    const std::uint64_t key = stream_key({seed, static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(first + i)});
    const int label = static_cast<int>(random_bits(key, 999) % 10);
    b.labels[i] = label;
    for (int p = 0; p < 784; ++p) {
      const bool band = (p / 28) / 3 == label;
      b.images[static_cast<std::size_t>(i) * 784 + p] = 0.3f * uniform01(key, p) + (band ? 0.7f : 0.0f);
    }
  }
  return b;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// True when every rank passed the same value (compared as bits).
template <class T> bool same_value_on_all_ranks(T value) {
  std::uint64_t bits = 0;
  static_assert(sizeof(T) <= sizeof(bits));
  std::memcpy(&bits, &value, sizeof(T));
  std::uint64_t lo = bits, hi = bits;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

}  // namespace lowsync::testing
