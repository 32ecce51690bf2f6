// IDX reader on small files the test writes (gzip and plain), including corrupt ones; the
// partitions (coverage, skew, determinism); the loader's epochs and cursor.
#include "lowsync/core/error.hpp"
#include "lowsync/data/dataset.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/data/partition.hpp"
#include "lowsync/data/registry.hpp"

#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

namespace lowsync::data {
namespace {

namespace fs = std::filesystem;

std::vector<unsigned char> be32(std::uint32_t v) {
  return {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 8),
          static_cast<unsigned char>(v)};
}

void write_bytes(const fs::path& p, const std::vector<unsigned char>& bytes, bool gz) {
  if (gz) {
    gzFile f = gzopen(p.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

std::vector<unsigned char> image_file(std::uint32_t count, std::uint32_t rows, std::uint32_t cols) {
  std::vector<unsigned char> b;
  for (auto v : {0x803u, count, rows, cols}) {
    auto x = be32(v);
    b.insert(b.end(), x.begin(), x.end());
  }
  for (std::uint32_t i = 0; i < count * rows * cols; ++i) b.push_back(static_cast<unsigned char>(i % 256));
  return b;
}

std::vector<unsigned char> label_file(std::uint32_t count, unsigned char max_label = 9) {
  std::vector<unsigned char> b;
  for (auto v : {0x801u, count}) {
    auto x = be32(v);
    b.insert(b.end(), x.begin(), x.end());
  }
  for (std::uint32_t i = 0; i < count; ++i) b.push_back(static_cast<unsigned char>(i % (max_label + 1)));
  return b;
}

class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lowsync_idx_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string error_of(const fs::path& img, const fs::path& lab) {
    try {
      read_idx(img, lab);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(IdxTest, ReadsGzipAndPlainFiles) {
  for (bool gz : {true, false}) {
    write_bytes(dir_ / "img", image_file(5, 3, 2), gz);
    write_bytes(dir_ / "lab", label_file(5), gz);
    const Dataset d = read_idx(dir_ / "img", dir_ / "lab");
    EXPECT_EQ(d.count, 5);
    EXPECT_EQ(d.rows, 3);
    EXPECT_EQ(d.cols, 2);
    EXPECT_EQ(d.pixels[7], 7);
    EXPECT_EQ(d.labels[4], 4);
    std::vector<float> f(6);
    d.images_as_float(1, 1, f.data());
    EXPECT_FLOAT_EQ(f[0], 6.0f / 255.0f);
  }
}

TEST_F(IdxTest, CorruptFilesGiveErrorsNamingTheFile) {
  const auto img = dir_ / "img.gz", lab = dir_ / "lab.gz";
  write_bytes(lab, label_file(5), true);
  EXPECT_NE(error_of(dir_ / "missing.gz", lab).find("missing.gz' does not exist"), std::string::npos);

  auto truncated = image_file(5, 3, 2);
  truncated.resize(truncated.size() - 4);
  write_bytes(img, truncated, true);
  EXPECT_NE(error_of(img, lab).find("img.gz' is truncated"), std::string::npos) << error_of(img, lab);

  auto bad_magic = image_file(5, 3, 2);
  bad_magic[3] = 0x01;
  write_bytes(img, bad_magic, true);
  EXPECT_NE(error_of(img, lab).find("not an IDX image file"), std::string::npos);

  write_bytes(img, image_file(5, 3, 2), true);
  write_bytes(lab, label_file(4), true);
  EXPECT_NE(error_of(img, lab).find("has 4 labels but"), std::string::npos);

  write_bytes(img, image_file(12, 3, 2), true);
  write_bytes(lab, label_file(12, 11), true);
  EXPECT_NE(error_of(img, lab).find("out of range"), std::string::npos);

  std::vector<unsigned char> garbage = {0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3};
  write_bytes(img, garbage, false);
  EXPECT_NE(error_of(img, lab).find("img.gz'"), std::string::npos);
}

std::vector<std::int32_t> cyclic_labels(std::size_t n) {
  std::vector<std::int32_t> l(n);
  for (std::size_t i = 0; i < n; ++i) l[i] = static_cast<std::int32_t>((i * 7919) % 10);
  return l;
}

TEST(Partition, IidAndShardsCoverEverySampleExactlyOnce) {
  const auto labels = cyclic_labels(1003);
  for (const std::string method : {"iid", "shards"}) {
    for (int k : {1, 3, 4}) {
      const auto parts = partition(labels, k, {method, 0.5, 2, 42});
      std::vector<int> seen(labels.size(), 0);
      for (const auto& p : parts)
        for (auto i : p) ++seen[i];
      EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; })) << method << " k=" << k;
    }
  }
}

TEST(Partition, DirichletCoversAndSkewGrowsAsAlphaShrinks) {
  const auto labels = cyclic_labels(6000);
  auto skew = [&](double alpha) {
    const auto parts = partition(labels, 4, {"dirichlet", alpha, 2, 3});
    std::size_t total = 0;
    double max_share = 0.0;  // mean over ranks of the largest label share
    for (const auto& p : parts) {
      total += p.size();
      const auto h = label_histogram(p, labels);
      max_share += static_cast<double>(*std::max_element(h.begin(), h.end())) / static_cast<double>(p.size()) / 4.0;
    }
    EXPECT_EQ(total, labels.size());
    return max_share;
  };
  const double iid_like = skew(1000.0), mid = skew(1.0), skewed = skew(0.05);
  EXPECT_LT(iid_like, 0.15);  // 10 balanced labels: ~0.1
  EXPECT_GT(mid, iid_like);
  EXPECT_GT(skewed, 0.3);  // 4 ranks share 10 labels: each holds a few dominant ones
  EXPECT_GT(skewed, mid);
}

// data.alpha = 1e-6 makes every Gamma(alpha) draw underflow; the split must still be the extreme
// skew asked for (each class on one rank), not an even one, and stay seeded.
TEST(Partition, DirichletTinyAlphaGivesEachClassToOneRank) {
  const auto labels = cyclic_labels(6000);
  for (int k : {2, 4}) {
    const auto parts = partition(labels, k, {"dirichlet", 1e-6, 2, 7});
    std::size_t total = 0;
    std::vector<std::int64_t> whole(10, 0), largest(10, 0);
    for (const auto& p : parts) {
      total += p.size();
      EXPECT_GE(p.size(), 10u) << "k=" << k;
      const auto h = label_histogram(p, labels);
      for (int c = 0; c < 10; ++c) whole[c] += h[c], largest[c] = std::max(largest[c], h[c]);
    }
    EXPECT_EQ(total, labels.size());
    for (int c = 0; c < 10; ++c) EXPECT_EQ(largest[c], whole[c]) << "class " << c << " split over ranks, k=" << k;
    EXPECT_EQ(parts, partition(labels, k, {"dirichlet", 1e-6, 2, 7}));
  }
  // Another seed deals the classes out differently.
  EXPECT_NE(partition(labels, 4, {"dirichlet", 1e-6, 2, 7}), partition(labels, 4, {"dirichlet", 1e-6, 2, 8}));
}

TEST(Partition, DeterministicFromSeed) {
  const auto labels = cyclic_labels(500);
  for (const std::string method : {"iid", "dirichlet", "shards"}) {
    EXPECT_EQ(partition(labels, 3, {method, 0.3, 2, 5}), partition(labels, 3, {method, 0.3, 2, 5})) << method;
    EXPECT_NE(partition(labels, 3, {method, 0.3, 2, 5}), partition(labels, 3, {method, 0.3, 2, 6})) << method;
  }
  EXPECT_THROW(partition(labels, 3, {"random", 0.3, 2, 5}), Error);
  EXPECT_THROW(partition(labels, 1000, {"iid", 0.3, 2, 5}), Error);
}

TEST(Loader, EpochsVisitEverySampleAndCursorRestoresTheStream) {
  Dataset d;
  d.count = 10;
  d.rows = d.cols = 1;
  for (int i = 0; i < 10; ++i) {
    d.pixels.push_back(static_cast<std::uint8_t>(i));
    d.labels.push_back(i % 10);
  }
  std::vector<std::int64_t> idx = {1, 3, 5, 7, 9};
  Loader a(d, idx, 5, 11, 0);
  std::multiset<int> epoch0;
  auto b = a.next();
  for (int i = 0; i < 5; ++i) epoch0.insert(b.labels[i]);
  EXPECT_EQ(epoch0, (std::multiset<int>{1, 3, 5, 7, 9}));
  Loader c(d, idx, 5, 11, 0);
  a.next();
  c.set_cursor(a.cursor());
  const auto x = a.next(), y = c.next();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(x.labels[i], y.labels[i]);
}

}  // namespace
}  // namespace lowsync::data

namespace lowsync::data {
namespace {

// data.name: the registry's fashion-mnist entry reads the same files as the direct loader, its
// labels-only reader agrees with it, and an unknown name is one line listing the known ones.
TEST_F(IdxTest, RegistryLoadsDatasetsByName) {
  write_bytes(dir_ / "train-images-idx3-ubyte.gz", image_file(12, 28, 28), true);
  write_bytes(dir_ / "train-labels-idx1-ubyte.gz", label_file(12), true);
  write_bytes(dir_ / "t10k-images-idx3-ubyte.gz", image_file(5, 28, 28), true);
  write_bytes(dir_ / "t10k-labels-idx1-ubyte.gz", label_file(5), true);
  const DatasetEntry& e = dataset_entry("fashion-mnist");
  const ImageSplits by_name = e.load(dir_, 10);
  const ImageSplits direct = load_fashion_mnist(dir_, 10);
  EXPECT_EQ(by_name.train.count, 10);
  EXPECT_EQ(by_name.test.count, 5);
  EXPECT_EQ(by_name.train.pixels, direct.train.pixels);
  EXPECT_EQ(by_name.train.labels, direct.train.labels);
  EXPECT_EQ(e.train_labels(dir_, 10), direct.train.labels);
  EXPECT_EQ(dataset_names(), (std::vector<std::string>{"fashion-mnist", "fortunes"}));
  try {
    dataset_entry("cifar");
    FAIL() << "unknown dataset accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("data.name = 'cifar'"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("known: fashion-mnist, fortunes"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace lowsync::data
