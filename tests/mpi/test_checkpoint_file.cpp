// MPI tests of the parallel HDF5 checkpoint files (io/checkpoint_file.hpp): round trips of every
// dtype for global and per-rank datasets, resharded row reads, keep-N pruning, and the named errors
// for truncated, bit-flipped, wrong-version, incomplete and foreign files. Run on 1, 2 and 4 ranks.
#include "lowsync/io/checkpoint_file.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/error.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace lowsync::io {
namespace {
namespace fs = std::filesystem;

// Checkpoint collectives go through a Communicator (ledger); one for the whole test binary,
// created by the first test that needs it (every rank runs the same tests in order). No watchdog
// thread: this static outlives MPI_Finalize, which frees the heartbeat window the thread reads
// (a segfault at exit in about 1 run of 3 under load); ctest's TIMEOUT catches a hang here.
comm::Communicator& world() {
  static comm::Communicator c(MPI_COMM_WORLD, {false, 0.0});
  return c;
}

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// A fresh directory, the same path on every rank, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    char name[256] = {};
    if (world_rank() == 0) {
      const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
      const fs::path dir = fs::temp_directory_path() /
                           fmt::format("lowsync-ckpt-{}-{}", ::getpid(), test ? test->name() : "x");
      fs::remove_all(dir);
      fs::create_directories(dir);
      std::snprintf(name, sizeof name, "%s", dir.c_str());
    }
    MPI_Bcast(name, sizeof name, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = name;
  }
  ~ScratchDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(path_);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs `body` on rank 0 only, between barriers: test setup that mutates files while no other rank
// is still looking at them.
template <class F>
void on_rank0(F&& body) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) body();
  MPI_Barrier(MPI_COMM_WORLD);
}

// Expects `body` to throw lowsync::Error on every rank with a message containing every needle.
template <class F>
void expect_error(F&& body, std::initializer_list<std::string> needles) {
  std::string message;
  try {
    body();
  } catch (const Error& e) {
    message = e.what();
  }
  ASSERT_FALSE(message.empty()) << "no lowsync::Error thrown";
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  for (const auto& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << message;
}

template <class T>
std::vector<T> pattern(std::size_t n, int seed) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_floating_point_v<T>)
      v[i] = static_cast<T>(seed * 1000.0 + static_cast<double>(i) * 0.37 - 5.0);
    else
      v[i] = static_cast<T>(seed * 131 + static_cast<int>(i) * 7 + 3);
  }
  return v;
}

void write_simple(const fs::path& path, std::int64_t step) {
  CheckpointWriter writer(path, world());
  writer.set_attribute("step", step);
  const auto params = pattern<float>(64, static_cast<int>(step));
  writer.write_global<float>("model/params", params, {8, 8});
  writer.write_per_rank<double>("optim/rank_state/adam_m", pattern<double>(16, world_rank()));
  writer.commit();
}

template <class T>
void global_round_trip(CheckpointWriter& writer, const std::string& name, std::vector<std::size_t> shape) {
  const std::size_t n = std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  // Only rank 0's data is stored: the other ranks pass different values on purpose.
  writer.write_global<T>(name, pattern<T>(n, world_rank() == 0 ? 1 : 99), shape);
}

template <class T>
void global_check(CheckpointReader& reader, const std::string& name, std::vector<std::size_t> shape) {
  const std::size_t n = std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  std::vector<T> out(n, T{});
  reader.read_global<T>(name, out, shape);
  EXPECT_EQ(out, pattern<T>(n, 1)) << name;
  EXPECT_EQ(reader.dataset_dtype(name), dtype_of_v<T>);
  EXPECT_EQ(reader.dataset_shape(name), shape);
  EXPECT_FALSE(reader.is_per_rank(name));
}

