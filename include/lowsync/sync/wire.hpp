// Wire formats of what strategies send (precision.wire; ALGORITHMS.md §1 and "How these
// combine"): fp32, bf16, fp16, fp8_e4m3, fp8_e5m2. Two shared paths every strategy calls:
//   average_via_wire  gradient-style mean, reduce-scattered in the wire format: encoded shards
//                     by alltoall, each owner sums its shard in fp32 in rank order and encodes the
//                     mean, the encoded means all-gathered; every rank decodes the same bytes.
//   ServerAverager    model averaging with an fp32 server model (§1 per-round algorithm) sharded
//                     over the ranks: SR uplink reduce-scattered (alltoall of encoded shards, fp32
//                     accumulation in rank order), each rank updates its 1/K of W, a collective
//                     best_scale search for fp8 (on a strided sample of large tensors), the
//                     deterministic downlink all-gathered; every rank adopts the same decoded model.
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

// average_via_wire's tag ("mean") in the SR stream keys of the encoded mean, which keeps them
// apart from the uploads' streams.
inline constexpr std::uint64_t kWireMeanStream = 0x6d65616e;

// data = mean over ranks of data, through the wire format. fp32: one sum allreduce (as
// average_in_place). Otherwise a reduce-scatter + allgather in the wire format, 2 (N-1)/N of the
// encoded size on the wire per rank (half an fp32 ring allreduce for 16-bit, about a quarter for
// fp8), where an allgather of the whole encoded vectors would cost N-1 times it:
//   shards:   the n values zero-padded to N S, S = ceil(n / N) (at least 1); rank r owns shard r.
//             A piece = the part of one tensor (or the padding) inside one shard; pieces are
//             numbered 0, 1, ... through shards 0..N-1. A shard is encoded as a contribution whose
//             tensors are its pieces (wire_encode's layout), so fp8 keeps a scale per tensor piece.
//   finite:   each rank encodes its N shards (fp8: SR from stream_key({seed, round, rank, piece}),
//             amax scale per piece; 16-bit: nearest-even), then one allgather of an int32 "my
//             encoded upload is finite" per rank: every rank excludes the same contributors, and
//             none left is a lowsync::Error on every rank.
//   reduce:   one alltoall of the encoded shards (blocks padded with zeros to the largest encoded
//             shard, as the collective needs equal blocks); rank r decodes the finite ranks' copies
//             of shard r, sums them in fp32 in rank order 0..N-1 and multiplies by 1/contributors.
//   mean:     rank r encodes its mean shard (fp8: SR from stream_key({seed, round,
//             kWireMeanStream, r, piece}), amax scale per piece; 16-bit: nearest-even); one
//             allgather of the encoded shards, and every rank (the owner too) decodes all of them
//             into data: all ranks hold bitwise the same mean. A mean shard that is not finite (an
//             fp32 sum overflowed) arrives as NaN.
// So the mean is quantized twice (the uploads, then the mean). Wire bytes per rank:
// average_via_wire_bytes. Returns the number of excluded contributions.
int average_via_wire(comm::Communicator& comm, std::span<float> data, std::span<const std::size_t> counts,
                     WireFormat format, std::uint64_t seed, std::int64_t round, std::string_view traffic);

