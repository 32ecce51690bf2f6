// Byte-level text corpus and its windows (data/text.hpp; ALGORITHMS.md §8, gpt). Files are read
// whole (Debian's fortunes: 43 files, 2.3 MB); windows never cross a file or its train/validation
// boundary.
#include "lowsync/data/text.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"

#include <algorithm>
#include <fstream>
#include <iterator>

namespace lowsync::data {
namespace {

namespace fs = std::filesystem;

// More than any text corpus lowsync is meant for; guards against pointing data.dir at a disk.
constexpr std::int64_t kMaxCorpusBytes = std::int64_t{4} << 30;
// Stream tag of the training-window draws (distinct from the image loader's shuffle).
constexpr std::uint64_t kTagWindows = 0x7e47ULL;

bool is_text_file_name(const std::string& name) {
  return !name.empty() && name[0] != '.' && !name.ends_with(".dat") && !name.ends_with(".u8");
}

std::vector<std::uint8_t> read_whole(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("data file '{}' cannot be opened", path.string());
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("data file '{}' cannot be read", path.string());
  return bytes;
}

}  // namespace

std::int64_t TextSource::train_windows(int context) const { return std::max<std::int64_t>(0, train_bytes - context); }

std::int64_t TextSource::validation_windows(int context) const {
  return std::max<std::int64_t>(0, size() - train_bytes - context);
}

std::int64_t TextCorpus::total_bytes() const {
  std::int64_t total = 0;
  for (const auto& s : sources) total += s.size();
  return total;
}

std::vector<std::int64_t> TextCorpus::train_windows(int context) const {
  std::vector<std::int64_t> w;
  for (const auto& s : sources) w.push_back(s.train_windows(context));
  return w;
}

TextCorpus read_text_corpus(const fs::path& dir, const std::string& dataset) {
  std::error_code ec;
  if (!fs::exists(dir, ec))
    fail("data.dir '{}' does not exist (data.name = {} reads every plain file of a folder; tools/setup.sh installs "
         "Debian's fortunes package)", dir.string(), dataset);
  if (!fs::is_directory(dir, ec)) fail("data.dir '{}' is not a folder (data.name = {} reads every plain file of a folder)", dir.string(), dataset);
  std::vector<std::string> names;
  fs::directory_iterator it(dir, ec);
  if (ec) fail("data.dir '{}' cannot be read: {}", dir.string(), ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) fail("data.dir '{}' cannot be read: {}", dir.string(), ec.message());
    const std::string name = it->path().filename().string();
    std::error_code fec;
    // A symbolic link to a plain file counts (is_regular_file follows it).
    if (is_text_file_name(name) && fs::is_regular_file(it->path(), fec)) names.push_back(name);
  }
  if (ec) fail("data.dir '{}' cannot be read: {}", dir.string(), ec.message());
  std::sort(names.begin(), names.end());
  TextCorpus corpus;
  corpus.dir = dir;
  std::int64_t total = 0;
  for (const auto& name : names) {
    TextSource s;
    s.name = name;
    s.bytes = read_whole(dir / name);
    if (s.bytes.empty()) continue;
    s.train_bytes = s.size() * 9 / 10;
    total += s.size();
    if (total > kMaxCorpusBytes)
      fail("data.dir '{}' holds more than {} bytes of text, more than lowsync reads", dir.string(), kMaxCorpusBytes);
    corpus.sources.push_back(std::move(s));
  }
  if (corpus.sources.empty())
    fail("data.dir '{}' holds no text (no non-empty plain file other than *.dat and *.u8) for data.name = {}",
         dir.string(), dataset);
  return corpus;
}

void fill_window(const TextCorpus& corpus, WindowRef w, int context, float* tokens, std::int32_t* targets) {
  const std::uint8_t* b = corpus.sources[static_cast<std::size_t>(w.source)].bytes.data() + w.start;
  for (int t = 0; t < context; ++t) {
    tokens[t] = static_cast<float>(b[t]);
    targets[t] = static_cast<std::int32_t>(b[t + 1]);
  }
}

