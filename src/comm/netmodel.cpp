// Alpha-beta formulas (see netmodel.hpp).
#include "lowsync/comm/netmodel.hpp"

#include <cmath>

namespace lowsync::comm {

double NetworkModel::seconds(Collective c, double s, int world_size) const {
  if (world_size <= 1) return 0.0;
  const double n = world_size, a = alpha_seconds, b = beta_bytes_per_s;
  const double log2n = std::ceil(std::log2(n));
  switch (c) {
    case Collective::allreduce: return 2 * (n - 1) * a + 2 * (n - 1) / n * s / b;
    case Collective::broadcast: return log2n * a + s / b;
    case Collective::allgather:
    case Collective::allgatherv:
    case Collective::gather: return (n - 1) * a + (n - 1) * s / b;
    case Collective::reduce_scatter:
    case Collective::alltoall: return (n - 1) * a + (n - 1) / n * s / b;
    case Collective::barrier: return 2 * log2n * a;
    case Collective::send:
    case Collective::recv: return a + s / b;
  }
  return 0.0;
}

double NetworkModel::ledger_seconds(const ByteLedger& ledger, int world_size) const {
  double total = 0.0;
  for (const auto& [key, e] : ledger.entries()) {
    if (key.second.starts_with("obs") || e.calls == 0) continue;
    const double per_call = static_cast<double>(e.payload_bytes) / static_cast<double>(e.calls);
    total += static_cast<double>(e.calls) * seconds(key.first, per_call, world_size);
  }
  return total;
}

}  // namespace lowsync::comm
