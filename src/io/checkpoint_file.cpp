// Parallel HDF5 checkpoint files (see checkpoint_file.hpp for the layout). Atomic commit per
// STYLE.md §4: write "<path>.tmp" collectively, close, fsync, rename, fsync the directory. Every
// failure seen by some ranks becomes one agreed error (allreduce + broadcast of the first failing
// rank's message) before anyone throws, so no rank is left waiting in a collective.
#include "lowsync/io/checkpoint_file.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <hdf5.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <numeric>
#include <system_error>
#include <utility>
#include <variant>

namespace lowsync::io {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFormatVersionAttr = "format_version";
constexpr const char* kCompleteAttr = "complete";
constexpr const char* kKindAttr = "kind";
constexpr const char* kCrcAttr = "crc32";
constexpr const char* kKindGlobal = "global";
constexpr const char* kKindPerRank = "per_rank";

using MaybeError = std::optional<std::string>;

// ---- collectives: through the Communicator, traffic class "checkpoint" (counted, watched) ----

constexpr std::string_view kTraffic = comm::kCheckpointTraffic;

// Rank root's string on every rank.
std::string broadcast_string(std::string text, int root, comm::Communicator& comm) {
  std::int64_t len = static_cast<std::int64_t>(text.size());
  comm.broadcast(std::span<std::int64_t>(&len, 1), root, kTraffic);
  text.resize(static_cast<std::size_t>(len));
  if (len > 0)
    comm.broadcast(std::span<std::uint8_t>(reinterpret_cast<std::uint8_t*>(text.data()), text.size()), root, kTraffic);
  return text;
}

std::vector<std::string> broadcast_lines(const std::vector<std::string>& lines, int root, comm::Communicator& comm) {
  std::string joined;
  for (const auto& line : lines) joined += line + '\n';
  joined = broadcast_string(std::move(joined), root, comm);
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t nl = joined.find('\n'); nl != std::string::npos; nl = joined.find('\n', start)) {
    out.push_back(joined.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

// Called by every rank at the same point: the lowest failing rank's message, identical on every
// rank, or nothing when no rank failed.
MaybeError agree(const MaybeError& error_here, comm::Communicator& comm) {
  const int rank = comm.rank();
  // MAX over {failed, INT_MAX - rank if failed}: any failure, and the lowest failing rank.
  std::int32_t flags[2] = {error_here ? 1 : 0, error_here ? INT_MAX - rank : 0};
  comm.allreduce(std::span<std::int32_t>(flags, 2), comm::ReduceOp::max, kTraffic);
  if (flags[0] == 0) return std::nullopt;
  const int root = INT_MAX - flags[1];
  return broadcast_string(rank == root ? *error_here : std::string(), root, comm);
}

void agree_or_throw(const MaybeError& error_here, comm::Communicator& comm) {
  if (auto agreed = agree(error_here, comm)) throw AgreedError(*agreed);
}

// ---- HDF5 helpers ----

// The library's own stack printing goes to stderr from every rank; we build one line instead.
void silence_hdf5_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t collect_error(unsigned, const H5E_error2_t* desc, void* out) {
  auto* lines = static_cast<std::vector<std::string>*>(out);
  if (desc->desc != nullptr && desc->desc[0] != '\0') lines->emplace_back(desc->desc);
  return 0;
}

// The innermost HDF5 error message (the specific cause), then the stack is cleared.
std::string hdf5_error_text() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &lines);
  H5Eclear2(H5E_DEFAULT);
  return lines.empty() ? std::string("no HDF5 error detail") : lines.front();
}

// Owns one HDF5 identifier; closes it with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && close_ != nullptr) close_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

Handle plist(hid_t cls) { return {H5Pcreate(cls), H5Pclose}; }
Handle simple_space(std::span<const hsize_t> dims) {
  if (dims.empty()) return {H5Screate(H5S_SCALAR), H5Sclose};
  return {H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose};
}

bool storable(DType t) {
  switch (t) {
    case DType::f32:
    case DType::f64:
    case DType::i32:
    case DType::i64:
    case DType::u8:
    case DType::u16:
      return true;
    default:
      return false;
  }
}

// Little-endian on disk whatever the host, so read_checkpoint.py's zlib.crc32 sees the same bytes.
hid_t file_type(DType t) {
  switch (t) {
    case DType::f32:
      return H5T_IEEE_F32LE;
    case DType::f64:
      return H5T_IEEE_F64LE;
    case DType::i32:
      return H5T_STD_I32LE;
    case DType::i64:
      return H5T_STD_I64LE;
    case DType::u8:
      return H5T_STD_U8LE;
    case DType::u16:
      return H5T_STD_U16LE;
    default:
      return -1;
  }
}

hid_t memory_type(DType t) {
  switch (t) {
    case DType::f32:
      return H5T_NATIVE_FLOAT;
    case DType::f64:
      return H5T_NATIVE_DOUBLE;
    case DType::i32:
      return H5T_NATIVE_INT32;
    case DType::i64:
      return H5T_NATIVE_INT64;
    case DType::u8:
      return H5T_NATIVE_UINT8;
    case DType::u16:
      return H5T_NATIVE_UINT16;
    default:
      return -1;
  }
}

std::optional<DType> dtype_from_hdf5(hid_t type) {
  const std::size_t size = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_FLOAT:
      if (size == 4) return DType::f32;
      if (size == 8) return DType::f64;
      return std::nullopt;
    case H5T_INTEGER: {
      const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
      if (is_signed && size == 4) return DType::i32;
      if (is_signed && size == 8) return DType::i64;
      if (!is_signed && size == 1) return DType::u8;
      if (!is_signed && size == 2) return DType::u16;
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

std::uint32_t crc32_of(const void* data, std::size_t bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  constexpr std::size_t kChunk = std::size_t{1} << 30;  // zlib takes uInt lengths
  while (bytes > 0) {
    const std::size_t n = std::min(bytes, kChunk);
    crc = crc32(crc, p, static_cast<uInt>(n));
    p += n;
    bytes -= n;
  }
  return static_cast<std::uint32_t>(crc);
}

std::uint64_t fnv1a(std::string_view bytes, std::uint64_t h = 1469598103934665603ull) {
  for (const char c : bytes) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

std::string shape_text(std::span<const std::size_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::size_t product(std::span<const std::size_t> shape) {
  return std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
}

MaybeError write_attribute(hid_t loc, std::string_view name, hid_t ftype, hid_t mtype,
                           std::span<const hsize_t> dims, const void* value) {
  const std::string key(name);
  Handle space = simple_space(dims);
  Handle attr(H5Acreate2(loc, key.c_str(), ftype, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) return fmt::format("cannot create attribute '{}' ({})", key, hdf5_error_text());
  if (H5Awrite(attr.get(), mtype, value) < 0)
    return fmt::format("cannot write attribute '{}' ({})", key, hdf5_error_text());
  return std::nullopt;
}

// Fixed-length, NUL-terminated UTF-8 string (h5py reads it as bytes; the tool decodes).
MaybeError write_string_attribute(hid_t loc, std::string_view name, std::string_view value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), value.size() + 1);
  H5Tset_strpad(type.get(), H5T_STR_NULLTERM);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  const std::string buffer(value);  // NUL-terminated
  return write_attribute(loc, name, type.get(), type.get(), {}, buffer.c_str());
}

bool attribute_exists(hid_t loc, const std::string& name) { return H5Aexists(loc, name.c_str()) > 0; }

// Reads a string attribute (fixed or variable length: files written by other tools use the latter).
std::optional<std::string> read_string_attribute(hid_t loc, const std::string& name) {
  Handle attr(H5Aopen(loc, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) return std::nullopt;
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING) return std::nullopt;
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle mtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mtype.get(), H5T_VARIABLE);
    char* text = nullptr;
    if (H5Aread(attr.get(), mtype.get(), &text) < 0 || text == nullptr) return std::nullopt;
    std::string out(text);
    H5free_memory(text);
    return out;
  }
  const std::size_t size = H5Tget_size(type.get());
  std::string out(size, '\0');
  if (H5Aread(attr.get(), type.get(), out.data()) < 0) return std::nullopt;
  out.resize(std::strlen(out.c_str()));
  return out;
}

std::optional<std::int64_t> read_int_attribute(hid_t loc, const std::string& name) {
  Handle attr(H5Aopen(loc, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) return std::nullopt;
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  Handle space(H5Aget_space(attr.get()), H5Sclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Sget_simple_extent_npoints(space.get()) != 1)
    return std::nullopt;
  std::int64_t value = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_INT64, &value) < 0) return std::nullopt;
  return value;
}

// True if every component of a "/"-separated path exists (H5Lexists needs its parents to exist).
bool path_exists(hid_t file, std::string_view path) {
  std::string prefix;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > start) {
      prefix += (prefix.empty() ? "" : "/");
      prefix += path.substr(start, slash - start);
      if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    }
    start = slash + 1;
  }
  return !prefix.empty();
}

