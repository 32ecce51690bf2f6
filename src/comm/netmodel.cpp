// Alpha-beta cost of each collective with Open MPI 4.1's default algorithm choice (netmodel.hpp).
// The decision tables are copied as numbers from ompi/mca/coll/tuned/coll_tuned_decision_fixed.c
// (v4.1.4), commutative branch; tools/compare/netmodel.py holds the same tables and formulas.
#include "lowsync/comm/netmodel.hpp"

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace lowsync::comm {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
using Row = std::pair<double, std::vector<std::pair<double, int>>>;  // (ranks <, [(bytes <, algorithm)])

int decide(const std::vector<Row>& table, int n, double size) {
  for (const auto& [n_bound, row] : table) {
    if (n < n_bound) {
      for (const auto& [size_bound, alg] : row)
        if (size < size_bound) return alg;
    }
  }
  return table.back().second.back().second;
}

const std::vector<Row>& allreduce_table() {
  static const std::vector<Row> t = {
      {4, {{8, 4}, {4096, 3}, {8192, 4}, {16384, 3}, {65536, 4}, {262144, 5}, {kInf, 6}}},
      {8, {{16, 4}, {8192, 3}, {kInf, 6}}},
      {16, {{8192, 3}, {kInf, 6}}},
      {32, {{64, 5}, {4096, 3}, {kInf, 6}}},
      {64, {{128, 5}, {kInf, 6}}},
      {128, {{262144, 3}, {kInf, 6}}},
      {256, {{131072, 2}, {262144, 3}, {kInf, 6}}},
      {512, {{4096, 2}, {kInf, 6}}},
      {2048, {{2048, 2}, {16384, 3}, {kInf, 6}}},
      {4096, {{2048, 2}, {4096, 5}, {16384, 3}, {kInf, 6}}},
      {kInf, {{2048, 2}, {16384, 5}, {32768, 3}, {kInf, 6}}},
  };
  return t;
}

const std::vector<Row>& allgather_table() {
  static const std::vector<Row> t = {
      {32, {{kInf, 3}}},
      {64, {{1024, 3}, {65536, 5}, {kInf, 4}}},
      {128, {{512, 3}, {65536, 5}, {kInf, 4}}},
      {256, {{512, 3}, {131072, 5}, {524288, 4}, {1048576, 5}, {kInf, 4}}},
      {512, {{32, 3}, {128, 2}, {1024, 3}, {131072, 5}, {524288, 4}, {1048576, 5}, {kInf, 4}}},
      {1024, {{64, 3}, {256, 2}, {2048, 3}, {kInf, 5}}},
      {2048, {{4, 3}, {8, 2}, {16, 3}, {32, 2}, {256, 3}, {512, 2}, {4096, 3}, {kInf, 5}}},
      {4096, {{32, 2}, {128, 3}, {512, 2}, {4096, 3}, {kInf, 5}}},
      {kInf, {{2, 3}, {8, 2}, {16, 3}, {512, 2}, {4096, 3}, {kInf, 5}}},
  };
  return t;
}

int pow2_floor(int n) {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

double allreduce_seconds(int world_size, double s, double a, double b) {
  const double n = world_size;
  const int p = pow2_floor(world_size);
  const double log2p = std::log2(static_cast<double>(p));
  switch (tuned_allreduce_algorithm(world_size, s)) {
    case AllreduceAlgorithm::recursive_doubling:
      return (log2p + (world_size != p ? 2 : 0)) * (a + s / b);
    case AllreduceAlgorithm::rabenseifner:
      return 2 * log2p * a + 2 * (p - 1.0) / p * s / b + (world_size != p ? 2 * a + s / b : 0.0);
    case AllreduceAlgorithm::reduce_bcast: return 2 * std::ceil(std::log2(n)) * (a + s / b);
    case AllreduceAlgorithm::ring:
    case AllreduceAlgorithm::segmented_ring: break;
  }
  return 2 * (n - 1) * a + 2 * (n - 1) / n * s / b;
}

double allgather_seconds(int world_size, double s, double a, double b) {
  const double n = world_size, data = (n - 1) * s / b;
  switch (tuned_allgather_algorithm(world_size, s)) {
    case AllgatherAlgorithm::two_procs: return a + s / b;
    case AllgatherAlgorithm::bruck:
    case AllgatherAlgorithm::recursive_doubling: return std::ceil(std::log2(n)) * a + data;
    case AllgatherAlgorithm::neighbor_exchange: return static_cast<double>(world_size / 2) * a + data;
    case AllgatherAlgorithm::ring: break;
  }
  return (n - 1) * a + data;
}

}  // namespace

AllreduceAlgorithm tuned_allreduce_algorithm(int world_size, double payload_bytes) {
  return static_cast<AllreduceAlgorithm>(decide(allreduce_table(), world_size, payload_bytes));
}

AllgatherAlgorithm tuned_allgather_algorithm(int world_size, double share_bytes) {
  if (world_size == 2) return AllgatherAlgorithm::two_procs;
  return static_cast<AllgatherAlgorithm>(decide(allgather_table(), world_size, share_bytes));
}

double NetworkModel::seconds(Collective c, double s, int world_size) const {
  if (world_size <= 1) return 0.0;
  const double n = world_size, a = alpha_seconds, b = beta_bytes_per_s;
  const double log2n = std::ceil(std::log2(n));
  switch (c) {
    case Collective::allreduce: return allreduce_seconds(world_size, s, a, b);
    case Collective::broadcast: return log2n * a + s / b;
    case Collective::allgather:
    case Collective::allgatherv: return allgather_seconds(world_size, s, a, b);
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