TEST(CheckpointFile, PathNaming) {
  EXPECT_EQ(checkpoint_path("/x/run", 42), fs::path("/x/run/ckpt-00000042.h5"));
  EXPECT_EQ(checkpoint_step("/x/run/ckpt-00000042.h5"), 42);
  EXPECT_EQ(checkpoint_step("ckpt-123456789.h5"), 123456789);
  EXPECT_EQ(checkpoint_step("ckpt-00000042.h5.tmp"), std::nullopt);
  EXPECT_EQ(checkpoint_step("ckpt-42.h5"), std::nullopt);
  EXPECT_EQ(checkpoint_step("ckpt-0000004x.h5"), std::nullopt);
}

TEST(CheckpointFile, GlobalRoundTripEveryDtype) {
  ScratchDir dir;
  const fs::path path = checkpoint_path(dir.path(), 7);
  const std::string config(100000, 'c');  // larger than HDF5's 64 KiB compact attribute limit
  {
    CheckpointWriter writer(path, world());
    writer.set_attribute("step", std::int64_t{7});
    writer.set_attribute("ranks", world_size());  // int
    writer.set_attribute("lr", 0.125);
    writer.set_attribute("strategy", world_rank() == 0 ? "fda" : "other-ranks-ignored");
    writer.set_attribute("config", config);
    writer.set_attribute("empty", "");
    global_round_trip<float>(writer, "model/params", {3, 5});
    global_round_trip<double>(writer, "strategy/fda/w0", {17});
    global_round_trip<std::int32_t>(writer, "a/b/c/i32", {2, 3, 4});
    global_round_trip<std::int64_t>(writer, "rng/loader_cursor", {});
    global_round_trip<std::uint8_t>(writer, "u8", {300});
    global_round_trip<std::uint16_t>(writer, "u16", {4, 1});
    global_round_trip<float>(writer, "empty", {0});
    writer.commit();
  }
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(fs::path(path.string() + ".tmp")));

  CheckpointReader reader(path, world());
  EXPECT_EQ(reader.attribute_int("step"), 7);
  EXPECT_EQ(reader.attribute_int("ranks"), world_size());
  EXPECT_EQ(reader.attribute_double("lr"), 0.125);
  EXPECT_EQ(reader.attribute_double("step"), 7.0);
  EXPECT_EQ(reader.attribute_string("strategy"), "fda");
  EXPECT_EQ(reader.attribute_string("config"), config);
  EXPECT_EQ(reader.attribute_string("empty"), "");
  EXPECT_TRUE(reader.has_attribute("complete"));
  EXPECT_FALSE(reader.has_attribute("nope"));
  global_check<float>(reader, "model/params", {3, 5});
  global_check<double>(reader, "strategy/fda/w0", {17});
  global_check<std::int32_t>(reader, "a/b/c/i32", {2, 3, 4});
  global_check<std::int64_t>(reader, "rng/loader_cursor", {});
  global_check<std::uint8_t>(reader, "u8", {300});
  global_check<std::uint16_t>(reader, "u16", {4, 1});
  global_check<float>(reader, "empty", {0});
  EXPECT_EQ(reader.dataset_names(),
            (std::vector<std::string>{"a/b/c/i32", "empty", "model/params", "rng/loader_cursor",
                                      "strategy/fda/w0", "u16", "u8"}));
  EXPECT_TRUE(reader.has_dataset("model/params"));
  EXPECT_FALSE(reader.has_dataset("model"));  // a group
  EXPECT_FALSE(reader.has_dataset("model/nope/x"));
  reader.verify_all();
}