// Cheap serial check used by pruning on rank 0 only: opens, complete = 1, right version.
MaybeError quick_check(const fs::path& path) {
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok()) return fmt::format("cannot open ({})", hdf5_error_text());
  const auto version = read_int_attribute(file.get(), kFormatVersionAttr);
  if (version != kCheckpointFormatVersion) return std::string("wrong or missing format_version");
  if (read_int_attribute(file.get(), kCompleteAttr) != 1)
    return std::string("incomplete (no complete = 1 marker)");
  return std::nullopt;
}

MaybeError fsync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return fmt::format("cannot open {} for fsync: {}", path.string(), std::strerror(errno));
  MaybeError error;
  if (::fsync(fd) != 0) error = fmt::format("fsync of {} failed: {}", path.string(), std::strerror(errno));
  ::close(fd);
  return error;
}

struct Listing {
  std::vector<std::pair<std::int64_t, fs::path>> checkpoints;  // newest first
  std::vector<std::pair<std::int64_t, fs::path>> tmp_files;
};

// Rank 0 lists `dir`; every rank gets the same listing (one directory read, no FS races).
Listing list_checkpoints(const fs::path& dir, comm::Communicator& comm) {
  const int rank = comm.rank();
  std::vector<std::string> names;
  if (rank == 0) {
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      names.push_back(it->path().filename().string());
    }
  }
  names = broadcast_lines(names, 0, comm);
  Listing out;
  for (const auto& name : names) {
    if (const auto step = checkpoint_step(name)) {
      out.checkpoints.emplace_back(*step, dir / name);
    } else if (name.ends_with(".tmp")) {
      if (const auto tmp_step = checkpoint_step(name.substr(0, name.size() - 4)))
        out.tmp_files.emplace_back(*tmp_step, dir / name);
    }
  }
  std::sort(out.checkpoints.begin(), out.checkpoints.end(), std::greater<>());
  std::sort(out.tmp_files.begin(), out.tmp_files.end(), std::greater<>());
  return out;
}

