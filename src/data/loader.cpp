// Batches of this rank's samples, reshuffled per epoch (Fisher-Yates with counter-based draws
// keyed by seed, rank and epoch, so a cursor alone restores the stream).
#include "lowsync/data/loader.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

namespace lowsync::data {

Loader::Loader(const Dataset& dataset, std::vector<std::int64_t> indices, int batch, std::uint64_t seed, int rank)
    : dataset_(dataset),
      indices_(std::move(indices)),
      batch_(batch),
      seed_(seed),
      rank_(rank),
      images_("loader.images", static_cast<std::size_t>(batch) * dataset.sample_size()),
      labels_("loader.labels", static_cast<std::size_t>(batch)) {
  if (indices_.empty()) fail("data: rank {} received no training samples", rank);
  // A batch would repeat samples within one step. Normally refused earlier on every rank alike
  // (data::check_batch_fits); this guards other callers.
  if (batch > samples())
    fail("train.batch = {} is larger than rank {}'s partition of {} training samples", batch, rank, samples());
  shuffle_for_epoch();
}

void Loader::shuffle_for_epoch() {
  order_ = indices_;
  const std::uint64_t key = stream_key({seed_, 0x10adULL, static_cast<std::uint64_t>(rank_),
                                        static_cast<std::uint64_t>(cursor_.epoch)});
  for (std::size_t i = order_.size() - 1; i > 0; --i) {
    const std::size_t j = random_bits(key, i) % (i + 1);
    std::swap(order_[i], order_[j]);
  }
}

void Loader::set_cursor(LoaderCursor c) {
  if (c.epoch < 0 || c.position < 0 || c.position > samples())
    fail("data loader cursor (epoch {}, position {}) is invalid for {} samples", c.epoch, c.position, samples());
  cursor_ = c;
  shuffle_for_epoch();
}

double Loader::epoch_progress() const {
  return static_cast<double>(cursor_.epoch) + static_cast<double>(cursor_.position) / static_cast<double>(samples());
}

Batch Loader::next() {
  const int size = dataset_.sample_size();
  for (int b = 0; b < batch_; ++b) {
    if (cursor_.position >= samples()) {
      ++cursor_.epoch;
      cursor_.position = 0;
      shuffle_for_epoch();
    }
    const std::int64_t idx = order_[cursor_.position++];
    dataset_.images_as_float(idx, 1, images_.data() + static_cast<std::size_t>(b) * size);
    labels_[b] = dataset_.labels[idx];
  }
  return Batch{images_.data(), labels_.data(), batch_};
}

}  // namespace lowsync::data
