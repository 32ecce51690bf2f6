// BatchSource: where a learner's training batches come from, whatever the workload: image samples
// (data::Loader, data/loader.hpp) or byte windows of a text corpus (data::TextWindows,
// data/text.hpp). Its whole state is a cursor of two integers, so a checkpoint restores the stream.
#pragma once

#include "lowsync/data/batch.hpp"

#include <cstdint>

namespace lowsync::data {

struct LoaderCursor {
  std::int64_t epoch = 0;     // images: the epoch; text: the draw stream (a new one after a reshard)
  std::int64_t position = 0;  // images: next index into this epoch's order; text: draws so far in the stream
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // This rank's next batch; valid until the next call.
  virtual Batch next() = 0;
  virtual LoaderCursor cursor() const = 0;
  // Restores a cursor of this source (throws on one that cannot be this source's).
  virtual void set_cursor(LoaderCursor c) = 0;
  // Images: the samples of this rank's partition; text: the training windows of its sources. A
  // checkpoint stores it to notice changed data.
  virtual std::int64_t samples() const = 0;
  // Passes over this rank's training data so far (metrics.csv column epoch).
  virtual double epoch_progress() const = 0;
};

}  // namespace lowsync::data
