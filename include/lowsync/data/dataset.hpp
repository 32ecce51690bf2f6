// Fashion-MNIST in memory: IDX files (gzip or plain) read with zlib and validated, images kept
// as uint8 (a quarter of the fp32 size) and converted to [0, 1] floats batch by batch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lowsync::data {

struct Dataset {
  std::vector<std::uint8_t> pixels;  // [count, rows * cols]
  std::vector<std::int32_t> labels;  // [count]
  std::int64_t count = 0;
  int rows = 0;
  int cols = 0;
  int sample_size() const { return rows * cols; }
  // Images [first, first + n) as floats in [0, 1], into out[n * sample_size()].
  void images_as_float(std::int64_t first, std::int64_t n, float* out) const;
};

// Reads an IDX image file (magic 0x803) and label file (magic 0x801); every problem (missing
// file, bad magic, truncated data, count mismatch, label out of range) is an Error naming the file.
Dataset read_idx(const std::filesystem::path& images, const std::filesystem::path& labels,
                 int num_classes = 10);

// The labels of one IDX label file alone (magic 0x801), checked as read_idx checks them.
std::vector<std::int32_t> read_idx_labels(const std::filesystem::path& labels, int num_classes = 10);

// The train/test split of a labelled image dataset (data/registry.hpp loads one by data.name).
struct ImageSplits {
  Dataset train;
  Dataset test;
};
using FashionMnist = ImageSplits;

// dir holds train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-*; train_limit > 0
// keeps only the first train_limit training samples.
FashionMnist load_fashion_mnist(const std::filesystem::path& dir, std::int64_t train_limit = 0);

// The training labels of `dir` (first train_limit when > 0): what the partition needs, without the
// pixels.
std::vector<std::int32_t> load_train_labels(const std::filesystem::path& dir, std::int64_t train_limit = 0);

}  // namespace lowsync::data
