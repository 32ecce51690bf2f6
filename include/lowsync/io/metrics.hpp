// metrics.csv writer: fixed columns chosen at open, one row per logged step, flushed per row so
// a killed run keeps everything it logged. Empty cells for values not measured at that step.
#pragma once

#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace lowsync::io {

class MetricsCsv {
 public:
  MetricsCsv() = default;
  // append = true continues an existing file (resume) and checks that its header matches.
  MetricsCsv(const std::filesystem::path& path, std::vector<std::string> columns, bool append = false);
  ~MetricsCsv();
  MetricsCsv(const MetricsCsv&) = delete;
  MetricsCsv& operator=(const MetricsCsv&) = delete;
  MetricsCsv(MetricsCsv&& o) noexcept;
  MetricsCsv& operator=(MetricsCsv&& o) noexcept;

  void write_row(const std::vector<std::optional<double>>& values);
  const std::vector<std::string>& columns() const { return columns_; }

 private:
  std::FILE* file_ = nullptr;
  std::vector<std::string> columns_;
  std::filesystem::path path_;
};

// Writes text to path atomically: path.tmp, fsync, rename.
void write_file_atomic(const std::filesystem::path& path, const std::string& text);

}  // namespace lowsync::io
