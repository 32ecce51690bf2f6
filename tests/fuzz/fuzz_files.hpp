// Temporary files for the fuzz targets whose code under test reads paths: one file per target
// and process, rewritten for every input, removed at exit.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace lowsync::fuzz {

class TempFile {
 public:
  explicit TempFile(const std::string& name) {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::filesystem::path(dir != nullptr ? dir : "/tmp") /
            ("lowsync-fuzz-" + std::to_string(::getpid()) + "-" + name);
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  void write(const std::uint8_t* data, std::size_t size) const {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    if (f == nullptr) std::abort();
    if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
    std::fclose(f);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace lowsync::fuzz