CheckpointWarnFn warn_or_default(const CheckpointWarnFn& warn, const comm::Communicator& comm) {
  if (warn) return warn;
  const int rank = comm.rank();
  return [rank](const std::string& line) {
    if (rank == 0) log::warn("{}", line);
  };
}

}  // namespace

fs::path checkpoint_path(const fs::path& dir, std::int64_t step) {
  if (step < 0) fail("checkpoint step must be >= 0, got {}", step);
  return dir / fmt::format("ckpt-{:08d}.h5", step);
}

std::optional<std::int64_t> checkpoint_step(const fs::path& path) {
  const std::string name = path.filename().string();
  constexpr std::string_view kPrefix = "ckpt-", kSuffix = ".h5";
  if (!name.starts_with(kPrefix) || !name.ends_with(kSuffix)) return std::nullopt;
  const std::string digits = name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  if (digits.size() < 8 || digits.size() > 18) return std::nullopt;
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(digits);
}

// ---- writer ----

CheckpointWriter::CheckpointWriter(fs::path final_path, comm::Communicator& comm)
    : final_path_(std::move(final_path)), comm_(comm), rank_(comm.rank()), world_size_(comm.size()) {
  silence_hdf5_errors();
  tmp_path_ = final_path_;
  tmp_path_ += ".tmp";

  MaybeError error;
  if (rank_ == 0 && final_path_.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(final_path_.parent_path(), ec);
    if (ec)
      error = fmt::format("checkpoint {}: cannot create directory {}: {}", final_path_.string(),
                          final_path_.parent_path().string(), ec.message());
  }
  agree_or_throw(error, comm_);

  Handle fapl = plist(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(fapl.get(), comm_.mpi_comm(), MPI_INFO_NULL);
  // v1.8+ object format: dense attribute storage (large config text, crc arrays for many ranks)
  // and checksummed metadata, so bit flips in headers are caught by HDF5 itself.
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  H5Pset_coll_metadata_write(fapl.get(), true);
  file_ = H5Fcreate(tmp_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  if (file_ < 0)
    error = fmt::format("checkpoint {}: cannot create ({})", tmp_path_.string(), hdf5_error_text());
  if (const auto agreed = agree(error, comm_)) {
    file_ = -1;  // only a partial open leaves handles, and closing those would hang: leak them
    discard();
    throw AgreedError(*agreed);
  }
  const std::int64_t version = kCheckpointFormatVersion;
  error = write_attribute(file_, kFormatVersionAttr, H5T_STD_I64LE, H5T_NATIVE_INT64, {}, &version);
  if (error) *error = fmt::format("checkpoint {}: {}", tmp_path_.string(), *error);
  if (auto agreed_version = agree(error, comm_)) abort_and_throw(*agreed_version);
}

CheckpointWriter::~CheckpointWriter() {
  if (!committed_) discard();
}

void CheckpointWriter::discard() noexcept {
  if (file_ >= 0) {
    // Give the space back before HDF5's close flushes metadata: on a full disk that flush could
    // fail too, and a failed H5Fclose in HDF5 1.10 leaves a half-freed file ID that crashes the
    // process at exit (HDF5 PR #2291, fixed in 1.14).
    if (rank_ == 0) ::truncate(tmp_path_.c_str(), 0);
    try {
      comm_.barrier(kTraffic);
    } catch (...) {  // noexcept path: the old MPI_Barrier ignored its return code too
    }
    H5Fclose(static_cast<hid_t>(file_));
  }
  file_ = -1;
  if (rank_ == 0) {
    std::error_code ec;
    fs::remove(tmp_path_, ec);
  }
  H5Eclear2(H5E_DEFAULT);
}

void CheckpointWriter::abort_and_throw(const std::string& message) {
  discard();
  throw AgreedError(message);
}

MaybeError CheckpointWriter::check_root_attribute_name(const std::string& name) const {
  if (name == kFormatVersionAttr || name == kCompleteAttr)
    return fmt::format("checkpoint {}: attribute name '{}' is reserved", tmp_path_.string(), name);
  if (attribute_exists(file_, name))
    return fmt::format("checkpoint {}: attribute '{}' set twice", tmp_path_.string(), name);
  return std::nullopt;
}

void CheckpointWriter::write_root_attribute(std::string_view name, DType dtype, const void* value) {
  LOWSYNC_ASSERT(file_ >= 0 && !committed_, "checkpoint {}: writer is closed", tmp_path_.string());
  const std::string key(name);
  if (auto agreed = agree(check_root_attribute_name(key), comm_)) abort_and_throw(*agreed);
  // Rank 0's value: HDF5 metadata writes must be identical on every rank.
  std::int64_t bits = 0;  // the 8 bytes of an int64 or a double
  std::memcpy(&bits, value, sizeof bits);
  comm_.broadcast(std::span<std::int64_t>(&bits, 1), 0, kTraffic);
  MaybeError error = write_attribute(file_, key, file_type(dtype), memory_type(dtype), {}, &bits);
  if (error) *error = fmt::format("checkpoint {}: {}", tmp_path_.string(), *error);
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);
}

void CheckpointWriter::set_attribute(std::string_view name, std::int64_t value) {
  write_root_attribute(name, DType::i64, &value);
}

void CheckpointWriter::set_attribute(std::string_view name, double value) {
  write_root_attribute(name, DType::f64, &value);
}

void CheckpointWriter::set_attribute(std::string_view name, std::string_view value) {
  LOWSYNC_ASSERT(file_ >= 0 && !committed_, "checkpoint {}: writer is closed", tmp_path_.string());
  const std::string key(name);
  if (auto agreed = agree(check_root_attribute_name(key), comm_)) abort_and_throw(*agreed);
  const std::string text = broadcast_string(std::string(value), 0, comm_);
  MaybeError error = write_string_attribute(file_, key, text);
  if (error) *error = fmt::format("checkpoint {}: {}", tmp_path_.string(), *error);
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);
}

