// The text corpus of the gpt workload (data/text.hpp, ALGORITHMS.md §8) on small folders the test
// writes: which files count, the 90/10 split, window contents, the training-window stream (inside
// the training parts, uniform, deterministic, restored bitwise from its cursor), the evenly spread
// validation windows, one-line errors for bad folders, and the iid / by_source source partitions.
#include "lowsync/core/error.hpp"
#include "lowsync/data/partition.hpp"
#include "lowsync/data/registry.hpp"
#include "lowsync/data/text.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

namespace lowsync::data {
namespace {

namespace fs = std::filesystem;

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary).write(text.data(), static_cast<std::streamsize>(text.size()));
}

// `n` bytes whose value at offset i is (seed + 7 i) mod 251: every window is distinguishable.
std::string pattern(std::size_t n, int seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((seed + 7 * i) % 251);
  return s;
}

class TextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lowsync_text_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string error_of(const fs::path& dir) {
    try {
      read_text_corpus(dir);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(TextTest, ReadsPlainFilesSortedAndSplitsEach90To10) {
  write_file(dir_ / "zeta", pattern(200, 1));
  write_file(dir_ / "alpha", pattern(51, 2));
  write_file(dir_ / "alpha.dat", "index");
  write_file(dir_ / "alpha.u8", "link target");
  write_file(dir_ / ".hidden", "x");
  write_file(dir_ / "empty", "");
  fs::create_directories(dir_ / "subdir");
  write_file(dir_ / "subdir" / "inner", "not read");
  const TextCorpus c = read_text_corpus(dir_);
  ASSERT_EQ(c.sources.size(), 2u);
  EXPECT_EQ(c.sources[0].name, "alpha");
  EXPECT_EQ(c.sources[1].name, "zeta");
  EXPECT_EQ(c.sources[0].train_bytes, 45);  // floor(0.9 * 51)
  EXPECT_EQ(c.sources[1].train_bytes, 180);
  const std::string z = pattern(200, 1);
  EXPECT_TRUE(std::equal(z.begin(), z.end(), c.sources[1].bytes.begin(),
                         [](char a, std::uint8_t b) { return static_cast<std::uint8_t>(a) == b; }));
  EXPECT_EQ(c.total_bytes(), 251);
  // Windows of T + 1 bytes inside each part: train 45 - T, validation 6 - T (none when shorter).
  EXPECT_EQ(c.sources[0].train_windows(8), 37);
  EXPECT_EQ(c.sources[0].validation_windows(8), 0);
  EXPECT_EQ(c.sources[1].validation_windows(8), 12);
  EXPECT_EQ(c.train_windows(8), (std::vector<std::int64_t>{37, 172}));
  // The registry's entry reads the same corpus.
  EXPECT_EQ(dataset_entry("fortunes").kind, DataKind::text);
  EXPECT_EQ(dataset_entry("fortunes").load_text(dir_).sources[1].bytes, c.sources[1].bytes);
}

TEST_F(TextTest, BadFoldersAreOneLineErrorsNamingThem) {
  const fs::path missing = dir_ / "missing";
  write_file(dir_ / "afile", "abc");
  fs::create_directories(dir_ / "empty_dir");
  fs::create_directories(dir_ / "no_text");
  write_file(dir_ / "no_text" / "a.dat", "x");
  write_file(dir_ / "no_text" / "a.u8", "x");
  write_file(dir_ / "no_text" / "blank", "");
  const std::pair<fs::path, std::string> cases[] = {{missing, "does not exist"},
                                                    {dir_ / "afile", "is not a folder"},
                                                    {dir_ / "empty_dir", "holds no text"},
                                                    {dir_ / "no_text", "holds no text"}};
  for (const auto& [dir, what] : cases) {
    const std::string e = error_of(dir);
    EXPECT_NE(e.find("data.dir '" + dir.string() + "'"), std::string::npos) << e;
    EXPECT_NE(e.find(what), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
}

TEST_F(TextTest, WindowsHoldInputsAndNextByteTargets) {
  write_file(dir_ / "a", pattern(100, 3));
  const TextCorpus c = read_text_corpus(dir_);
  float tokens[5];
  std::int32_t targets[5];
  fill_window(c, {0, 10}, 5, tokens, targets);
  const std::string p = pattern(100, 3);
  for (int t = 0; t < 5; ++t) {
    EXPECT_EQ(tokens[t], static_cast<float>(static_cast<std::uint8_t>(p[10 + t])));
    EXPECT_EQ(targets[t], static_cast<std::uint8_t>(p[11 + t]));
  }
}

// Every training window lies inside its file's training part, every start is drawn about equally
// often (uniform over starts, so files count by size), and the stream is a function of
// (seed, rank, cursor): a restored cursor continues it bitwise.
TEST_F(TextTest, TrainingWindowStreamIsUniformDeterministicAndRestorable) {
  write_file(dir_ / "a", pattern(30, 4));   // train 27 bytes: 23 windows of 5
  write_file(dir_ / "b", pattern(50, 5));   // train 45: 41 windows
  write_file(dir_ / "c", pattern(40, 6));   // not this rank's
  const TextCorpus corpus = read_text_corpus(dir_);
  const int context = 4, batch = 8;
  TextWindows w(corpus, {0, 1}, context, batch, 17, 1);
  EXPECT_EQ(w.samples(), 23 + 41);
  std::map<std::pair<int, std::int64_t>, int> hits;
  const int draws = 64 * 300;
  for (int i = 0; i < draws / batch; ++i) {
    const Batch b = w.next();
    ASSERT_EQ(b.size, batch);
    for (int j = 0; j < batch; ++j) {
      const WindowRef r = w.window_at(0, static_cast<std::int64_t>(i) * batch + j);
      ASSERT_TRUE(r.source == 0 || r.source == 1);
      ASSERT_GE(r.start, 0);
      ASSERT_LE(r.start + context, corpus.sources[r.source].train_bytes - 1);  // the target byte too
      ++hits[{r.source, r.start}];
      float tokens[4];
      std::int32_t targets[4];
      fill_window(corpus, r, context, tokens, targets);
      ASSERT_EQ(std::memcmp(tokens, b.images + j * context, sizeof tokens), 0);
      ASSERT_EQ(std::memcmp(targets, b.labels + j * context, sizeof targets), 0);
    }
  }
  EXPECT_EQ(hits.size(), 64u);  // every start drawn
  for (const auto& [where, n] : hits) {  // expected 300 each; binomial sd ~17
    EXPECT_GT(n, 200) << where.first << ":" << where.second;
    EXPECT_LT(n, 400) << where.first << ":" << where.second;
  }
  EXPECT_NEAR(w.epoch_progress(), static_cast<double>(draws) * context / (27 + 45), 1e-9);

  // Same (seed, rank): the same stream; another rank or seed: another.
  TextWindows same(corpus, {0, 1}, context, batch, 17, 1), other_rank(corpus, {0, 1}, context, batch, 17, 2),
      other_seed(corpus, {0, 1}, context, batch, 18, 1);
  int differ_rank = 0, differ_seed = 0;
  for (std::int64_t i = 0; i < 64; ++i) {
    const WindowRef a = w.window_at(0, i), s = same.window_at(0, i), r = other_rank.window_at(0, i),
                    q = other_seed.window_at(0, i);
    EXPECT_TRUE(a.source == s.source && a.start == s.start);
    differ_rank += a.source != r.source || a.start != r.start;
    differ_seed += a.source != q.source || a.start != q.start;
  }
  EXPECT_GT(differ_rank, 48);
  EXPECT_GT(differ_seed, 48);

  // Resume: a fresh source given the cursor continues bitwise.
  const LoaderCursor at = w.cursor();
  std::vector<float> expected_tokens;
  std::vector<std::int32_t> expected_targets;
  for (int i = 0; i < 3; ++i) {
    const Batch b = w.next();
    expected_tokens.insert(expected_tokens.end(), b.images, b.images + batch * context);
    expected_targets.insert(expected_targets.end(), b.labels, b.labels + batch * context);
  }
  TextWindows resumed(corpus, {0, 1}, context, batch, 17, 1);
  resumed.set_cursor(at);
  EXPECT_EQ(resumed.cursor().position, at.position);
  for (int i = 0; i < 3; ++i) {
    const Batch b = resumed.next();
    EXPECT_EQ(std::memcmp(b.images, expected_tokens.data() + i * batch * context, sizeof(float) * batch * context), 0);
    EXPECT_EQ(std::memcmp(b.labels, expected_targets.data() + i * batch * context, sizeof(std::int32_t) * batch * context), 0);
  }
  EXPECT_THROW(resumed.set_cursor({-1, 0}), Error);
  EXPECT_THROW((void)TextWindows(corpus, {}, context, batch, 1, 0), Error);  // no source
  EXPECT_THROW((void)TextWindows(corpus, {0}, 40, batch, 1, 0), Error);   // no window of 41 bytes
}

TEST_F(TextTest, ValidationWindowsAreSpreadEvenlyOverTheValidationParts) {
  write_file(dir_ / "a", pattern(300, 7));  // validation bytes [270, 300): 30 - T windows
  write_file(dir_ / "b", pattern(20, 8));   // validation 2 bytes: none
  write_file(dir_ / "c", pattern(500, 9));  // validation [450, 500)
  const TextCorpus corpus = read_text_corpus(dir_);
  const int context = 6;
  // All of them when asked for as many or more: each exactly once, in source order.
  const auto all = validation_windows(corpus, context, 1000);
  ASSERT_EQ(all.size(), static_cast<std::size_t>(24 + 44));
  for (std::size_t i = 0; i < all.size(); ++i) {
    const auto& s = corpus.sources[all[i].source];
    EXPECT_NE(all[i].source, 1);
    EXPECT_GE(all[i].start, s.train_bytes);
    EXPECT_LE(all[i].start + context, s.size() - 1);
    if (i > 0) {
      EXPECT_TRUE(all[i].source > all[i - 1].source ||
                  (all[i].source == all[i - 1].source && all[i].start == all[i - 1].start + 1));
    }
  }
  // Fewer: evenly spaced in the list of all starts (gaps differ by at most one), deterministic.
  const auto some = validation_windows(corpus, context, 10);
  ASSERT_EQ(some.size(), 10u);
  std::vector<std::size_t> at;
  for (const auto& w : some) {
    const auto it = std::find_if(all.begin(), all.end(),
                                 [&](const WindowRef& a) { return a.source == w.source && a.start == w.start; });
    ASSERT_NE(it, all.end());
    at.push_back(static_cast<std::size_t>(it - all.begin()));
  }
  for (std::size_t i = 1; i < at.size(); ++i) {
    EXPECT_GE(at[i] - at[i - 1], 6u);
    EXPECT_LE(at[i] - at[i - 1], 7u);
  }
  EXPECT_LE(at.front(), 4u);
  const auto again = validation_windows(corpus, context, 10);
  for (std::size_t i = 0; i < some.size(); ++i) EXPECT_EQ(some[i].start, again[i].start);
  EXPECT_TRUE(validation_windows(corpus, 50, 10).empty());  // no validation part holds 51 bytes
}

std::vector<std::int64_t> many_sources(int n) {
  std::vector<std::int64_t> w(static_cast<std::size_t>(n));
  for (int s = 0; s < n; ++s) w[static_cast<std::size_t>(s)] = 1000 + 97 * s;
  return w;
}

TEST(SourcePartition, IidGivesEveryRankEveryUsableSource) {
  const std::vector<std::int64_t> windows = {5, 0, 7, 3};
  const auto parts = partition_sources(windows, 3, {"iid", 0.5, 2, 1});
  ASSERT_EQ(parts.size(), 3u);
  for (const auto& p : parts) EXPECT_EQ(p, (std::vector<int>{0, 2, 3}));
}

// by_source deals each usable source to exactly one rank, at least one per rank, the same for the
// same seed; sources without a window go nowhere; too few sources for the ranks is refused.
TEST(SourcePartition, BySourceCoversOnceGivesEveryRankOneAndIsDeterministic) {
  auto windows = many_sources(43);
  windows[5] = 0;
  windows[40] = 0;
  for (int k : {1, 2, 4, 7}) {
    for (double alpha : {0.01, 0.3, 100.0}) {
      const PartitionSpec spec{"by_source", alpha, 2, 11};
      const auto parts = partition_sources(windows, k, spec);
      ASSERT_EQ(parts.size(), static_cast<std::size_t>(k));
      std::multiset<int> seen;
      for (const auto& p : parts) {
        EXPECT_GE(p.size(), 1u) << "k " << k << " alpha " << alpha;
        EXPECT_TRUE(std::is_sorted(p.begin(), p.end()));
        seen.insert(p.begin(), p.end());
      }
      EXPECT_EQ(seen.size(), 41u);
      EXPECT_EQ(std::set<int>(seen.begin(), seen.end()).size(), 41u);
      EXPECT_EQ(seen.count(5) + seen.count(40), 0u);
      EXPECT_EQ(parts, partition_sources(windows, k, spec));
    }
  }
  EXPECT_NE(partition_sources(windows, 4, {"by_source", 0.5, 2, 1}), partition_sources(windows, 4, {"by_source", 0.5, 2, 2}));
  EXPECT_THROW(partition_sources(std::vector<std::int64_t>{3, 0, 4}, 3, {"by_source", 0.5, 2, 1}), Error);
  EXPECT_THROW(partition_sources(std::vector<std::int64_t>{0, 0}, 1, {"iid", 0.5, 2, 1}), Error);
  EXPECT_THROW(partition_sources(windows, 2, {"dirichlet", 0.5, 2, 1}), Error);
}

// Small alpha skews: most ranks hold one or two sources (one topic mix each) and one rank most of
// them; large alpha deals them about evenly. Over 20 seeds, 43 sources, 4 ranks.
TEST(SourcePartition, SmallAlphaGivesFewerSourcesPerRank) {
  const auto windows = many_sources(43);
  auto median_and_max = [&](double alpha) {
    double median_sum = 0.0, max_sum = 0.0;
    for (std::uint64_t seed = 1; seed <= 20; ++seed) {
      const auto parts = partition_sources(windows, 4, {"by_source", alpha, 2, seed});
      std::vector<std::size_t> sizes;
      for (const auto& p : parts) sizes.push_back(p.size());
      std::sort(sizes.begin(), sizes.end());
      median_sum += 0.5 * static_cast<double>(sizes[1] + sizes[2]);
      max_sum += static_cast<double>(sizes[3]);
    }
    return std::pair{median_sum / 20, max_sum / 20};
  };
  const auto [median_small, max_small] = median_and_max(0.05);
  const auto [median_large, max_large] = median_and_max(100.0);
  EXPECT_LT(median_small, 4.0);
  EXPECT_GT(max_small, 25.0);
  EXPECT_GT(median_large, 8.0);
  EXPECT_LT(max_large, 18.0);
}

// The installed corpus (tools/setup.sh installs Debian's fortunes): 43 files, about 2.3 MB.
TEST(FortunesCorpus, InstalledFolderReadsAsSpecified) {
  const fs::path dir = "/usr/share/games/fortunes";
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " not installed";
  const TextCorpus c = read_text_corpus(dir);
  EXPECT_EQ(c.sources.size(), 43u);
  EXPECT_GT(c.total_bytes(), 2'000'000);
  EXPECT_LT(c.total_bytes(), 2'800'000);
  EXPECT_TRUE(std::is_sorted(c.sources.begin(), c.sources.end(),
                             [](const TextSource& a, const TextSource& b) { return a.name < b.name; }));
  for (const auto& s : c.sources) EXPECT_FALSE(s.name.ends_with(".dat") || s.name.ends_with(".u8")) << s.name;
}

}  // namespace
}  // namespace lowsync::data
