// Training-state byte accounting and peak RSS (see memory.hpp).
#include "lowsync/core/memory.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>

namespace lowsync::memory {
namespace {
std::atomic<std::int64_t> g_current{0};
std::atomic<std::int64_t> g_peak{0};
}  // namespace

void add_bytes(std::int64_t delta) {
  const std::int64_t now = g_current.fetch_add(delta) + delta;
  std::int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}
std::int64_t current_bytes() { return g_current.load(); }
std::int64_t peak_bytes() { return g_peak.load(); }
void reset_peak() { g_peak.store(g_current.load()); }

std::int64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace lowsync::memory