// Wire bytes one rank sends in one average_via_wire call (the ledger's formulas): fp32, a ring
// allreduce of 4n bytes; otherwise (N-1) * 4 for the flags + (N-1)/N * N B for the alltoall +
// (N-1) * B for the allgather, B = the largest encoded shard (16-bit: 2S; fp8: S + 4 per piece).
std::uint64_t average_via_wire_bytes(WireFormat format, std::span<const std::size_t> counts, int world);

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
// uplink"), the server's fp32 work spread over the ranks (§1 "Cost"): rank r owns the shard
// [r S, min((r + 1) S, d)) of W and B, S = ceil(d / K). Per round:
//   every rank: upload enc(w_k) (fp8: SR, amax scale; 16-bit: nearest-even), cut into K blocks,
//               block r = a header (fp8: the T tensor scales; 16-bit: a 4-byte "all finite" flag)
//               + the encoded shard r; one alltoall (the reduce-scatter of the uploads)
//   rank r:     mean = (1/K') sum_k dec(block from k), fp32, rank order, over its shard (K' =
//               uploads whose header is not the excluded mark: every rank sees the same headers)
//               W += mean - B   (B = the decoded model clients started this round from; the fp32
//                                master keeps what the quantized broadcast rounded away)
//   fp8 scales: per tensor, amax of W by one max allreduce (T floats), then the 16 best_scale
//               candidates' squared errors over each shard (one pass, tensor::quantize_sq_errors),
//               one allgather of the partial sums (16 T doubles), summed in rank order by every
//               rank: all pick the same scale (with K = 1 exactly best_scale's choice; with K > 1
//               the sums are added shard by shard, so a candidate within rounding of another may
//               be picked instead, docs/precision.md)
//   rank r:     Q_r = enc_det(W shard) (fp8: the chosen scales, nearest-even); one allgather of
//               the shards; every rank sets w = dec(Q) and rank r keeps B shard = its part of it.
// All ranks hold bitwise the same model. A failure (no finite upload, a non-finite W) is seen by
// every rank at the same point, so all throw together. fp32 wire: a plain sum allreduce and mean
// (the baseline), no server state.
class ServerAverager {
 public:
  ServerAverager() = default;
  ServerAverager(WireFormat format, std::uint64_t seed) : format_(format), seed_(seed) {}

  WireFormat format() const { return format_; }
  // The replicas are identical (after the start broadcast): W = B = params, sharded.
  void begin(const comm::Communicator& comm, std::span<const float> params, std::span<const std::size_t> counts);
  // One round; every rank calls it at the same point. `round` keys the SR streams.
  void average(comm::Communicator& comm, std::span<float> params, std::int64_t round, std::string_view traffic);
  // This rank's shard of the fp32 server model W: elements [server_offset(), server_offset() +
  // server_model().size()) of W (empty for fp32 wire and on ranks past the end of a small model).
  std::span<const float> server_model() const { return master_.span(); }
  std::size_t server_offset() const { return first_; }
  // Uploads excluded so far (non-finite), the same count on every rank.
  std::int64_t excluded() const { return excluded_; }
  void set_excluded(std::int64_t n) { excluded_ = n; }
  // Checkpoint state (after begin; empty for fp32 wire): W ("server_master") and B
  // ("server_broadcast"), d values each, this rank holding its shard (RootStateBuffer.offset).
  // With the SR streams keyed by (seed, round, rank, tensor) there is no RNG state; `excluded`
  // is the only counter.
  std::vector<RootStateBuffer> root_state(std::string_view prefix);
  const std::vector<std::size_t>& counts() const { return counts_; }

 private:
  void decode_shard(std::span<const std::uint8_t> block, std::span<float> out) const;
  bool block_excluded(std::span<const std::uint8_t> block) const;
  void choose_scales(comm::Communicator& comm, std::int64_t round, std::string_view traffic);
  void encode_shard();
  void decode_all(std::span<float> params);  // fp8

  WireFormat format_ = WireFormat::fp32;
  std::uint64_t seed_ = 0;
  std::vector<std::size_t> counts_;
  std::vector<std::size_t> tensor_first_;    // [T + 1] offsets of the tensors in the flat model
  int world_ = 1;
  std::size_t shard_ = 0;                    // S = ceil(d / K)
  std::size_t first_ = 0, count_ = 0;        // this rank's shard of W, B
  std::size_t header_bytes_ = 0, value_bytes_ = 1, block_bytes_ = 0;
  std::vector<float> scales_;                // [T] the broadcast's fp8 scales of this round
  memory::TrackedBuffer<float> master_;      // [count] W shard
  memory::TrackedBuffer<float> broadcast_;   // [count] B shard = dec(last broadcast)
  memory::TrackedBuffer<float> mean_;        // [count] sum of the decoded uploads
  memory::TrackedBuffer<float> decoded_;     // [count] one decoded upload shard
  memory::TrackedBuffer<std::uint8_t> upload_;   // [bytes] this rank's whole encoded upload
  memory::TrackedBuffer<std::uint8_t> send_;     // [K * block] the upload cut into blocks
  memory::TrackedBuffer<std::uint8_t> recv_;     // [K * block] every rank's block for this shard
  memory::TrackedBuffer<std::uint8_t> mine_;     // [S * value bytes] the encoded W shard
  memory::TrackedBuffer<std::uint8_t> gathered_; // [K * S * value bytes] the whole broadcast
  std::int64_t excluded_ = 0;
};

}  // namespace lowsync::sync
