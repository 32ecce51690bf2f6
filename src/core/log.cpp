// Rank-aware logging to stderr (see log.hpp).
#include "lowsync/core/log.hpp"

#include <cstdio>

namespace lowsync::log {
namespace {
int g_rank = 0;
bool g_quiet = false;
}  // namespace

void set_rank(int r) { g_rank = r; }
int rank() { return g_rank; }
void set_quiet(bool quiet) { g_quiet = quiet; }

void write_line(std::string_view level, std::string_view message, bool all_ranks) {
  if (!all_ranks && (g_rank != 0 || g_quiet)) return;
  if (level == "info")
    fmt::print(stderr, "lowsync: {}\n", message);
  else
    fmt::print(stderr, "lowsync: rank {}: {}: {}\n", g_rank, level, message);
  std::fflush(stderr);
}

}  // namespace lowsync::log