template <class T>
void per_rank_round_trip(const fs::path& dir, std::size_t n) {
  const fs::path path = dir / fmt::format("per_rank_{}.h5", dtype_name(dtype_of_v<T>));
  {
    CheckpointWriter writer(path, world());
    writer.write_per_rank<T>("optim/rank_state/state", pattern<T>(n, world_rank() + 1));
    writer.commit();
  }
  CheckpointReader reader(path, world());
  const std::size_t saved = reader.saved_ranks("optim/rank_state/state");
  ASSERT_EQ(saved, static_cast<std::size_t>(world_size()));
  ASSERT_EQ(reader.row_length("optim/rank_state/state"), n);
  EXPECT_TRUE(reader.is_per_rank("optim/rank_state/state"));
  std::vector<T> mine(n);
  reader.read_row<T>("optim/rank_state/state", static_cast<std::size_t>(world_rank()), mine);
  EXPECT_EQ(mine, pattern<T>(n, world_rank() + 1));
  // Resharding: every rank reads every row, in reverse order, in one call.
  std::vector<std::size_t> rows(saved);
  std::iota(rows.rbegin(), rows.rend(), std::size_t{0});
  std::vector<T> all(saved * n);
  reader.read_rows<T>("optim/rank_state/state", rows, all);
  for (std::size_t i = 0; i < saved; ++i) {
    const std::vector<T> row(all.begin() + static_cast<std::ptrdiff_t>(i * n),
                             all.begin() + static_cast<std::ptrdiff_t>((i + 1) * n));
    EXPECT_EQ(row, pattern<T>(n, static_cast<int>(rows[i]) + 1)) << "row " << rows[i];
  }
  // A rank may also read nothing while others read.
  std::vector<std::size_t> some;
  if (world_rank() == world_size() - 1) some = {0};
  std::vector<T> out(some.size() * n);
  reader.read_rows<T>("optim/rank_state/state", some, out);
  if (!some.empty()) {
    EXPECT_EQ(out, pattern<T>(n, 1));
  }
  reader.verify_all();
}

TEST(CheckpointFile, PerRankRoundTripEveryDtype) {
  ScratchDir dir;
  per_rank_round_trip<float>(dir.path(), 33);
  per_rank_round_trip<double>(dir.path(), 5);
  per_rank_round_trip<std::int32_t>(dir.path(), 12);
  per_rank_round_trip<std::int64_t>(dir.path(), 1);
  per_rank_round_trip<std::uint8_t>(dir.path(), 257);
  per_rank_round_trip<std::uint16_t>(dir.path(), 0);
}

TEST(CheckpointFile, KeepNewestNAndIgnoreTmpLeftovers) {
  ScratchDir dir;
  for (std::int64_t step = 1; step <= 5; ++step) {
    write_simple(checkpoint_path(dir.path(), step), step);
    prune_checkpoints(dir.path(), 2, world());
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir.path()))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"ckpt-00000004.h5", "ckpt-00000005.h5"}));

  // A crash left step 6 as .tmp, and step 7 is garbage: both are skipped with a warning each,
  // and pruning leaves the newer-than-good files alone and never deletes the newest good one.
  on_rank0([&] {
    fs::copy_file(checkpoint_path(dir.path(), 5), dir.path() / "ckpt-00000006.h5.tmp");
    std::ofstream(checkpoint_path(dir.path(), 7)) << "not hdf5";
    std::ofstream(dir.path() / "ckpt-00000003.h5.tmp") << "stale";
  });
  std::vector<std::string> warnings;
  const auto latest = find_latest_checkpoint(dir.path(), world(),
                                             [&](const std::string& line) { warnings.push_back(line); });
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(*latest, checkpoint_path(dir.path(), 5));
  ASSERT_EQ(warnings.size(), 3u);
  EXPECT_NE(warnings[0].find("ckpt-00000006.h5.tmp"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[2].find("ckpt-00000007.h5"), std::string::npos) << warnings[2];
  EXPECT_NE(warnings[2].find("not an HDF5 file"), std::string::npos) << warnings[2];

  const auto deleted = prune_checkpoints(dir.path(), 1, world(), [](const std::string&) {});
  EXPECT_EQ(deleted,
            (std::vector<fs::path>{checkpoint_path(dir.path(), 4), dir.path() / "ckpt-00000003.h5.tmp"}));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir.path(), 5)));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir.path(), 7)));
  EXPECT_TRUE(fs::exists(dir.path() / "ckpt-00000006.h5.tmp"));
  expect_error([&] { prune_checkpoints(dir.path(), 0, world()); }, {"keep must be >= 1"});
}

