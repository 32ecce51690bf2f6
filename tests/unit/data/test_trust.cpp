// Inputs that must be refused with one line: a train.batch larger than some rank's partition
// (checked on every rank from the same partition), and IDX headers that claim more data than the
// file holds (refused at the file's end, without allocating what the header claims).
#include "lowsync/core/error.hpp"
#include "lowsync/data/dataset.hpp"
#include "lowsync/data/partition.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace lowsync::data {
namespace {

namespace fs = std::filesystem;

std::string error_of(const auto& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(BatchFits, RefusesTheFirstRankShortOfABatchNamingItsCountAndTheKey) {
  const std::vector<std::vector<std::int64_t>> parts = {{0, 1, 2, 3, 4}, {5, 6}, {7, 8, 9}};
  PartitionSpec spec;
  spec.method = "dirichlet";
  EXPECT_NO_THROW(check_batch_fits(parts, 2, spec));
  EXPECT_EQ(error_of([&] { check_batch_fits(parts, 3, spec); }),
            "train.batch = 3 is larger than rank 1's partition of 2 training samples (10 samples over 3 ranks, "
            "data.partition = \"dirichlet\"); lower train.batch, raise data.train_limit or use fewer ranks");
}

TEST(BatchFits, IidSplitOf100Over4RanksHolds25EachSoBatch64IsRefused) {
  std::vector<std::int32_t> labels(100);
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int32_t>(i % 10);
  const PartitionSpec spec;
  const auto parts = partition(labels, 4, spec);
  EXPECT_NO_THROW(check_batch_fits(parts, 25, spec));
  EXPECT_NE(error_of([&] { check_batch_fits(parts, 64, spec); }).find("rank 0's partition of 25 training samples"),
            std::string::npos);
}

void write_bytes(const fs::path& p, const std::vector<unsigned char>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

TEST(IdxTrust, AHeaderClaimingGigabytesFailsAtTheFilesEnd) {
  const fs::path dir = fs::temp_directory_path() / ("lowsync-idx-trust-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  // 100,000,000 images of 28 x 28 claimed (78 GB), 16 pixel bytes present.
  std::vector<unsigned char> img = {0, 0, 8, 3, 0x05, 0xf5, 0xe1, 0x00, 0, 0, 0, 28, 0, 0, 0, 28};
  img.resize(img.size() + 16, 7);
  write_bytes(dir / "img", img);
  write_bytes(dir / "lab", {0, 0, 8, 1, 0, 0, 0, 1, 3});
  const std::string e = error_of([&] { read_idx(dir / "img", dir / "lab"); });
  EXPECT_NE(e.find("declares 100000000 x 28 x 28 pixels"), std::string::npos) << e;
  // 10,000 images of 28 x 28 claimed (7.8 MB), 16 present: truncated, counted from the start.
  img[4] = 0, img[5] = 0, img[6] = 0x27, img[7] = 0x10;
  write_bytes(dir / "img", img);
  EXPECT_EQ(error_of([&] { read_idx(dir / "img", dir / "lab"); }),
            "data file '" + (dir / "img").string() + "' is truncated: the pixels ends after 16 of 7840000 bytes");
  // A label file alone: a claimed count beyond the data.
  write_bytes(dir / "lab", {0, 0, 8, 1, 0x7f, 0, 0, 0, 3});
  EXPECT_NE(error_of([&] { read_idx_labels(dir / "lab"); }).find("implausible label count"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lowsync::data