void CheckpointWriter::write_global_bytes(std::string_view dataset, DType dtype, const void* data,
                                          std::size_t count, std::span<const std::size_t> shape) {
  MaybeError error;
  if (count != product(shape))
    error = fmt::format("checkpoint {}: dataset '{}': buffer holds {} elements, shape {} needs {}",
                        tmp_path_.string(), dataset, count, shape_text(shape), product(shape));
  write_dataset(dataset, dtype, {shape.begin(), shape.end()}, false, data, count, std::move(error));
}

void CheckpointWriter::write_per_rank_bytes(std::string_view dataset, DType dtype, const void* row,
                                            std::size_t count) {
  write_dataset(dataset, dtype, {static_cast<std::uint64_t>(world_size_), count}, true, row, count,
                std::nullopt);
}

void CheckpointWriter::write_dataset(std::string_view dataset, DType dtype, std::vector<std::uint64_t> dims,
                                     bool per_rank, const void* data, std::size_t count,
                                     std::optional<std::string> error) {
  LOWSYNC_ASSERT(file_ >= 0 && !committed_, "checkpoint {}: writer is closed", tmp_path_.string());
  const std::string name(dataset);
  const std::string where = fmt::format("checkpoint {}: dataset '{}'", tmp_path_.string(), name);
  if (!error && !storable(dtype))
    error = fmt::format("{}: dtype {} cannot be stored", where, dtype_name(dtype));
  // Dataset creation is collective: name, dtype and shape must match rank 0's.
  const std::string description = fmt::format("{}|{}|{}", name, dtype_name(dtype), fmt::join(dims, ","));
  const std::uint64_t signature = fnv1a(description);
  auto root_signature_bits = std::bit_cast<std::int64_t>(signature);
  comm_.broadcast(std::span<std::int64_t>(&root_signature_bits, 1), 0, kTraffic);
  const auto root_signature = std::bit_cast<std::uint64_t>(root_signature_bits);
  if (!error && root_signature != signature)
    error = fmt::format("{}: name, dtype or shape [{}] on rank {} differs from rank 0's{}", where,
                        fmt::join(dims, ", "), rank_, per_rank ? " (callers pad rows to one length)" : "");
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);

  // One CRC for a global dataset (rank 0's data), one per row for a per-rank one; every rank then
  // writes the identical attribute, as HDF5 metadata writes require.
  // The Communicator moves int32; a CRC travels as its bit pattern.
  std::vector<std::int32_t> crc_bits(per_rank ? static_cast<std::size_t>(world_size_) : 1);
  const auto my_crc = std::bit_cast<std::int32_t>(
      per_rank || rank_ == 0 ? crc32_of(data, count * dtype_bytes(dtype)) : std::uint32_t{0});
  if (per_rank) {
    comm_.allgather(std::span<const std::int32_t>(&my_crc, 1), std::span<std::int32_t>(crc_bits), kTraffic);
  } else {
    crc_bits[0] = my_crc;
    comm_.broadcast(std::span<std::int32_t>(crc_bits), 0, kTraffic);
  }
  std::vector<std::uint32_t> crcs(crc_bits.size());
  std::transform(crc_bits.begin(), crc_bits.end(), crcs.begin(), [](std::int32_t b) { return std::bit_cast<std::uint32_t>(b); });

  const std::vector<hsize_t> hdims(dims.begin(), dims.end());
  Handle space = simple_space(hdims);
  Handle lcpl = plist(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  Handle dcpl = plist(H5P_DATASET_CREATE);
  H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
  Handle dset(
      H5Dcreate2(file_, name.c_str(), file_type(dtype), space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT),
      H5Dclose);
  if (!dset.ok()) error = fmt::format("{}: cannot create ({})", where, hdf5_error_text());
  if (auto agreed = agree(error, comm_)) {
    dset.reset();
    abort_and_throw(*agreed);
  }

  // Independent I/O: a row (or rank 0's global data) is one contiguous block, so collective
  // buffering gains little, and OpenMPI's OMPIO collective path hangs the non-aggregator ranks
  // when a write fails (ENOSPC). Empty datasets have no storage allocated (fill time "never"),
  // and writing zero elements to them fails, hence the count check.
  herr_t written = 0;
  if (per_rank && count > 0) {
    const hsize_t row_dims[1] = {static_cast<hsize_t>(count)};
    Handle mem_space = simple_space(row_dims);
    Handle file_space(H5Dget_space(dset.get()), H5Sclose);
    const hsize_t start[2] = {static_cast<hsize_t>(rank_), 0};
    const hsize_t block[2] = {1, static_cast<hsize_t>(count)};
    H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, block, nullptr);
    written = H5Dwrite(dset.get(), memory_type(dtype), mem_space.get(), file_space.get(), H5P_DEFAULT, data);
  } else if (!per_rank && rank_ == 0 && count > 0) {
    written = H5Dwrite(dset.get(), memory_type(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  }
  if (written < 0) error = fmt::format("{}: write failed ({})", where, hdf5_error_text());
  // Agreed before the attributes, so every rank makes the same metadata changes.
  if (auto agreed = agree(error, comm_)) {
    dset.reset();
    abort_and_throw(*agreed);
  }

  const hsize_t crc_dims[1] = {crcs.size()};
  error = write_string_attribute(dset.get(), kKindAttr, per_rank ? kKindPerRank : kKindGlobal);
  if (!error)
    error = write_attribute(dset.get(), kCrcAttr, H5T_STD_U32LE, H5T_NATIVE_UINT32,
                            per_rank ? std::span<const hsize_t>(crc_dims) : std::span<const hsize_t>(),
                            crcs.data());
  if (error) *error = fmt::format("{}: {}", where, *error);
  if (auto agreed = agree(error, comm_)) {
    dset.reset();
    abort_and_throw(*agreed);
  }
}

void CheckpointWriter::commit() {
  LOWSYNC_ASSERT(file_ >= 0 && !committed_, "checkpoint {}: writer is closed", tmp_path_.string());
  const std::string where = fmt::format("checkpoint {}", tmp_path_.string());
  MaybeError error;
  // Flush the data first so "complete" is the last thing added to a file whose data is on disk.
  if (H5Fflush(file_, H5F_SCOPE_GLOBAL) < 0)
    error = fmt::format("{}: flush failed ({})", where, hdf5_error_text());
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);
  const std::int64_t complete = 1;
  error = write_attribute(file_, kCompleteAttr, H5T_STD_I64LE, H5T_NATIVE_INT64, {}, &complete);
  if (error) *error = fmt::format("{}: {}", where, *error);
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);

  const herr_t closed = H5Fclose(static_cast<hid_t>(file_));
  file_ = -1;
  if (closed < 0) error = fmt::format("{}: close failed ({})", where, hdf5_error_text());
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);

  if (rank_ == 0) error = fsync_path(tmp_path_, false);
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);

  // Read the file back before it takes the final name: MPI-IO can drop write errors (OMPIO's
  // collective path on a full disk did in our tests), and a complete-looking file with bad data
  // must never replace a good checkpoint nor count as one when pruning.
  try {
    verify_checkpoint(tmp_path_, comm_);
  } catch (const Error& e) {
    abort_and_throw(
        fmt::format("checkpoint {}: read-back before rename failed: {}", final_path_.string(), e.what()));
  }

  if (rank_ == 0) {
    std::error_code ec;
    fs::rename(tmp_path_, final_path_, ec);
    if (ec) {
      error = fmt::format("{}: rename to {} failed: {}", where, final_path_.string(), ec.message());
    } else {
      const fs::path dir = final_path_.has_parent_path() ? final_path_.parent_path() : fs::path(".");
      error = fsync_path(dir, true);
      if (error) *error = fmt::format("checkpoint {}: {}", final_path_.string(), *error);
    }
  }
  if (auto agreed = agree(error, comm_)) abort_and_throw(*agreed);
  committed_ = true;
}

