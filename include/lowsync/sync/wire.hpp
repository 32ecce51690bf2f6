// Wire formats of what strategies send (precision.wire; ALGORITHMS.md §1 and "How these
// combine"): fp32, bf16, fp16, fp8_e4m3, fp8_e5m2. Two shared paths every strategy calls:
//   average_via_wire  gradient-style mean: encode -> allgather -> decode in rank order, fp32 sum.
//   ServerAverager    model averaging with an fp32 server model on rank 0 (§1 per-round algorithm):
//                     SR uplink (gather), fp32 accumulation in rank order, deterministic downlink
//                     (best_scale search for fp8) broadcast, every rank adopts the same decoded model.
// Nothing is ever summed in 8 or 16 bits. The ledger sees the real encoded bytes (u8 buffers).
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/sync/strategy.hpp"
#include "lowsync/tensor/fp8.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::sync {

enum class WireFormat : std::uint8_t { fp32, bf16, fp16, fp8_e4m3, fp8_e5m2 };

// precision.wire text -> format; anything else is a lowsync::Error naming the key.
WireFormat parse_wire_format(std::string_view name);
std::string_view wire_format_name(WireFormat format);
constexpr bool is_fp8(WireFormat f) { return f == WireFormat::fp8_e4m3 || f == WireFormat::fp8_e5m2; }

// Bytes of one rank's encoded contribution: fp32 4/element; bf16, fp16 2/element; fp8 1/element
// plus one fp32 scale (4 bytes) per tensor. `counts` = elements per tensor.
std::size_t wire_bytes_per_contribution(WireFormat format, std::span<const std::size_t> counts);

// Encodes x (tensors laid out back to back, counts[t] elements each) into out
// (wire_bytes_per_contribution bytes). Layout: fp8 -> T fp32 scales, then the codes; 16-bit ->
// the bit patterns; fp32 -> the floats. fp8 rounding: stochastic with the uniform of element i
// of tensor t drawn from stream_key({seed, round, rank, t}); nearest-even otherwise. fp8 scales
// are amax/Fmax, or best_scale (ServerOptimize) when `search_scale`. Returns false, and writes a
// NaN scale into every tensor's slot (the "excluded" mark), when x has a non-finite value: E4M3
// has no inf, so such a contribution cannot travel (ALGORITHMS.md §1 "Edge cases").
bool wire_encode(std::span<const float> x, std::span<const std::size_t> counts, WireFormat format,
                 tensor::Rounding rounding, bool search_scale, std::uint64_t seed, std::int64_t round,
                 int rank, std::span<std::uint8_t> out);

// Decodes one contribution into out. Returns false (out untouched) for an excluded contribution.
bool wire_decode(std::span<const std::uint8_t> in, std::span<const std::size_t> counts, WireFormat format,
                 std::span<float> out);

// data = mean over ranks of data, through the wire format. fp32: one sum allreduce (as
// average_in_place). Otherwise every rank encodes (fp8: SR, amax scale), one allgather of the
// encoded bytes, then every rank decodes the contributions in rank order 0..K-1 and sums them in
// fp32, and scales by 1/(contributors): all ranks compute bitwise the same mean. Excluded
// (non-finite) contributions are skipped; if every rank is excluded, lowsync::Error on all ranks.
// Returns the number of excluded contributions.
int average_via_wire(comm::Communicator& comm, std::span<float> data, std::span<const std::size_t> counts,
                     WireFormat format, std::uint64_t seed, std::int64_t round, std::string_view traffic);

// The same mean for a buffer in native 16-bit storage (bf16 or fp16 bit patterns), summed in
// fp32 and stored back rounded to nearest-even, in chunks of kNative16Chunk values so the scratch
// stays small (the point of native storage). fp32 wire: allreduce of the decoded chunks (no
// exclusion, as average_in_place). A 16-bit wire of the buffer's own format: one int allgather of
// "my values are finite", then per chunk a 16-bit reduce-scatter (alltoall of the raw bits; each
// rank decodes and sums its shard in fp32 in rank order over the finite contributors and encodes
// it) and an allgather of the encoded shards: 2 (N-1)/N * 2 bytes per value, half an fp32 ring
// allreduce (the excluded count is returned; none left is an error). Other wire formats are
// refused (precision.storage = auto picks float storage for them).
inline constexpr std::size_t kNative16Chunk = std::size_t{1} << 16;
int average_native16(comm::Communicator& comm, std::span<std::uint16_t> data, bool bf16, WireFormat format,
                     std::string_view traffic);

// Model averaging with an fp32 server model (ALGORITHMS.md §1, proposal "FP8-FedAvg with unbiased
// uplink"), the server living on rank 0. Per round:
//   client k: upload enc(w_k) (fp8: SR, amax scale; 16-bit: nearest-even)      -> gather to rank 0
//   server:   mean = (1/K') sum_k dec(upload_k), fp32, rank order (K' = non-excluded uploads)
//             W += mean - B         (B = the decoded model clients started this round from; the
//                                    fp32 master W keeps what the quantized broadcast rounded away,
//                                    and is never replaced by its quantized copy)
//             Q = enc_det(W)        (fp8: per-tensor best_scale search, nearest-even)
//   broadcast Q; every rank sets w = B = dec(Q): all ranks hold bitwise the same model.
// fp32 wire: a plain sum allreduce and mean (the baseline), no server state.
class ServerAverager {
 public:
  ServerAverager() = default;
  ServerAverager(WireFormat format, std::uint64_t seed) : format_(format), seed_(seed) {}

  WireFormat format() const { return format_; }
  // The replicas are identical (after the start broadcast): W = B = params on rank 0.
  void begin(const comm::Communicator& comm, std::span<const float> params, std::span<const std::size_t> counts);
  // One round; every rank calls it at the same point. `round` keys the SR streams.
  void average(comm::Communicator& comm, std::span<float> params, std::int64_t round, std::string_view traffic);
  // Rank 0: the fp32 server model W (empty elsewhere and for fp32 wire).
  std::span<const float> server_model() const { return master_.span(); }
  // Uploads the server excluded so far (non-finite), known on rank 0.
  std::int64_t excluded() const { return excluded_; }
  void set_excluded(std::int64_t n) { excluded_ = n; }
  // Checkpoint state (after begin; empty for fp32 wire): W ("server_master") and B
  // ("server_broadcast"), rank 0's buffers, sized on every rank. With the SR streams keyed by
  // (seed, round, rank, tensor) there is no RNG state; `excluded` is the only counter.
  std::vector<RootStateBuffer> root_state(std::string_view prefix);
  const std::vector<std::size_t>& counts() const { return counts_; }

 private:
  WireFormat format_ = WireFormat::fp32;
  std::uint64_t seed_ = 0;
  std::vector<std::size_t> counts_;
  memory::TrackedBuffer<float> master_;      // [d] W, rank 0
  memory::TrackedBuffer<float> broadcast_;   // [d] B = dec(last broadcast), rank 0
  memory::TrackedBuffer<float> decoded_;     // [d] one decoded upload, rank 0
  memory::TrackedBuffer<std::uint8_t> send_; // [bytes] this rank's upload / the broadcast
  memory::TrackedBuffer<std::uint8_t> recv_; // [K * bytes] the gathered uploads, rank 0
  std::int64_t excluded_ = 0;
};

}  // namespace lowsync::sync
