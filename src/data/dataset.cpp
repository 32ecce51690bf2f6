// IDX reader (http://yann.lecun.com/exdb/mnist/ format, big-endian header) through zlib, which
// reads gzip and plain files alike.
#include "lowsync/data/dataset.hpp"

#include "lowsync/core/error.hpp"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>

namespace lowsync::data {
namespace {

constexpr std::uint32_t kMaxSamples = 100'000'000;
constexpr std::uint64_t kMaxPixelBytes = std::uint64_t{16} << 30;  // 16 GiB of uint8 pixels

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

class IdxFile {
 public:
  explicit IdxFile(const std::filesystem::path& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      fail("data file '{}' does not exist (set data.dir, or install dataset-fashion-mnist)", path.string());
    file_.reset(gzopen(path.c_str(), "rb"));
    if (!file_) fail("data file '{}' cannot be opened", path.string());
  }
  // `before` and `total` place this read inside a longer one (for the message only).
  void read(void* out, std::size_t bytes, const char* what, std::size_t before = 0, std::size_t total = 0) {
    auto* p = static_cast<unsigned char*>(out);
    std::size_t done = 0;
    while (done < bytes) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(bytes - done, 1u << 30));
      const int n = gzread(file_.get(), p + done, chunk);
      if (n < 0) {
        int err = 0;
        const char* msg = gzerror(file_.get(), &err);
        fail("data file '{}' is corrupt while reading {}: {}", path_.string(), what, msg ? msg : "zlib error");
      }
      if (n == 0)
        fail("data file '{}' is truncated: {} ends after {} of {} bytes", path_.string(), what, before + done,
             total > 0 ? total : bytes);
      done += static_cast<std::size_t>(n);
    }
  }
  // Reads `bytes` into `out`, growing it geometrically from 64 KiB: never more than twice what
  // the file really held is allocated.
  void read_growing(std::vector<std::uint8_t>& out, std::size_t bytes, const char* what) {
    out.clear();
    while (out.size() < bytes) {
      const std::size_t done = out.size();
      const std::size_t n = std::min(std::clamp(done, std::size_t{64} << 10, std::size_t{256} << 20), bytes - done);
      out.resize(done + n);
      read(out.data() + done, n, what, done, bytes);
    }
  }
  std::uint32_t read_be32(const char* what) {
    std::array<unsigned char, 4> b{};
    read(b.data(), 4, what);
    return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | b[3];
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::unique_ptr<gzFile_s, GzCloser> file_;
};

// A header may claim any size: the buffer grows with what the file really holds (a truncated or
// lying header fails at its end, not in a multi-gigabyte allocation first).
std::vector<std::int32_t> read_labels(const std::filesystem::path& labels, int num_classes,
                                      std::optional<std::uint32_t> image_count, const std::filesystem::path& images) {
  IdxFile lab(labels);
  if (const auto magic = lab.read_be32("the magic number"); magic != 0x801)
    fail("data file '{}' is not an IDX label file (magic 0x{:08x}, expected 0x00000801)", labels.string(), magic);
  const std::uint32_t label_count = lab.read_be32("the label count");
  if (image_count && label_count != *image_count)
    fail("data file '{}' has {} labels but '{}' has {} images", labels.string(), label_count, images.string(),
         *image_count);
  if (label_count == 0 || label_count > kMaxSamples)
    fail("data file '{}' has an implausible label count {}", labels.string(), label_count);
  std::vector<std::uint8_t> raw;
  lab.read_growing(raw, label_count, "the labels");
  std::vector<std::int32_t> out(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] >= num_classes)
      fail("data file '{}': label {} of sample {} is out of range 0..{}", labels.string(), raw[i], i, num_classes - 1);
    out[i] = raw[i];
  }
  return out;
}

std::filesystem::path pick(const std::filesystem::path& dir, const std::string& stem) {
  std::error_code ec;
  if (std::filesystem::exists(dir / (stem + ".gz"), ec)) return dir / (stem + ".gz");
  if (std::filesystem::exists(dir / stem, ec)) return dir / stem;
  return dir / (stem + ".gz");  // report the usual name
}

}  // namespace

void Dataset::images_as_float(std::int64_t first, std::int64_t n, float* out) const {
  const std::size_t size = static_cast<std::size_t>(sample_size());
  const std::uint8_t* src = pixels.data() + static_cast<std::size_t>(first) * size;
  const std::size_t total = static_cast<std::size_t>(n) * size;
  for (std::size_t i = 0; i < total; ++i) out[i] = static_cast<float>(src[i]) * (1.0f / 255.0f);
}

Dataset read_idx(const std::filesystem::path& images, const std::filesystem::path& labels, int num_classes) {
  Dataset d;
  IdxFile img(images);
  if (const auto magic = img.read_be32("the magic number"); magic != 0x803)
    fail("data file '{}' is not an IDX image file (magic 0x{:08x}, expected 0x00000803)", images.string(), magic);
  const std::uint32_t count = img.read_be32("the image count");
  const std::uint32_t rows = img.read_be32("the row count");
  const std::uint32_t cols = img.read_be32("the column count");
  if (count == 0 || count > kMaxSamples || rows == 0 || rows > 4096 || cols == 0 || cols > 4096)
    fail("data file '{}' has an implausible shape {} x {} x {}", images.string(), count, rows, cols);
  d.count = count;
  d.rows = static_cast<int>(rows);
  d.cols = static_cast<int>(cols);
  const std::uint64_t pixel_bytes = std::uint64_t{count} * rows * cols;
  if (pixel_bytes > kMaxPixelBytes)
    fail("data file '{}' declares {} x {} x {} pixels ({} bytes), more than the {} bytes lowsync reads", images.string(),
         count, rows, cols, pixel_bytes, kMaxPixelBytes);
  img.read_growing(d.pixels, static_cast<std::size_t>(pixel_bytes), "the pixels");
  d.labels = read_labels(labels, num_classes, count, images);
  return d;
}

std::vector<std::int32_t> read_idx_labels(const std::filesystem::path& labels, int num_classes) {
  return read_labels(labels, num_classes, std::nullopt, {});
}

FashionMnist load_fashion_mnist(const std::filesystem::path& dir, std::int64_t train_limit) {
  FashionMnist fm;
  fm.train = read_idx(pick(dir, "train-images-idx3-ubyte"), pick(dir, "train-labels-idx1-ubyte"));
  fm.test = read_idx(pick(dir, "t10k-images-idx3-ubyte"), pick(dir, "t10k-labels-idx1-ubyte"));
  if (fm.train.sample_size() != fm.test.sample_size())
    fail("data.dir '{}': train images are {}x{} but test images are {}x{}", dir.string(), fm.train.rows,
         fm.train.cols, fm.test.rows, fm.test.cols);
  if (train_limit > 0 && train_limit < fm.train.count) {
    fm.train.count = train_limit;
    fm.train.pixels.resize(static_cast<std::size_t>(train_limit) * fm.train.sample_size());
    fm.train.labels.resize(static_cast<std::size_t>(train_limit));
  }
  return fm;
}

std::vector<std::int32_t> load_train_labels(const std::filesystem::path& dir, std::int64_t train_limit) {
  IdxFile images(pick(dir, "train-images-idx3-ubyte"));  // a missing data.dir is named as load_fashion_mnist names it
  auto labels = read_idx_labels(pick(dir, "train-labels-idx1-ubyte"));
  if (train_limit > 0 && train_limit < static_cast<std::int64_t>(labels.size()))
    labels.resize(static_cast<std::size_t>(train_limit));
  return labels;
}

}  // namespace lowsync::data
