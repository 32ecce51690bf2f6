// Byte ledger: what every collective moved, per kind and per traffic class ("grad", "model",
// "fda_monitor", "demo", ...). payload = bytes handed to the collective by this rank; wire = bytes
// this rank sends under the algorithm the formula models (see wire_bytes() and the README):
//   allreduce (ring)      2 (N-1)/N * S        broadcast (pipelined tree)  (N-1)/N * S
//   allgather(v) (ring)   (N-1) * s_own        gather                      s_own (root: 0)
//   reduce_scatter (ring) (N-1)/N * S          send                        S
//   alltoall (pairwise)   (N-1)/N * S
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

namespace lowsync::comm {

enum class Collective : std::uint8_t { allreduce, broadcast, allgather, allgatherv, gather,
                                       reduce_scatter, barrier, send, recv, alltoall };  // append only: checkpoints store the index
std::string_view collective_name(Collective c);

// Checkpoint files' own collectives (io/checkpoint_file.cpp: error agreement, CRCs, listings).
// An "obs.*" class: in the ledger and under the watchdog, but not in the strategy's byte totals,
// so bytes_sent does not depend on the checkpoint cadence.
inline constexpr std::string_view kCheckpointTraffic = "obs.checkpoint";
// CommOptions::separate_waits: the barrier before a collective, i.e. the time spent waiting for
// the slowest rank to arrive.
inline constexpr std::string_view kWaitTraffic = "obs.wait";

struct LedgerEntry {
  std::uint64_t calls = 0;
  std::uint64_t payload_bytes = 0;
  std::uint64_t wire_bytes = 0;
  double seconds = 0.0;
  LedgerEntry& operator+=(const LedgerEntry& o);
};

// Modeled bytes this rank puts on the wire for one call; see the header comment.
std::uint64_t wire_bytes(Collective c, std::uint64_t payload_bytes, int world_size, bool is_root);

class ByteLedger {
 public:
  void record(Collective c, std::string_view traffic, std::uint64_t payload_bytes,
              std::uint64_t wire_bytes, double seconds);
  LedgerEntry total() const { return total_; }
  LedgerEntry by_traffic(std::string_view traffic) const;
  LedgerEntry by_collective(Collective c) const;
  const std::map<std::pair<Collective, std::string>, LedgerEntry>& entries() const { return entries_; }
  // Restores totals from a checkpoint (entries are summarised under "restored").
  void restore(const LedgerEntry& total);
  // Restores every entry from a checkpoint (totals recomputed as record() would).
  void restore(const std::map<std::pair<Collective, std::string>, LedgerEntry>& entries);

 private:
  std::map<std::pair<Collective, std::string>, LedgerEntry> entries_;
  LedgerEntry total_;
};

}  // namespace lowsync::comm