TEST(CheckpointFile, FindLatestOnEmptyOrMissingDirectory) {
  ScratchDir dir;
  EXPECT_EQ(find_latest_checkpoint(dir.path(), world()), std::nullopt);
  EXPECT_EQ(find_latest_checkpoint(dir.path() / "absent", world()), std::nullopt);
}

TEST(CheckpointFile, TruncatedFileIsNamed) {
  ScratchDir dir;
  const fs::path path = checkpoint_path(dir.path(), 1);
  write_simple(path, 1);
  on_rank0([&] { fs::resize_file(path, fs::file_size(path) / 2); });
  expect_error([&] { CheckpointReader reader(path, world()); }, {path.string(), "truncated"});
  std::vector<std::string> warnings;
  EXPECT_EQ(find_latest_checkpoint(dir.path(), world(),
                                   [&](const std::string& w) { warnings.push_back(w); }),
            std::nullopt);
  EXPECT_EQ(warnings.size(), 1u);
}

// Flips one bit inside the raw data of `dataset` (contiguous layout: offset from HDF5 itself).
void flip_bit_in(const fs::path& path, const std::string& dataset, std::size_t byte_in_data) {
  on_rank0([&] {
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t dset = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
    const haddr_t offset = H5Dget_offset(dset);
    H5Dclose(dset);
    H5Fclose(file);
    ASSERT_NE(offset, HADDR_UNDEF);
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset + byte_in_data));
    char c = 0;
    f.get(c);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(static_cast<std::streamoff>(offset + byte_in_data));
    f.put(c);
  });
}

TEST(CheckpointFile, BitFlipIsNamed) {
  ScratchDir dir;
  const fs::path path = checkpoint_path(dir.path(), 1);
  write_simple(path, 1);
  flip_bit_in(path, "model/params", 13);
  CheckpointReader reader(path, world());  // metadata is intact: opening succeeds
  std::vector<float> params(64);
  expect_error(
      [&] {
        reader.read_global<float>("model/params", params, {8, 8});
      },
      {path.string(), "'model/params'", "checksum mismatch"});
  expect_error([&] { reader.verify_all(); }, {path.string(), "'model/params'", "checksum mismatch"});
  // The per-rank dataset is still readable.
  std::vector<double> row(16);
  reader.read_row<double>("optim/rank_state/adam_m", static_cast<std::size_t>(world_rank()), row);
  EXPECT_EQ(row, pattern<double>(16, world_rank()));
}

TEST(CheckpointFile, BitFlipInOneRowFailsOnEveryRank) {
  ScratchDir dir;
  const fs::path path = checkpoint_path(dir.path(), 1);
  write_simple(path, 1);
  const std::size_t last = static_cast<std::size_t>(world_size() - 1);
  flip_bit_in(path, "optim/rank_state/adam_m", last * 16 * sizeof(double) + 3);
  CheckpointReader reader(path, world());
  // Only the last rank reads the damaged row, yet every rank throws the same line (none hangs).
  std::vector<double> row(16);
  expect_error(
      [&] {
        reader.read_row<double>("optim/rank_state/adam_m", static_cast<std::size_t>(world_rank()), row);
      },
      {path.string(), "'optim/rank_state/adam_m'", fmt::format("row {}", last), "checksum mismatch"});
  EXPECT_THROW(verify_checkpoint(path, world()), Error);
}

// A file written by plain serial HDF5 with the given root attributes.
void write_foreign(const fs::path& path, std::optional<std::int64_t> version,
                   std::optional<std::int64_t> complete) {
  on_rank0([&] {
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    const hid_t space = H5Screate(H5S_SCALAR);
    auto put = [&](const char* name, std::int64_t value) {
      const hid_t attr = H5Acreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(attr, H5T_NATIVE_INT64, &value);
      H5Aclose(attr);
    };
    if (version) put("format_version", *version);
    if (complete) put("complete", *complete);
    H5Sclose(space);
    H5Fclose(file);
  });
}

