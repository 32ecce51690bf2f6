// metrics.csv and atomic small-file writes (summary.json, config.toml).
#include "lowsync/io/metrics.hpp"

#include "lowsync/core/error.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

namespace lowsync::io {

MetricsCsv::MetricsCsv(const std::filesystem::path& path, std::vector<std::string> columns, bool append)
    : columns_(std::move(columns)), path_(path) {
  std::string header;
  for (const auto& c : columns_) header += (header.empty() ? "" : ",") + c;
  if (append && std::filesystem::exists(path)) {
    std::ifstream in(path);
    std::string first;
    std::getline(in, first);
    if (first != header)
      fail("metrics file '{}' has columns '{}', this run writes '{}'", path.string(), first, header);
    file_ = std::fopen(path.c_str(), "a");
    if (file_ == nullptr) fail("cannot append to '{}': {}", path.string(), std::strerror(errno));
    return;
  }
  file_ = std::fopen(path.c_str(), "w");
  if (file_ == nullptr) fail("cannot create '{}': {}", path.string(), std::strerror(errno));
  std::fprintf(file_, "%s\n", header.c_str());
  std::fflush(file_);
}

MetricsCsv::~MetricsCsv() {
  if (file_ != nullptr) std::fclose(file_);
}

MetricsCsv::MetricsCsv(MetricsCsv&& o) noexcept
    : file_(o.file_), columns_(std::move(o.columns_)), path_(std::move(o.path_)) {
  o.file_ = nullptr;
}

MetricsCsv& MetricsCsv::operator=(MetricsCsv&& o) noexcept {
  if (this != &o) {
    if (file_ != nullptr) std::fclose(file_);
    file_ = o.file_;
    columns_ = std::move(o.columns_);
    path_ = std::move(o.path_);
    o.file_ = nullptr;
  }
  return *this;
}

void MetricsCsv::write_row(const std::vector<std::optional<double>>& values) {
  if (file_ == nullptr) return;
  LOWSYNC_ASSERT(values.size() == columns_.size(), "{} values for {} columns", values.size(), columns_.size());
  std::string line;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) line += ',';
    if (values[i]) {
      const double v = *values[i];
      line += (v == std::floor(v) && std::fabs(v) < 1e15) ? fmt::format("{:.0f}", v) : fmt::format("{:.6g}", v);
    }
  }
  line += '\n';
  if (std::fputs(line.c_str(), file_) < 0 || std::fflush(file_) != 0)
    fail("cannot write to '{}': {}", path_.string(), std::strerror(errno));
}

void write_file_atomic(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot create '{}': {}", tmp.string(), std::strerror(errno));
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      std::filesystem::remove(tmp);
      fail("cannot write '{}': {}", tmp.string(), std::strerror(err));
    }
    done += static_cast<std::size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("cannot rename '{}' to '{}': {}", tmp.string(), path.string(), ec.message());
}

}  // namespace lowsync::io
