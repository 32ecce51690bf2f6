// Checkpoint files: parallel HDF5 (MPI-IO) writer and reader that are atomic and verifiable and
// know nothing about what the trainer stores. Atomicity follows STYLE.md §4 (write "<path>.tmp",
// close, fsync, rename, fsync the directory); integrity is a zlib CRC32 per dataset (per row for
// per-rank datasets) plus a root "complete" = 1 marker. tools/checkpoint/read_checkpoint.py reads
// and verifies the same format with h5py.
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/dtype.hpp"
#include "lowsync/core/error.hpp"

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::io {

// Bumped whenever the layout below changes; readers reject any other value.
inline constexpr std::int64_t kCheckpointFormatVersion = 1;

// File layout (format_version 1):
//   /                    attrs: format_version (int64), complete (int64, = 1, written last),
//                                plus the caller's int64 / float64 / UTF-8 string attributes
//   /<group>/<name>      contiguous little-endian dataset, attrs:
//                          kind  = "global"   crc32: uint32 scalar over the whole dataset
//                          kind  = "per_rank" crc32: uint32[K], one per row of the [K, n] dataset
// Dataset paths may contain groups ("optim/rank_state/adam_m"); groups are created on demand.

// Element types a checkpoint dataset may hold.
template <class T>
concept CheckpointElement =
    std::same_as<T, float> || std::same_as<T, double> || std::same_as<T, std::int32_t> ||
    std::same_as<T, std::int64_t> || std::same_as<T, std::uint8_t> || std::same_as<T, std::uint16_t>;

// An error that every rank of the communicator throws together, with the same text: agreed by a
// collective, or read from metadata that is the same on every rank. main() lets rank 0 say it
// once and every rank exit normally (no MPI_Abort). Every error of the writer and of the
// reader's collective methods is one.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Receives one line per skipped or unreadable checkpoint. Called on every rank with the same text.
using CheckpointWarnFn = std::function<void(const std::string&)>;

// "<dir>/ckpt-<step, 8 digits>.h5". Steps wider than 8 digits are written in full.
std::filesystem::path checkpoint_path(const std::filesystem::path& dir, std::int64_t step);

// Step encoded in a checkpoint_path() file name, or nullopt for any other name (".tmp" included).
std::optional<std::int64_t> checkpoint_step(const std::filesystem::path& path);

// Writes one checkpoint collectively over `comm`. Every method is collective: all ranks of comm call
// the same methods with the same names, in the same order. Data goes to "<final_path>.tmp";
// commit() makes it appear at final_path atomically. Any failure (on any rank) throws the same
// lowsync::Error on every rank and removes the .tmp file; an existing final_path is never touched
// before the rename. Destroying a writer without commit() is collective too and discards the file.
// `comm` must outlive the writer. Metadata is written collectively; raw data with independent
// MPI-IO (each rank's row is one contiguous block), which also keeps a failing write from hanging
// the other ranks inside OpenMPI's collective I/O.
class CheckpointWriter {
 public:
  // Rank 0 creates the parent directory if needed; the .tmp file is created (truncated) by all.
  CheckpointWriter(std::filesystem::path final_path, comm::Communicator& comm);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Root attributes. Rank 0's value is stored. "format_version" and "complete" are reserved.
  void set_attribute(std::string_view name, std::int64_t value);
  void set_attribute(std::string_view name, double value);
  void set_attribute(std::string_view name, std::string_view value);
  void set_attribute(std::string_view name, const char* value) {
    set_attribute(name, std::string_view(value));
  }
  template <std::integral I>
    requires(!std::same_as<I, bool> && !std::same_as<I, std::int64_t>)
  void set_attribute(std::string_view name, I value) {  // set_attribute("step", 42) is not ambiguous
    set_attribute(name, static_cast<std::int64_t>(value));
  }

  // Dataset of shape `shape` (row-major; empty shape = scalar) holding rank 0's `data`; the other
  // ranks' data is ignored but must have the same size. data.size() must equal prod(shape).
  template <CheckpointElement T>
  void write_global(std::string_view dataset, std::span<const T> data, std::span<const std::size_t> shape) {
    write_global_bytes(dataset, dtype_of_v<T>, data.data(), data.size(), shape);
  }
  template <CheckpointElement T>
  void write_global(std::string_view dataset, std::span<const T> data,
                    std::initializer_list<std::size_t> shape) {
    write_global_bytes(dataset, dtype_of_v<T>, data.data(), data.size(), {shape.begin(), shape.size()});
  }
  // Dataset of shape [world_size, n]: row r is rank r's `row`. Every rank must pass the same n
  // (callers with ragged state pad to the longest row and store the true lengths separately).
  template <CheckpointElement T>
  void write_per_rank(std::string_view dataset, std::span<const T> row) {
    write_per_rank_bytes(dataset, dtype_of_v<T>, row.data(), row.size());
  }

  // Marks the file complete, closes it, fsyncs it, reads it back and checks every checksum (MPI-IO
  // can drop write errors), renames .tmp -> final_path and fsyncs the directory. After commit()
  // returns on any rank, the checkpoint is durable, complete and verified.
  void commit();

  const std::filesystem::path& final_path() const { return final_path_; }
  const std::filesystem::path& tmp_path() const { return tmp_path_; }

 private:
  void write_global_bytes(std::string_view dataset, DType dtype, const void* data, std::size_t count,
                          std::span<const std::size_t> shape);
  void write_per_rank_bytes(std::string_view dataset, DType dtype, const void* row, std::size_t count);
  // Creates, fills and checksums one dataset; `error` is a problem the caller already found here.
  void write_dataset(std::string_view dataset, DType dtype, std::vector<std::uint64_t> dims, bool per_rank,
                     const void* data, std::size_t count, std::optional<std::string> error);
  void write_root_attribute(std::string_view name, DType dtype, const void* value);
  std::optional<std::string> check_root_attribute_name(const std::string& name) const;
  [[noreturn]] void abort_and_throw(const std::string& message);
  void discard() noexcept;

  std::filesystem::path final_path_;
  std::filesystem::path tmp_path_;
  comm::Communicator& comm_;
  int rank_ = 0;
  int world_size_ = 1;
  std::int64_t file_ = -1;  // hid_t; kept as int64 so this header needs no HDF5 include
  bool committed_ = false;
};

// Reads a checkpoint opened collectively over `comm`. Opening verifies that the file exists, is
// HDF5, is not truncated, carries complete = 1 and format_version == kCheckpointFormatVersion.
// Every problem throws lowsync::Error with one line naming the file and the problem. Methods marked
// collective must be called by all ranks (they agree on failure so no rank hangs); the others only
// read metadata, which is identical on every rank, so they fail identically everywhere.
class CheckpointReader {
 public:
  CheckpointReader(std::filesystem::path path, comm::Communicator& comm);  // collective
  ~CheckpointReader();                                          // collective
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const std::filesystem::path& path() const { return path_; }

  bool has_attribute(std::string_view name) const;
  std::int64_t attribute_int(std::string_view name) const;
  double attribute_double(std::string_view name) const;  // int64 attributes convert
  std::string attribute_string(std::string_view name) const;

  bool has_dataset(std::string_view dataset) const;
  std::vector<std::size_t> dataset_shape(std::string_view dataset) const;
  DType dataset_dtype(std::string_view dataset) const;
  bool is_per_rank(std::string_view dataset) const;
  // Rows of a per-rank dataset = world size of the run that wrote it (K_saved).
  std::size_t saved_ranks(std::string_view dataset) const;
  // Row length n of a per-rank dataset.
  std::size_t row_length(std::string_view dataset) const;
  // Every dataset path in the file, sorted.
  std::vector<std::string> dataset_names() const;

  // Collective. Reads a global dataset into `out` after checking dtype == T and shape ==
  // expected_shape, then verifies its CRC32.
  template <CheckpointElement T>
  void read_global(std::string_view dataset, std::span<T> out, std::span<const std::size_t> expected_shape) {
    read_global_bytes(dataset, dtype_of_v<T>, out.data(), out.size(), expected_shape);
  }
  template <CheckpointElement T>
  void read_global(std::string_view dataset, std::span<T> out,
                   std::initializer_list<std::size_t> expected_shape) {
    read_global_bytes(dataset, dtype_of_v<T>, out.data(), out.size(),
                      {expected_shape.begin(), expected_shape.size()});
  }
  // Collective. Each rank reads its own list of rows (any rows, any count, possibly none) of a
  // per-rank dataset into `out`, back to back: out.size() must be rows.size() * row_length().
  // Each row's CRC32 is verified. Resharding K_saved -> K_now is the caller's choice of rows.
  template <CheckpointElement T>
  void read_rows(std::string_view dataset, std::span<const std::size_t> rows, std::span<T> out) {
    read_rows_bytes(dataset, dtype_of_v<T>, rows, out.data(), out.size());
  }
  // Collective. One row per rank (the common case: same world size as the writer).
  template <CheckpointElement T>
  void read_row(std::string_view dataset, std::size_t row, std::span<T> out) {
    read_rows_bytes(dataset, dtype_of_v<T>, {&row, 1}, out.data(), out.size());
  }

  // Collective. Verifies the CRC32 of every dataset (work split across ranks).
  void verify_all();

 private:
  void read_global_bytes(std::string_view dataset, DType dtype, void* out, std::size_t count,
                         std::span<const std::size_t> expected_shape);
  void read_rows_bytes(std::string_view dataset, DType dtype, std::span<const std::size_t> rows, void* out,
                       std::size_t count);

  std::filesystem::path path_;
  comm::Communicator& comm_;
  int rank_ = 0;
  int world_size_ = 1;
  std::int64_t file_ = -1;  // hid_t
};

// Collective. Opens `path` and verifies completeness, version and every checksum; throws on failure.
void verify_checkpoint(const std::filesystem::path& path, comm::Communicator& comm);

// Collective. The newest checkpoint_path()-named file in `dir` that opens, is complete and passes
// every checksum, or nullopt (also when dir does not exist). ".tmp" leftovers and broken files are
// skipped with one `warn` line each (default: lowsync::log::warn on rank 0).
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& dir, comm::Communicator& comm,
                                                            const CheckpointWarnFn& warn = {});

// Collective; rank 0 deletes. Keeps the newest `keep` (>= 1) checkpoints of `dir` that open and are
// complete (checksums are not re-read here: commit() and find_latest_checkpoint do that). Deletes
// every other checkpoint file older than the newest kept one (complete ones beyond `keep` and
// broken ones) and every ".tmp" whose step is not newer than it; files newer than the newest
// complete checkpoint are left alone. Returns the paths deleted.
std::vector<std::filesystem::path> prune_checkpoints(const std::filesystem::path& dir, int keep,
                                                     comm::Communicator& comm, const CheckpointWarnFn& warn = {});

}  // namespace lowsync::io