TEST(CheckpointFile, WrongVersionIncompleteAndForeignFilesAreRejected) {
  ScratchDir dir;
  const fs::path v2 = dir.path() / "v2.h5";
  write_foreign(v2, kCheckpointFormatVersion + 1, 1);
  expect_error([&] { CheckpointReader r(v2, world()); },
               {v2.string(), fmt::format("format_version {}", kCheckpointFormatVersion + 1)});
  const fs::path incomplete = dir.path() / "incomplete.h5";
  write_foreign(incomplete, kCheckpointFormatVersion, std::nullopt);
  expect_error([&] { CheckpointReader r(incomplete, world()); }, {incomplete.string(), "incomplete"});
  const fs::path foreign = dir.path() / "foreign.h5";
  write_foreign(foreign, std::nullopt, std::nullopt);
  expect_error([&] { CheckpointReader r(foreign, world()); },
               {foreign.string(), "not a lowsync checkpoint"});
  const fs::path text = dir.path() / "text.h5";
  on_rank0([&] { std::ofstream(text) << "hello"; });
  expect_error([&] { CheckpointReader r(text, world()); }, {text.string(), "not an HDF5 file"});
  const fs::path missing = dir.path() / "missing.h5";
  expect_error([&] { CheckpointReader r(missing, world()); }, {missing.string(), "file not found"});
}

TEST(CheckpointFile, CallerExpectationsAreChecked) {
  ScratchDir dir;
  const fs::path path = checkpoint_path(dir.path(), 1);
  write_simple(path, 1);
  CheckpointReader reader(path, world());
  std::vector<float> f(64);
  std::vector<double> d(64);
  expect_error(
      [&] {
        reader.read_global<float>("model/nope", f, {8, 8});
      },
      {path.string(), "'model/nope'", "missing"});
  expect_error(
      [&] {
        reader.read_global<float>("model/params", f, {4, 16});
      },
      {path.string(), "'model/params'", "shape [8, 8] but caller expects [4, 16]"});
  expect_error(
      [&] {
        reader.read_global<double>("model/params", d, {8, 8});
      },
      {"'model/params'", "holds fp32, caller expects fp64"});
  expect_error(
      [&] {
        reader.read_global<float>("optim/rank_state/adam_m", f, {8, 8});
      },
      {"not a global dataset"});
  expect_error([&] { reader.attribute_int("nope"); }, {path.string(), "no attribute 'nope'"});
  expect_error([&] { reader.attribute_string("step"); }, {"'step' is not a string"});
  // An out-of-range row requested on one rank only: all ranks throw.
  std::vector<double> row(16);
  const std::size_t r = world_rank() == 0 ? static_cast<std::size_t>(world_size()) : 0;
  expect_error([&] { reader.read_row<double>("optim/rank_state/adam_m", r, row); },
               {fmt::format("row {} requested but only {} ranks were saved", world_size(), world_size())});
  std::vector<double> short_row(15);
  expect_error([&] { reader.read_row<double>("optim/rank_state/adam_m", 0, short_row); },
               {"caller buffer holds 15"});
}

