// Loader: this rank's samples in batches, reshuffled every epoch from (seed, rank, epoch). Its
// whole state is (epoch, position), so a checkpoint can restore it exactly.
#pragma once

#include "lowsync/core/memory.hpp"
#include "lowsync/data/batch_source.hpp"
#include "lowsync/data/dataset.hpp"

#include <cstdint>
#include <vector>

namespace lowsync::data {

class Loader final : public BatchSource {
 public:
  Loader(const Dataset& dataset, std::vector<std::int64_t> indices, int batch, std::uint64_t seed,
         int rank);
  // Next batch; wraps into a new (reshuffled) epoch as needed. The batch stays valid until the
  // next call.
  Batch next() override;
  LoaderCursor cursor() const override { return cursor_; }
  void set_cursor(LoaderCursor c) override;
  std::int64_t samples() const override { return static_cast<std::int64_t>(indices_.size()); }
  const std::vector<std::int64_t>& indices() const { return indices_; }
  double epoch_progress() const override;

 private:
  void shuffle_for_epoch();
  const Dataset& dataset_;
  std::vector<std::int64_t> indices_;
  std::vector<std::int64_t> order_;
  int batch_;
  std::uint64_t seed_;
  int rank_;
  LoaderCursor cursor_;
  memory::TrackedBuffer<float> images_;          // [batch, 784]
  memory::TrackedBuffer<std::int32_t> labels_;   // [batch]
};

}  // namespace lowsync::data