// ---- reader ----

CheckpointReader::CheckpointReader(fs::path path, comm::Communicator& comm)
    : path_(std::move(path)), comm_(comm), rank_(comm.rank()), world_size_(comm.size()) {
  silence_hdf5_errors();
  const std::string where = fmt::format("checkpoint {}", path_.string());

  MaybeError error;
  if (rank_ == 0) {
    std::error_code ec;
    const auto status = fs::status(path_, ec);
    if (!fs::exists(status)) {
      error = fmt::format("{}: file not found", where);
    } else if (!fs::is_regular_file(status)) {
      error = fmt::format("{}: not a regular file", where);
    } else if (H5Fis_hdf5(path_.c_str()) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      error =
          fmt::format("{}: not an HDF5 file ({} bytes, no HDF5 signature)", where, fs::file_size(path_, ec));
    }
  }
  agree_or_throw(error, comm_);

  Handle fapl = plist(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(fapl.get(), comm_.mpi_comm(), MPI_INFO_NULL);
  file_ = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (file_ < 0) {
    const std::string detail = hdf5_error_text();
    error = detail.find("truncated") != std::string::npos
                ? fmt::format("{}: truncated file ({})", where, detail)
                : fmt::format("{}: cannot open as HDF5 ({})", where, detail);
  }
  if (const auto opened = agree(error, comm_)) {
    // A rank holding a handle here opened while another failed; closing is collective and would
    // hang, so the handle is leaked.
    file_ = -1;
    throw AgreedError(*opened);
  }
  const auto version = read_int_attribute(file_, kFormatVersionAttr);
  if (!version) {
    error = fmt::format("{}: not a lowsync checkpoint (no integer format_version attribute)", where);
  } else if (*version != kCheckpointFormatVersion) {
    error = fmt::format("{}: format_version {} but this build reads version {}", where, *version,
                        kCheckpointFormatVersion);
  } else if (read_int_attribute(file_, kCompleteAttr) != 1) {
    error = fmt::format("{}: incomplete checkpoint (no complete = 1 marker)", where);
  }
  H5Eclear2(H5E_DEFAULT);
  if (const auto checked = agree(error, comm_)) {
    H5Fclose(static_cast<hid_t>(file_));
    file_ = -1;
    throw AgreedError(*checked);
  }
}

CheckpointReader::~CheckpointReader() {
  if (file_ >= 0) H5Fclose(static_cast<hid_t>(file_));
}

bool CheckpointReader::has_attribute(std::string_view name) const {
  return attribute_exists(file_, std::string(name));
}

std::int64_t CheckpointReader::attribute_int(std::string_view name) const {
  const std::string key(name);
  if (!attribute_exists(file_, key)) fail("checkpoint {}: no attribute '{}'", path_.string(), key);
  const auto value = read_int_attribute(file_, key);
  if (!value) fail("checkpoint {}: attribute '{}' is not a scalar integer", path_.string(), key);
  return *value;
}

double CheckpointReader::attribute_double(std::string_view name) const {
  const std::string key(name);
  if (!attribute_exists(file_, key)) fail("checkpoint {}: no attribute '{}'", path_.string(), key);
  Handle attr(H5Aopen(file_, key.c_str(), H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  Handle space(H5Aget_space(attr.get()), H5Sclose);
  const H5T_class_t cls = H5Tget_class(type.get());
  double value = 0;
  if ((cls != H5T_FLOAT && cls != H5T_INTEGER) || H5Sget_simple_extent_npoints(space.get()) != 1 ||
      H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value) < 0) {
    H5Eclear2(H5E_DEFAULT);
    fail("checkpoint {}: attribute '{}' is not a scalar number", path_.string(), key);
  }
  return value;
}

std::string CheckpointReader::attribute_string(std::string_view name) const {
  const std::string key(name);
  if (!attribute_exists(file_, key)) fail("checkpoint {}: no attribute '{}'", path_.string(), key);
  auto value = read_string_attribute(file_, key);
  if (!value) {
    H5Eclear2(H5E_DEFAULT);
    fail("checkpoint {}: attribute '{}' is not a string", path_.string(), key);
  }
  return *value;
}

namespace {

struct DatasetInfo {
  Handle dset;
  DType dtype = DType::f32;
  std::vector<std::size_t> shape;
  std::string kind;
};

// Opens a dataset and describes it; the error names file and dataset.
std::variant<DatasetInfo, std::string> open_dataset(hid_t file, const fs::path& path,
                                                    std::string_view dataset) {
  const std::string name(dataset);
  const std::string where = fmt::format("checkpoint {}: dataset '{}'", path.string(), name);
  if (!path_exists(file, name)) return fmt::format("{}: missing", where);
  DatasetInfo info;
  info.dset = Handle(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!info.dset.ok()) return fmt::format("{}: not a readable dataset ({})", where, hdf5_error_text());
  Handle type(H5Dget_type(info.dset.get()), H5Tclose);
  const auto dtype = dtype_from_hdf5(type.get());
  if (!dtype) return fmt::format("{}: unsupported element type", where);
  info.dtype = *dtype;
  Handle space(H5Dget_space(info.dset.get()), H5Sclose);
  const int ndims = H5Sget_simple_extent_ndims(space.get());
  if (ndims < 0) return fmt::format("{}: unreadable dataspace ({})", where, hdf5_error_text());
  std::vector<hsize_t> dims(static_cast<std::size_t>(ndims));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  info.shape.assign(dims.begin(), dims.end());
  info.kind = read_string_attribute(info.dset.get(), kKindAttr).value_or("");
  H5Eclear2(H5E_DEFAULT);
  return info;
}

DatasetInfo open_dataset_or_fail(hid_t file, const fs::path& path, std::string_view dataset) {
  auto result = open_dataset(file, path, dataset);
  if (auto* message = std::get_if<std::string>(&result)) throw AgreedError(*message);
  return std::move(std::get<DatasetInfo>(result));
}

std::vector<std::uint32_t> read_crcs(hid_t dset, std::size_t expected) {
  Handle attr(H5Aopen(dset, kCrcAttr, H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) return {};
  Handle space(H5Aget_space(attr.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0 || static_cast<std::size_t>(n) != expected) return {};
  std::vector<std::uint32_t> crcs(expected);
  if (H5Aread(attr.get(), H5T_NATIVE_UINT32, crcs.data()) < 0) return {};
  return crcs;
}

// Reads rows [row, row + 1) of a 2-D dataset (or the whole dataset when row is nullopt) and checks
// the stored CRC32. Returns an error line or nothing.
MaybeError read_and_check(const DatasetInfo& info, const fs::path& path, std::string_view dataset,
                          std::optional<std::size_t> row, void* out) {
  const std::string where = fmt::format("checkpoint {}: dataset '{}'", path.string(), dataset);
  const bool per_rank = row.has_value();
  const std::size_t rows = per_rank ? info.shape.at(0) : 1;
  const auto crcs = read_crcs(info.dset.get(), rows);
  if (crcs.empty()) {
    H5Eclear2(H5E_DEFAULT);
    return fmt::format("{}: missing or malformed crc32 attribute", where);
  }
  std::size_t count = per_rank ? info.shape.at(1) : product(info.shape);
  Handle file_space(H5Dget_space(info.dset.get()), H5Sclose);
  const hsize_t mem_dims[1] = {static_cast<hsize_t>(count)};
  Handle mem_space = simple_space(mem_dims);
  if (per_rank) {
    if (count == 0) {
      H5Sselect_none(file_space.get());
      H5Sselect_none(mem_space.get());
    } else {
      const hsize_t start[2] = {static_cast<hsize_t>(*row), 0};
      const hsize_t block[2] = {1, static_cast<hsize_t>(count)};
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, block, nullptr);
    }
  } else if (info.shape.empty()) {
    mem_space = Handle(H5Screate(H5S_SCALAR), H5Sclose);
  }
  if (count > 0 && H5Dread(info.dset.get(), memory_type(info.dtype), mem_space.get(), file_space.get(),
                           H5P_DEFAULT, out) < 0)
    return fmt::format("{}: read failed ({})", where, hdf5_error_text());
  const std::uint32_t computed = crc32_of(out, count * dtype_bytes(info.dtype));
  const std::uint32_t stored = crcs[per_rank ? *row : 0];
  if (computed != stored) {
    return per_rank ? fmt::format("{}: checksum mismatch in row {} (crc32 stored {:08x}, computed {:08x})",
                                  where, *row, stored, computed)
                    : fmt::format("{}: checksum mismatch (crc32 stored {:08x}, computed {:08x})", where,
                                  stored, computed);
  }
  return std::nullopt;
}

herr_t collect_dataset(hid_t group, const char* name, const H5L_info_t* info, void* out) {
  if (info->type != H5L_TYPE_HARD) return 0;
  const hid_t object = H5Oopen(group, name, H5P_DEFAULT);
  if (object < 0) return 0;
  if (H5Iget_type(object) == H5I_DATASET) static_cast<std::vector<std::string>*>(out)->emplace_back(name);
  H5Oclose(object);
  return 0;
}

}  // namespace

bool CheckpointReader::has_dataset(std::string_view dataset) const {
  if (!path_exists(file_, dataset)) return false;
  const std::string name(dataset);
  const hid_t object = H5Oopen(file_, name.c_str(), H5P_DEFAULT);
  if (object < 0) {
    H5Eclear2(H5E_DEFAULT);
    return false;
  }
  const bool is_dataset = H5Iget_type(object) == H5I_DATASET;
  H5Oclose(object);
  return is_dataset;
}

std::vector<std::size_t> CheckpointReader::dataset_shape(std::string_view dataset) const {
  return open_dataset_or_fail(file_, path_, dataset).shape;
}

DType CheckpointReader::dataset_dtype(std::string_view dataset) const {
  return open_dataset_or_fail(file_, path_, dataset).dtype;
}

bool CheckpointReader::is_per_rank(std::string_view dataset) const {
  return open_dataset_or_fail(file_, path_, dataset).kind == kKindPerRank;
}

std::size_t CheckpointReader::saved_ranks(std::string_view dataset) const {
  const DatasetInfo info = open_dataset_or_fail(file_, path_, dataset);
  if (info.kind != kKindPerRank || info.shape.size() != 2)
    fail("checkpoint {}: dataset '{}' is not a per-rank dataset", path_.string(), dataset);
  return info.shape[0];
}

std::size_t CheckpointReader::row_length(std::string_view dataset) const {
  const DatasetInfo info = open_dataset_or_fail(file_, path_, dataset);
  if (info.kind != kKindPerRank || info.shape.size() != 2)
    fail("checkpoint {}: dataset '{}' is not a per-rank dataset", path_.string(), dataset);
  return info.shape[1];
}

std::vector<std::string> CheckpointReader::dataset_names() const {
  std::vector<std::string> names;
  H5Lvisit(file_, H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &names);
  H5Eclear2(H5E_DEFAULT);
  std::sort(names.begin(), names.end());
  return names;
}

void CheckpointReader::read_global_bytes(std::string_view dataset, DType dtype, void* out, std::size_t count,
                                         std::span<const std::size_t> expected_shape) {
  const std::string where = fmt::format("checkpoint {}: dataset '{}'", path_.string(), dataset);
  MaybeError error;
  auto opened = open_dataset(file_, path_, dataset);
  if (auto* message = std::get_if<std::string>(&opened)) {
    error = *message;
  } else {
    const DatasetInfo& info = std::get<DatasetInfo>(opened);
    if (info.kind != kKindGlobal) {
      error = fmt::format("{}: is not a global dataset (kind '{}')", where, info.kind);
    } else if (info.dtype != dtype) {
      error =
          fmt::format("{}: holds {}, caller expects {}", where, dtype_name(info.dtype), dtype_name(dtype));
    } else if (!std::equal(info.shape.begin(), info.shape.end(), expected_shape.begin(),
                           expected_shape.end())) {
      error = fmt::format("{}: shape {} but caller expects {}", where, shape_text(info.shape),
                          shape_text(expected_shape));
    } else if (count != product(expected_shape)) {
      error = fmt::format("{}: caller buffer holds {} elements, shape {} needs {}", where, count,
                          shape_text(expected_shape), product(expected_shape));
    } else {
      error = read_and_check(info, path_, dataset, std::nullopt, out);
    }
  }
  agree_or_throw(error, comm_);
}

void CheckpointReader::read_rows_bytes(std::string_view dataset, DType dtype,
                                       std::span<const std::size_t> rows, void* out, std::size_t count) {
  const std::string where = fmt::format("checkpoint {}: dataset '{}'", path_.string(), dataset);
  MaybeError error;
  auto opened = open_dataset(file_, path_, dataset);
  if (auto* message = std::get_if<std::string>(&opened)) {
    error = *message;
  } else {
    const DatasetInfo& info = std::get<DatasetInfo>(opened);
    if (info.kind != kKindPerRank || info.shape.size() != 2) {
      error = fmt::format("{}: is not a per-rank dataset (kind '{}')", where, info.kind);
    } else if (info.dtype != dtype) {
      error =
          fmt::format("{}: holds {}, caller expects {}", where, dtype_name(info.dtype), dtype_name(dtype));
    } else if (count != rows.size() * info.shape[1]) {
      error = fmt::format("{}: caller buffer holds {} elements, {} rows of length {} need {}", where, count,
                          rows.size(), info.shape[1], rows.size() * info.shape[1]);
    } else {
      const std::size_t row_bytes = info.shape[1] * dtype_bytes(dtype);
      for (std::size_t i = 0; i < rows.size() && !error; ++i) {
        if (rows[i] >= info.shape[0]) {
          error =
              fmt::format("{}: row {} requested but only {} ranks were saved", where, rows[i], info.shape[0]);
        } else {
          error = read_and_check(info, path_, dataset, rows[i], static_cast<std::byte*>(out) + i * row_bytes);
        }
      }
    }
  }
  agree_or_throw(error, comm_);
}

void CheckpointReader::verify_all() {
  MaybeError error;
  // Global dataset i is checked by rank i % P; row r of a per-rank dataset by rank r % P.
  std::size_t index = 0;
  std::vector<std::byte> buffer;
  for (const auto& name : dataset_names()) {
    if (error) break;
    auto opened = open_dataset(file_, path_, name);
    if (auto* message = std::get_if<std::string>(&opened)) {
      error = *message;
      break;
    }
    const DatasetInfo& info = std::get<DatasetInfo>(opened);
    if (info.kind == kKindPerRank && info.shape.size() == 2) {
      buffer.resize(std::max<std::size_t>(1, info.shape[1] * dtype_bytes(info.dtype)));
      for (std::size_t r = static_cast<std::size_t>(rank_); r < info.shape[0] && !error;
           r += static_cast<std::size_t>(world_size_))
        error = read_and_check(info, path_, name, r, buffer.data());
    } else if (info.kind == kKindGlobal) {
      if (index++ % static_cast<std::size_t>(world_size_) == static_cast<std::size_t>(rank_)) {
        buffer.resize(std::max<std::size_t>(1, product(info.shape) * dtype_bytes(info.dtype)));
        error = read_and_check(info, path_, name, std::nullopt, buffer.data());
      }
    } else {
      error = fmt::format("checkpoint {}: dataset '{}' has no valid kind attribute", path_.string(), name);
    }
  }
  agree_or_throw(error, comm_);
}

// ---- directory-level operations ----

void verify_checkpoint(const fs::path& path, comm::Communicator& comm) {
  CheckpointReader reader(path, comm);
  reader.verify_all();
}

std::optional<fs::path> find_latest_checkpoint(const fs::path& dir, comm::Communicator& comm,
                                               const CheckpointWarnFn& warn) {
  const CheckpointWarnFn report = warn_or_default(warn, comm);
  const Listing listing = list_checkpoints(dir, comm);
  for (const auto& [step, tmp] : listing.tmp_files)
    report(fmt::format("ignoring unfinished checkpoint {}", tmp.string()));
  for (const auto& [step, path] : listing.checkpoints) {
    try {
      verify_checkpoint(path, comm);
      return path;
    } catch (const Error& e) {
      report(fmt::format("skipping broken checkpoint: {}", e.what()));
    }
  }
  return std::nullopt;
}

std::vector<fs::path> prune_checkpoints(const fs::path& dir, int keep, comm::Communicator& comm,
                                        const CheckpointWarnFn& warn) {
  if (keep < 1) fail("checkpoint keep must be >= 1 (never delete the newest good one), got {}", keep);
  const CheckpointWarnFn report = warn_or_default(warn, comm);
  const int rank = comm.rank();
  const Listing listing = list_checkpoints(dir, comm);
  // Lines "D<path>" (deleted) and "W<text>" (warning) from rank 0; "E<text>" is an error.
  std::vector<std::string> lines;
  if (rank == 0) {
    std::optional<std::int64_t> newest_good;
    int kept = 0;
    std::vector<fs::path> doomed;
    for (const auto& [step, path] : listing.checkpoints) {
      const MaybeError problem = quick_check(path);
      if (!problem && kept < keep) {
        if (!newest_good) newest_good = step;
        ++kept;
      } else if (newest_good) {
        // Only files older than a good checkpoint go; anything newer is left for inspection.
        if (problem)
          lines.push_back(fmt::format("Wdeleting broken checkpoint {}: {}", path.string(), *problem));
        doomed.push_back(path);
      }
    }
    for (const auto& [step, tmp] : listing.tmp_files)
      if (newest_good && step <= *newest_good) doomed.push_back(tmp);
    for (const auto& path : doomed) {
      std::error_code ec;
      fs::remove(path, ec);
      lines.push_back(ec ? fmt::format("Echeckpoint {}: cannot delete: {}", path.string(), ec.message())
                         : fmt::format("D{}", path.string()));
    }
  }
  lines = broadcast_lines(lines, 0, comm);
  std::vector<fs::path> deleted;
  for (const auto& line : lines) {
    if (line.starts_with('D')) deleted.emplace_back(line.substr(1));
    if (line.starts_with('W')) report(line.substr(1));
    if (line.starts_with('E')) fail("{}", line.substr(1));
  }
  return deleted;
}

}  // namespace lowsync::io