TEST(CheckpointFile, WriterMisuseFailsOnEveryRankAndLeavesNoFile) {
  ScratchDir dir;
  const fs::path path = checkpoint_path(dir.path(), 3);
  expect_error(
      [&] {
        CheckpointWriter writer(path, world());
        // Row length differs on the last rank only (on one rank, rank 0 itself differs from nobody).
        const std::size_t n = world_size() > 1 && world_rank() == world_size() - 1 ? 5 : 4;
        writer.write_per_rank<float>("x", pattern<float>(n, 0));
        if (world_size() == 1) writer.set_attribute("complete", std::int64_t{1});
      },
      {path.string() + ".tmp", world_size() > 1 ? "differs from rank 0's" : "reserved"});
  expect_error(
      [&] {
        CheckpointWriter writer(path, world());
        writer.write_global<float>("x", pattern<float>(3, 0), {2, 2});
      },
      {"'x'", "buffer holds 3 elements, shape [2, 2] needs 4"});
  expect_error(
      [&] {
        CheckpointWriter writer(path, world());
        writer.write_global<float>("x", pattern<float>(4, 0), {4});
        writer.write_global<float>("x", pattern<float>(4, 0), {4});
      },
      {"'x'", "cannot create"});
  {
    CheckpointWriter abandoned(path, world());
    abandoned.write_global<float>("x", pattern<float>(4, 0), {4});
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// Needs LOWSYNC_TEST_SMALL_DIR: a directory on a filesystem with at most 1 MiB free, the same path
// on every rank (tools/checkpoint/crash_test.sh mounts a 1 MiB tmpfs); skipped otherwise.
TEST(CheckpointFile, DiskFullKeepsPreviousCheckpoint) {
  const char* small_dir = std::getenv("LOWSYNC_TEST_SMALL_DIR");
  if (small_dir == nullptr || *small_dir == '\0') GTEST_SKIP() << "LOWSYNC_TEST_SMALL_DIR not set";
  const fs::path dir = fs::path(small_dir) / "disk-full";
  on_rank0([&] {
    fs::remove_all(dir);
    fs::create_directories(dir);
  });
  const fs::path good = checkpoint_path(dir, 1);
  write_simple(good, 1);
  const auto good_size = fs::file_size(good);
  const fs::path next = checkpoint_path(dir, 2);
  expect_error(
      [&] {
        CheckpointWriter writer(next, world());
        writer.set_attribute("step", std::int64_t{2});
        const std::vector<double> big(1 << 20, 1.0);  // 8 MiB: more than the filesystem holds
        writer.write_global<double>("model/params", big, {big.size()});
        writer.commit();
      },
      {next.string() + ".tmp", "'model/params'"});
  // Rows of 1.5 MiB in total: with several ranks the first rows fit and the later ones do not, so
  // only some ranks see the failure; all must throw it.
  expect_error(
      [&] {
        CheckpointWriter writer(next, world());
        const std::vector<double> row((3u << 17) / static_cast<unsigned>(world_size()), 2.0);
        writer.write_per_rank<double>("optim/rank_state/adam_m", row);
        writer.commit();
      },
      {next.string() + ".tmp", "'optim/rank_state/adam_m'"});
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(next));
  EXPECT_FALSE(fs::exists(next.string() + ".tmp"));
  EXPECT_EQ(fs::file_size(good), good_size);
  EXPECT_EQ(find_latest_checkpoint(dir, world()), good);
  // The space is free again: the next checkpoint succeeds.
  write_simple(next, 2);
  EXPECT_EQ(find_latest_checkpoint(dir, world()), next);
  on_rank0([&] { fs::remove_all(dir); });
}

TEST(CheckpointFile, RenameFailureKeepsPreviousCheckpoint) {
  ScratchDir dir;
  const fs::path good = checkpoint_path(dir.path(), 1);
  write_simple(good, 1);
  // A non-empty directory squats on the final name, so the rename fails after a full write.
  const fs::path next = checkpoint_path(dir.path(), 2);
  on_rank0([&] { fs::create_directories(next / "blocker"); });
  expect_error([&] { write_simple(next, 2); }, {next.string(), "rename"});
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(next.string() + ".tmp"));
  EXPECT_TRUE(fs::is_directory(next / "blocker"));
  EXPECT_EQ(find_latest_checkpoint(dir.path(), world(), [](const std::string&) {}), good);
}