std::vector<WindowRef> validation_windows(const TextCorpus& corpus, int context, std::int64_t count) {
  std::vector<std::int64_t> cum = {0};
  for (const auto& s : corpus.sources) cum.push_back(cum.back() + s.validation_windows(context));
  const std::int64_t total = cum.back();
  const std::int64_t n = std::min(count, total);
  std::vector<WindowRef> out;
  out.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    // The middle of the i-th of n equal stretches of all validation window starts.
    const auto g = static_cast<std::int64_t>((static_cast<__int128>(2 * i + 1) * total) / (2 * n));
    const auto s = static_cast<std::size_t>(std::upper_bound(cum.begin(), cum.end(), g) - cum.begin() - 1);
    out.push_back({static_cast<int>(s), corpus.sources[s].train_bytes + (g - cum[s])});
  }
  return out;
}

TextWindows::TextWindows(const TextCorpus& corpus, std::vector<int> sources, int context, int batch,
                         std::uint64_t seed, int rank)
    : corpus_(corpus),
      sources_(std::move(sources)),
      context_(context),
      batch_(batch),
      seed_(seed),
      rank_(rank),
      tokens_("text.tokens", static_cast<std::size_t>(batch) * context),
      targets_("text.targets", static_cast<std::size_t>(batch) * context) {
  if (context < 1) fail("text windows: context {} must be >= 1", context);
  cum_windows_ = {0};
  for (int s : sources_) {
    if (s < 0 || static_cast<std::size_t>(s) >= corpus_.sources.size())
      fail("text windows: rank {} was given source {} of {}", rank, s, corpus_.sources.size());
    const auto& src = corpus_.sources[static_cast<std::size_t>(s)];
    cum_windows_.push_back(cum_windows_.back() + src.train_windows(context));
    train_bytes_ += src.train_bytes;
  }
  // Normally refused earlier on every rank alike (the launch check); this guards other callers.
  if (cum_windows_.back() == 0)
    fail("data: rank {} has no training window of {} bytes in its {} source(s) of '{}'", rank, context + 1,
         sources_.size(), corpus_.dir.string());
}

WindowRef TextWindows::window_at(std::int64_t epoch, std::int64_t position) const {
  const std::uint64_t key = stream_key({seed_, kTagWindows, static_cast<std::uint64_t>(rank_),
                                        static_cast<std::uint64_t>(epoch)});
  // Modulo bias: at most windows / 2^64, far below anything measurable.
  const auto g = static_cast<std::int64_t>(random_bits(key, static_cast<std::uint64_t>(position)) %
                                           static_cast<std::uint64_t>(samples()));
  const auto i = static_cast<std::size_t>(std::upper_bound(cum_windows_.begin(), cum_windows_.end(), g) -
                                          cum_windows_.begin() - 1);
  return {sources_[i], g - cum_windows_[i]};
}

Batch TextWindows::next() {
  for (int b = 0; b < batch_; ++b) {
    const WindowRef w = window_at(cursor_.epoch, cursor_.position++);
    const std::size_t at = static_cast<std::size_t>(b) * context_;
    fill_window(corpus_, w, context_, tokens_.data() + at, targets_.data() + at);
  }
  return Batch{tokens_.data(), targets_.data(), batch_};
}

void TextWindows::set_cursor(LoaderCursor c) {
  if (c.epoch < 0 || c.position < 0)
    fail("text window cursor (stream {}, draw {}) is invalid", c.epoch, c.position);
  cursor_ = c;
}

double TextWindows::epoch_progress() const {
  // Tokens trained on over the training bytes of this rank's sources, on top of the stream number.
  return static_cast<double>(cursor_.epoch) +
         static_cast<double>(cursor_.position) * context_ / static_cast<double>(std::max<std::int64_t>(train_bytes_, 1));
}

}  // namespace lowsync::data
