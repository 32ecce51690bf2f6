// Byte ledger bookkeeping and the wire-byte formulas (see ledger.hpp and the README).
#include "lowsync/comm/ledger.hpp"

namespace lowsync::comm {

std::string_view collective_name(Collective c) {
  switch (c) {
    case Collective::allreduce: return "allreduce";
    case Collective::broadcast: return "broadcast";
    case Collective::allgather: return "allgather";
    case Collective::allgatherv: return "allgatherv";
    case Collective::gather: return "gather";
    case Collective::reduce_scatter: return "reduce_scatter";
    case Collective::barrier: return "barrier";
    case Collective::send: return "send";
    case Collective::recv: return "recv";
    case Collective::alltoall: return "alltoall";
  }
  return "?";
}

LedgerEntry& LedgerEntry::operator+=(const LedgerEntry& o) {
  calls += o.calls;
  payload_bytes += o.payload_bytes;
  wire_bytes += o.wire_bytes;
  seconds += o.seconds;
  return *this;
}

std::uint64_t wire_bytes(Collective c, std::uint64_t s, int n, bool is_root) {
  if (n <= 1) return 0;
  const auto N = static_cast<std::uint64_t>(n);
  switch (c) {
    case Collective::allreduce: return 2 * (N - 1) * s / N;
    case Collective::broadcast: return (N - 1) * s / N;
    case Collective::allgather:
    case Collective::allgatherv: return (N - 1) * s;
    case Collective::gather: return is_root ? 0 : s;
    case Collective::reduce_scatter:
    case Collective::alltoall: return (N - 1) * s / N;
    case Collective::send: return s;
    case Collective::barrier:
    case Collective::recv: return 0;
  }
  return 0;
}

void ByteLedger::record(Collective c, std::string_view traffic, std::uint64_t payload, std::uint64_t wire,
                        double seconds) {
  const LedgerEntry e{1, payload, wire, seconds};
  entries_[{c, std::string(traffic)}] += e;
  // "obs.*" traffic (metrics aggregation, checkpoint agreement) is ours, not the strategy's.
  if (!traffic.starts_with("obs")) total_ += e;
}

LedgerEntry ByteLedger::by_traffic(std::string_view traffic) const {
  LedgerEntry sum;
  for (const auto& [key, e] : entries_)
    if (key.second == traffic) sum += e;
  return sum;
}

LedgerEntry ByteLedger::by_collective(Collective c) const {
  LedgerEntry sum;
  for (const auto& [key, e] : entries_)
    if (key.first == c && !key.second.starts_with("obs")) sum += e;
  return sum;
}

void ByteLedger::restore(const LedgerEntry& total) {
  entries_.clear();
  entries_[{Collective::allreduce, "restored"}] = total;
  total_ = total;
}

void ByteLedger::restore(const std::map<std::pair<Collective, std::string>, LedgerEntry>& entries) {
  entries_ = entries;
  total_ = LedgerEntry{};
  for (const auto& [key, e] : entries_)
    if (!key.second.starts_with("obs")) total_ += e;
}

}  // namespace lowsync::comm
