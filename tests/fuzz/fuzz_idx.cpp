// libFuzzer target: the IDX reader (src/data/dataset.cpp). The input is split into an image file
// and a label file (first two bytes: the image part's length), written to temporary files, and
// read with data::read_idx and data::read_idx_labels. Bad input must be a lowsync::Error; a crash,
// a sanitizer report or a huge allocation is a finding.
#include "lowsync/core/error.hpp"
#include "lowsync/data/dataset.hpp"
#include "fuzz_files.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t split = std::min<std::size_t>(size - 2, (std::size_t{data[0]} << 8) | data[1]);
  static const lowsync::fuzz::TempFile images("idx-images"), labels("idx-labels");
  images.write(data + 2, split);
  labels.write(data + 2 + split, size - 2 - split);
  try {
    const auto d = lowsync::data::read_idx(images.path(), labels.path());
    // What the reader promises: a consistent, in-range dataset.
    if (d.count < 1 || d.pixels.size() != static_cast<std::size_t>(d.count) * d.sample_size() ||
        d.labels.size() != static_cast<std::size_t>(d.count))
      __builtin_trap();
    for (const auto l : d.labels)
      if (l < 0 || l > 9) __builtin_trap();
  } catch (const lowsync::Error&) {
  }
  try {
    const auto l = lowsync::data::read_idx_labels(labels.path());
    if (l.empty()) __builtin_trap();
  } catch (const lowsync::Error&) {
  }
  return 0;
}
