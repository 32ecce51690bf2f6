// Byte-level text corpus (ALGORITHMS.md §8, gpt): every plain file of a folder (not *.dat, not
// *.u8, not hidden), sorted by name; the first 90% of each file's bytes train, the last 10%
// validate. A sample is a window of T+1 consecutive bytes of one file's part: input the first T
// (as floats 0..255), target the last T. TextWindows draws this rank's training windows from
// counter-based random numbers keyed by (seed, rank, stream), so a two-integer cursor restores it.
#pragma once

#include "lowsync/core/memory.hpp"
#include "lowsync/data/batch_source.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lowsync::data {

// Vocabulary of byte-level text.
inline constexpr int kByteVocabulary = 256;

struct TextSource {
  std::string name;                // file name inside the folder
  std::vector<std::uint8_t> bytes;  // the whole file
  std::int64_t train_bytes = 0;     // bytes [0, train_bytes) train, [train_bytes, size) validate
  std::int64_t size() const { return static_cast<std::int64_t>(bytes.size()); }
  // Windows of context + 1 bytes inside the training / validation part.
  std::int64_t train_windows(int context) const;
  std::int64_t validation_windows(int context) const;
};

struct TextCorpus {
  std::filesystem::path dir;
  std::vector<TextSource> sources;  // sorted by name
  std::int64_t total_bytes() const;
  // Training windows per source (what the partition deals).
  std::vector<std::int64_t> train_windows(int context) const;
};

// Reads every plain file of `dir` (sorted by name, *.dat, *.u8 and dot files skipped) and splits
// each 90/10. A missing, unreadable or empty folder (no such file, or only empty ones) throws one
// line naming it; `dataset` names the data.name in the hint.
TextCorpus read_text_corpus(const std::filesystem::path& dir, const std::string& dataset = "fortunes");

// One window: source index and the offset of its first byte in the source.
struct WindowRef {
  int source = 0;
  std::int64_t start = 0;
};

// Tokens (first `context` bytes, as floats) and targets (the `context` bytes after each) of `w`:
// tokens[context], targets[context].
void fill_window(const TextCorpus& corpus, WindowRef w, int context, float* tokens, std::int32_t* targets);

// `count` validation windows spread evenly over every source's validation windows (in source
// order; fewer when the corpus has fewer). The same on every rank.
std::vector<WindowRef> validation_windows(const TextCorpus& corpus, int context, std::int64_t count);

// This rank's training windows: uniform over every window start of its sources (so a source
// counts by its size), drawn with replacement; draw i of stream e is a pure function of (seed,
// rank, e, i).
class TextWindows final : public BatchSource {
 public:
  TextWindows(const TextCorpus& corpus, std::vector<int> sources, int context, int batch, std::uint64_t seed,
              int rank);
  Batch next() override;
  LoaderCursor cursor() const override { return cursor_; }
  void set_cursor(LoaderCursor c) override;
  std::int64_t samples() const override { return cum_windows_.back(); }
  double epoch_progress() const override;
  // The window of draw `position` of stream `epoch` (what next() reads).
  WindowRef window_at(std::int64_t epoch, std::int64_t position) const;
  const std::vector<int>& sources() const { return sources_; }

 private:
  const TextCorpus& corpus_;
  std::vector<int> sources_;
  std::vector<std::int64_t> cum_windows_;  // [sources + 1]: windows of sources_[0..s)
  std::int64_t train_bytes_ = 0;           // training bytes of this rank's sources
  int context_;
  int batch_;
  std::uint64_t seed_;
  int rank_;
  LoaderCursor cursor_;
  memory::TrackedBuffer<float> tokens_;           // [batch, context]
  memory::TrackedBuffer<std::int32_t> targets_;   // [batch, context]
};

}  // namespace lowsync::data
