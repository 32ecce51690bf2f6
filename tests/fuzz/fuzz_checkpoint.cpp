// libFuzzer target: the checkpoint reader (src/io/checkpoint_file.cpp). The input bytes are
// written to a temporary file and opened with io::CheckpointReader on a one-rank communicator;
// every attribute, dataset description and row is read and verify_all() runs. Bad input must be
// a lowsync::Error; a crash or sanitizer report (in our code or in HDF5) is a finding.
#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "fuzz_files.hpp"

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace {

lowsync::comm::Communicator* self = nullptr;

template <class T>
void read_all_rows(lowsync::io::CheckpointReader& r, const std::string& ds) {
  const std::size_t rows = r.saved_ranks(ds), n = r.row_length(ds);
  if (n > (std::size_t{1} << 26)) return;  // a header may claim any size; the reader reads rows lazily
  std::vector<T> row(n);
  for (std::size_t k = 0; k < rows && k < 64; ++k) r.read_row<T>(ds, k, std::span<T>(row));
}

template <class T>
void read_global(lowsync::io::CheckpointReader& r, const std::string& ds) {
  const auto shape = r.dataset_shape(ds);
  std::size_t n = 1;
  for (const auto d : shape) {
    if (d > (std::size_t{1} << 26) || n * d > (std::size_t{1} << 26)) return;
    n *= d;
  }
  std::vector<T> out(n);
  r.read_global<T>(ds, std::span<T>(out), std::span<const std::size_t>(shape));
}

void exercise(lowsync::io::CheckpointReader& r) {
  for (const char* a : {"step", "world_size", "num_params", "arch", "config_toml", "config_toml_crc32",
                        "elapsed_s", "strategy", "format_version", "complete"}) {
    if (!r.has_attribute(a)) continue;
    try { (void)r.attribute_int(a); } catch (const lowsync::Error&) {}
    try { (void)r.attribute_double(a); } catch (const lowsync::Error&) {}
    try { (void)r.attribute_string(a); } catch (const lowsync::Error&) {}
  }
  for (const auto& ds : r.dataset_names()) {
    try {
      (void)r.dataset_shape(ds);
      const auto dtype = r.dataset_dtype(ds);
      if (r.is_per_rank(ds)) {
        if (dtype == lowsync::DType::f32) read_all_rows<float>(r, ds);
        if (dtype == lowsync::DType::f64) read_all_rows<double>(r, ds);
        if (dtype == lowsync::DType::i64) read_all_rows<std::int64_t>(r, ds);
        if (dtype == lowsync::DType::u8) read_all_rows<std::uint8_t>(r, ds);
      } else {
        if (dtype == lowsync::DType::f32) read_global<float>(r, ds);
        if (dtype == lowsync::DType::i64) read_global<std::int64_t>(r, ds);
        if (dtype == lowsync::DType::u8) read_global<std::uint8_t>(r, ds);
      }
    } catch (const lowsync::Error&) {
    }
  }
  r.verify_all();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  self = new lowsync::comm::Communicator(MPI_COMM_SELF);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const lowsync::fuzz::TempFile file("checkpoint.h5");
  file.write(data, size);
  try {
    lowsync::io::CheckpointReader reader(file.path(), *self);
    exercise(reader);
  } catch (const lowsync::Error&) {
  }
  return 0;
}
