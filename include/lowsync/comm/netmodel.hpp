// Alpha-beta network model: a message of S bytes over one link costs alpha + S / beta. Allreduce
// and allgather use the algorithm Open MPI 4.1's tuned component picks by default for the message
// size and rank count (coll_tuned_decision_fixed.c; tables and formulas in netmodel.cpp and
// tools/compare/netmodel.py, which must agree): recursive doubling (log2 N latencies) for small
// messages, Rabenseifner or ring for large ones. S = payload per rank per call (allgather: s = what
// one rank contributes).
#pragma once

#include "lowsync/comm/ledger.hpp"

namespace lowsync::comm {

enum class AllreduceAlgorithm { reduce_bcast = 2, recursive_doubling = 3, ring = 4, segmented_ring = 5, rabenseifner = 6 };
enum class AllgatherAlgorithm { bruck = 2, recursive_doubling = 3, ring = 4, neighbor_exchange = 5, two_procs = 6 };

// Open MPI 4.1 ompi_coll_tuned_{allreduce,allgather}_intra_dec_fixed, commutative operations.
AllreduceAlgorithm tuned_allreduce_algorithm(int world_size, double payload_bytes);
AllgatherAlgorithm tuned_allgather_algorithm(int world_size, double share_bytes);

struct NetworkModel {
  double alpha_seconds = 2e-6;        // latency per message
  double beta_bytes_per_s = 12.5e9;   // link bandwidth

  double seconds(Collective c, double payload_bytes, int world_size) const;
  // Modeled time of everything in the ledger (strategy traffic only) at world_size ranks, using
  // each entry's mean payload per call.
  double ledger_seconds(const ByteLedger& ledger, int world_size) const;
};

}  // namespace lowsync::comm
