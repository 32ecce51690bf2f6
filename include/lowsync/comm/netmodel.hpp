// Alpha-beta network model: a message of S bytes over one link costs alpha + S / beta. The
// collective formulas (per call, N ranks) follow the ring/tree algorithms the ledger assumes:
//   allreduce (ring)   2(N-1) alpha + 2(N-1)/N S / beta    allgather (ring) (N-1) alpha + (N-1) s / beta
//   broadcast (pipelined tree) ceil(log2 N) alpha + S / beta   reduce_scatter, alltoall (N-1) alpha + (N-1)/N S / beta
//   gather  (N-1) alpha + (N-1) s / beta                      barrier 2 ceil(log2 N) alpha
// S = payload per rank per call (allgather: s = what one rank contributes).
#pragma once

#include "lowsync/comm/ledger.hpp"

namespace lowsync::comm {

struct NetworkModel {
  double alpha_seconds = 2e-6;        // latency per message
  double beta_bytes_per_s = 12.5e9;   // link bandwidth

  double seconds(Collective c, double payload_bytes, int world_size) const;
  // Modeled time of everything in the ledger (strategy traffic only) at world_size ranks, using
  // each entry's mean payload per call.
  double ledger_seconds(const ByteLedger& ledger, int world_size) const;
};

}  // namespace lowsync::comm
