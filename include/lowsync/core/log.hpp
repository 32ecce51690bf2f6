// Logging: info lines come from rank 0 only (a 64-rank job prints one line, not 64); warnings
// and errors from any rank carry the rank. Output goes to stderr so stdout stays clean for tables.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace lowsync::log {

void set_rank(int rank);
int rank();
void set_quiet(bool quiet);  // tests: silence info lines
void write_line(std::string_view level, std::string_view message, bool all_ranks);

template <class... Args> void info(fmt::format_string<Args...> f, Args&&... args) {
  write_line("info", fmt::format(f, std::forward<Args>(args)...), false);
}
template <class... Args> void warn(fmt::format_string<Args...> f, Args&&... args) {
  write_line("warning", fmt::format(f, std::forward<Args>(args)...), true);
}

}  // namespace lowsync::log