// Checkpoint traffic is in the ledger under its own class, and outside the strategy's totals.
TEST(CheckpointFile, CollectivesAreCountedAsCheckpointTraffic) {
  ScratchDir dir;
  const comm::LedgerEntry total_before = world().ledger().total();
  const comm::LedgerEntry before = world().ledger().by_traffic(comm::kCheckpointTraffic);
  write_simple(dir.path() / "ledger.h5", 1);
  const comm::LedgerEntry after = world().ledger().by_traffic(comm::kCheckpointTraffic);
  // Error agreements, the root attribute broadcast, dataset signatures and CRCs: well over 10 calls.
  EXPECT_GT(after.calls, before.calls + 10);
  EXPECT_GT(after.payload_bytes, before.payload_bytes);
  EXPECT_EQ(world().ledger().total().calls, total_before.calls);
  EXPECT_EQ(world().ledger().total().payload_bytes, total_before.payload_bytes);
}

}  // namespace
}  // namespace lowsync::io

// Helpers for tools/checkpoint/crash_test.sh, not run by default (run them with
// --gtest_also_run_disabled_tests). WriteSteps writes steps 1..LOWSYNC_CKPT_STEPS into
// LOWSYNC_CKPT_DIR (keep 2) with every dtype, LOWSYNC_CKPT_MIB MiB of fp32 per rank each step;
// FindLatest prints "latest: <path>" (or "latest: none").
namespace lowsync::io {
namespace {

std::int64_t env_int(const char* name, std::int64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::stoll(value) : fallback;
}

TEST(CheckpointFileTool, DISABLED_WriteSteps) {
  const char* dir = std::getenv("LOWSYNC_CKPT_DIR");
  ASSERT_NE(dir, nullptr) << "set LOWSYNC_CKPT_DIR";
  const auto steps = env_int("LOWSYNC_CKPT_STEPS", 1);
  const auto floats = static_cast<std::size_t>(env_int("LOWSYNC_CKPT_MIB", 1)) * (1u << 18);
  for (std::int64_t step = 1; step <= steps; ++step) {
    CheckpointWriter writer(checkpoint_path(dir, step), world());
    writer.set_attribute("step", step);
    writer.set_attribute("ranks", std::int64_t{world_size()});
    writer.set_attribute("strategy", "fda");
    writer.set_attribute("config", "[train]\nsteps = 100\nlr = 0.1\n");
    writer.set_attribute("lr", 0.1);
    writer.write_global<float>("model/params", pattern<float>(12, static_cast<int>(step)), {3, 4});
    writer.write_global<double>("strategy/fda/w0", pattern<double>(5, 2), {5});
    writer.write_global<std::int32_t>("i32", pattern<std::int32_t>(6, 3), {2, 3});
    writer.write_global<std::int64_t>("rng/loader_cursor", pattern<std::int64_t>(1, 4), {});
    writer.write_global<std::uint8_t>("u8", pattern<std::uint8_t>(7, 5), {7});
    writer.write_global<std::uint16_t>("u16", pattern<std::uint16_t>(8, 6), {2, 2, 2});
    writer.write_per_rank<float>("optim/rank_state/adam_m", pattern<float>(floats, world_rank() + 1));
    writer.write_per_rank<std::uint16_t>("optim/rank_state/u16", pattern<std::uint16_t>(9, world_rank()));
    writer.commit();
    prune_checkpoints(dir, 2, world());
    if (world_rank() == 0) std::printf("committed: %s\n", checkpoint_path(dir, step).c_str());
    std::fflush(stdout);
  }
}

TEST(CheckpointFileTool, DISABLED_FindLatest) {
  const char* dir = std::getenv("LOWSYNC_CKPT_DIR");
  ASSERT_NE(dir, nullptr) << "set LOWSYNC_CKPT_DIR";
  const auto latest = find_latest_checkpoint(dir, world());
  if (world_rank() == 0) std::printf("latest: %s\n", latest ? latest->c_str() : "none");
  std::fflush(stdout);
}

}  // namespace
}  // namespace lowsync::io
