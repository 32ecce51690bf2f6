// Wire formats for strategies (see sync/wire.hpp; ALGORITHMS.md §1 "Per-tensor scaled quantizer",
// "Per-round algorithm", "Bytes per round per client"). Encoders write one rank's contribution into
// a byte buffer so the communicator records exactly the bytes that travel. The averages are
// reduce-scatters in the wire format: the owner of a shard accumulates the decoded copies in fp32
// in rank order and encodes the result, and every rank decodes the same gathered bytes, so all
// ranks (or the sharded server) get bitwise the same values.
#include "lowsync/sync/wire.hpp"

#include "lowsync/comm/ledger.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

namespace lowsync::sync {
namespace {

tensor::Fp8Format fp8_format(WireFormat f) {
  return f == WireFormat::fp8_e4m3 ? tensor::Fp8Format::e4m3 : tensor::Fp8Format::e5m2;
}

std::size_t total(std::span<const std::size_t> counts) {
  return std::accumulate(counts.begin(), counts.end(), std::size_t{0});
}

bool all_finite(std::span<const float> x) {
  return tensor::amax_abs_or_inf(x) <= std::numeric_limits<float>::max();
}

// 16-bit patterns in a byte buffer (no alignment or aliasing assumption): staged through a small
// u16 block so the vectorised span codecs of tensor/half.hpp apply.
constexpr std::size_t kStage16 = 2048;

void encode16_to_bytes(std::span<const float> x, std::uint8_t* out, bool bf16) {
  std::uint16_t stage[kStage16];
  for (std::size_t first = 0; first < x.size(); first += kStage16) {
    const std::size_t n = std::min(kStage16, x.size() - first);
    tensor::encode_16bit(x.subspan(first, n), std::span<std::uint16_t>(stage, n), bf16);
    std::memcpy(out + 2 * first, stage, 2 * n);
  }
}

// Decodes into out; returns whether every pattern was finite (out is fully written either way).
bool decode16_from_bytes(const std::uint8_t* in, std::span<float> out, bool bf16) {
  std::uint16_t stage[kStage16];
  bool finite = true;
  for (std::size_t first = 0; first < out.size(); first += kStage16) {
    const std::size_t n = std::min(kStage16, out.size() - first);
    std::memcpy(stage, in + 2 * first, 2 * n);
    const std::span<const std::uint16_t> bits(stage, n);
    finite = tensor::all_finite_16bit(bits, bf16) && finite;
    tensor::decode_16bit(bits, out.subspan(first, n), bf16);
  }
  return finite;
}

bool all_finite_16bit_bytes(const std::uint8_t* in, std::size_t n, bool bf16) {
  std::uint16_t stage[kStage16];
  bool finite = true;
  for (std::size_t first = 0; first < n; first += kStage16) {
    const std::size_t m = std::min(kStage16, n - first);
    std::memcpy(stage, in + 2 * first, 2 * m);
    finite = tensor::all_finite_16bit(std::span<const std::uint16_t>(stage, m), bf16) && finite;
  }
  return finite;
}

void add_into(std::span<float> sum, std::span<const float> x) {
  float* __restrict s = sum.data();
  const float* __restrict v = x.data();
  for (std::size_t i = 0; i < sum.size(); ++i) s[i] += v[i];
}

void check_layout(std::span<const std::size_t> counts, std::size_t elements, std::size_t bytes,
                  std::size_t expected_bytes, std::string_view what) {
  if (total(counts) != elements)
    fail("{}: tensor counts cover {} elements, the buffer has {}", what, total(counts), elements);
  if (bytes != expected_bytes) fail("{}: {} bytes, the wire format needs {}", what, bytes, expected_bytes);
}

// wire_encode with the SR stream of tensor (or piece) t keyed by key_of(t): wire_encode keys
// tensors by (seed, round, rank, t), average_via_wire its shard pieces by their own keys.
template <class KeyOf>
bool encode_pieces(std::span<const float> x, std::span<const std::size_t> counts, WireFormat format,
                   tensor::Rounding rounding, bool search_scale, std::span<std::uint8_t> out, const KeyOf& key_of) {
  check_layout(counts, x.size(), out.size(), wire_bytes_per_contribution(format, counts), "wire_encode");
  switch (format) {
    case WireFormat::fp32:
      std::memcpy(out.data(), x.data(), x.size_bytes());
      return all_finite(x);
    case WireFormat::bf16:
    case WireFormat::fp16:
      // 16-bit formats carry inf/NaN themselves; the receiver's finiteness check catches them.
      encode16_to_bytes(x, out.data(), format == WireFormat::bf16);
      return all_finite(x);
    case WireFormat::fp8_e4m3:
    case WireFormat::fp8_e5m2: break;
  }
  const auto f = fp8_format(format);
  const std::size_t num_tensors = counts.size();
  std::uint8_t* codes = out.data() + 4 * num_tensors;
  // One pass per tensor gives both its amax (the scale) and whether the upload is finite.
  std::vector<float> amax(num_tensors);
  bool finite = true;
  for (std::size_t t = 0, offset = 0; t < num_tensors; offset += counts[t], ++t) {
    amax[t] = tensor::amax_abs_or_inf(x.subspan(offset, counts[t]));
    finite = finite && amax[t] <= std::numeric_limits<float>::max();
  }
  if (!finite) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (std::size_t t = 0; t < num_tensors; ++t) std::memcpy(out.data() + 4 * t, &nan, 4);
    std::fill(codes, out.data() + out.size(), std::uint8_t{0});
    return false;
  }
  std::size_t offset = 0;
  for (std::size_t t = 0; t < num_tensors; ++t) {
    const auto xt = x.subspan(offset, counts[t]);
    const float scale = search_scale ? tensor::best_scale(xt, f) : tensor::fp8_scale_from_amax(amax[t], f);
    tensor::quantize_with_scale(xt, {codes + offset, counts[t]}, f, rounding, key_of(t), scale);
    std::memcpy(out.data() + 4 * t, &scale, 4);
    offset += counts[t];
  }
  return true;
}

// average_via_wire's reduce-scatter layout (sync/wire.hpp): the n values, zero-padded to N S,
// cut into N shards of S = ceil(n / N) values (at least 1); rank r owns shard r. A piece is the
// part of one tensor, or the padding, that lies in one shard: a shard travels as a contribution
// whose "tensors" are its pieces, so an fp8 shard keeps a scale per tensor piece (a piece of a
// large-magnitude tensor does not set the scale of a small one beside it) and the zero padding
// has its own. Pieces are numbered through the shards in order, the id in the SR stream keys.
struct ShardPlan {
  std::size_t shard = 0;                  // S
  std::vector<std::size_t> piece_counts;  // values of every piece, shard 0's first; N S in all
  std::vector<std::size_t> first_piece;   // [N + 1] shard r's pieces are [first_piece[r], first_piece[r + 1])
  std::size_t block_bytes = 0;            // the largest encoded shard

  std::span<const std::size_t> pieces(std::size_t r) const {
    return std::span<const std::size_t>(piece_counts).subspan(first_piece[r], first_piece[r + 1] - first_piece[r]);
  }
};

ShardPlan plan_shards(std::span<const std::size_t> counts, int world, WireFormat format) {
  const std::size_t n = total(counts), ranks = static_cast<std::size_t>(world);
  ShardPlan plan;
  plan.shard = std::max<std::size_t>(1, (n + ranks - 1) / ranks);
  // Every cut inside the padded vector: the tensor boundaries and n, where the padding starts.
  std::vector<std::size_t> cuts;
  for (std::size_t t = 0, offset = 0; t < counts.size(); ++t) cuts.push_back(offset += counts[t]);
  plan.first_piece.push_back(0);
  auto cut = cuts.begin();
  for (std::size_t r = 0; r < ranks; ++r) {
    const std::size_t lo = r * plan.shard, hi = lo + plan.shard;
    std::size_t from = lo;
    for (; cut != cuts.end() && *cut < hi; ++cut) {
      if (*cut <= from) continue;  // a boundary on the shard's start, or an empty tensor
      plan.piece_counts.push_back(*cut - from);
      from = *cut;
    }
    plan.piece_counts.push_back(hi - from);
    plan.first_piece.push_back(plan.piece_counts.size());
    plan.block_bytes = std::max(plan.block_bytes, wire_bytes_per_contribution(format, plan.pieces(r)));
  }
  return plan;
}

}  // namespace

WireFormat parse_wire_format(std::string_view name) {
  if (name == "fp32") return WireFormat::fp32;
  if (name == "bf16") return WireFormat::bf16;
  if (name == "fp16") return WireFormat::fp16;
  if (name == "fp8_e4m3") return WireFormat::fp8_e4m3;
  if (name == "fp8_e5m2") return WireFormat::fp8_e5m2;
  fail("precision.wire = '{}' is not one of fp32|bf16|fp16|fp8_e4m3|fp8_e5m2", name);
}

std::string_view wire_format_name(WireFormat format) {
  switch (format) {
    case WireFormat::fp32: return "fp32";
    case WireFormat::bf16: return "bf16";
    case WireFormat::fp16: return "fp16";
    case WireFormat::fp8_e4m3: return "fp8_e4m3";
    case WireFormat::fp8_e5m2: return "fp8_e5m2";
  }
  return "?";
}

std::size_t wire_bytes_per_contribution(WireFormat format, std::span<const std::size_t> counts) {
  const std::size_t n = total(counts);
  switch (format) {
    case WireFormat::fp32: return 4 * n;
    case WireFormat::bf16:
    case WireFormat::fp16: return 2 * n;
    case WireFormat::fp8_e4m3:
    case WireFormat::fp8_e5m2: return n + 4 * counts.size();
  }
  return 0;
}

bool wire_encode(std::span<const float> x, std::span<const std::size_t> counts, WireFormat format,
                 tensor::Rounding rounding, bool search_scale, std::uint64_t seed, std::int64_t round,
                 int rank, std::span<std::uint8_t> out) {
  return encode_pieces(x, counts, format, rounding, search_scale, out, [&](std::size_t t) {
    return stream_key({seed, static_cast<std::uint64_t>(round), static_cast<std::uint64_t>(rank),
                       static_cast<std::uint64_t>(t)});
  });
}

bool wire_decode(std::span<const std::uint8_t> in, std::span<const std::size_t> counts, WireFormat format,
                 std::span<float> out) {
  check_layout(counts, out.size(), in.size(), wire_bytes_per_contribution(format, counts), "wire_decode");
  switch (format) {
    case WireFormat::fp32: {
      const std::span<const float> src(reinterpret_cast<const float*>(in.data()), out.size());
      if (!all_finite(src)) return false;
      std::memcpy(out.data(), in.data(), in.size());
      return true;
    }
    case WireFormat::bf16:
    case WireFormat::fp16:
      // Excluded contributions leave out untouched: check first, then decode.
      if (!all_finite_16bit_bytes(in.data(), out.size(), format == WireFormat::bf16)) return false;
      decode16_from_bytes(in.data(), out, format == WireFormat::bf16);
      return true;
    case WireFormat::fp8_e4m3:
    case WireFormat::fp8_e5m2: break;
  }
  const auto f = fp8_format(format);
  const std::size_t num_tensors = counts.size();
  std::vector<float> scales(num_tensors);
  for (std::size_t t = 0; t < num_tensors; ++t) {
    std::memcpy(&scales[t], in.data() + 4 * t, 4);
    if (!(std::isfinite(scales[t]) && scales[t] > 0.0f)) return false;  // the "excluded" mark
  }
  const std::uint8_t* codes = in.data() + 4 * num_tensors;
  std::size_t offset = 0;
  for (std::size_t t = 0; t < num_tensors; ++t) {
    tensor::dequantize({codes + offset, counts[t]}, scales[t], f, out.subspan(offset, counts[t]));
    offset += counts[t];
  }
  return true;
}

std::uint64_t average_via_wire_bytes(WireFormat format, std::span<const std::size_t> counts, int world) {
  if (format == WireFormat::fp32) return comm::wire_bytes(comm::Collective::allreduce, 4 * total(counts), world, false);
  const std::uint64_t block = plan_shards(counts, world, format).block_bytes;
  return comm::wire_bytes(comm::Collective::allgather, 4, world, false) +
         comm::wire_bytes(comm::Collective::alltoall, block * static_cast<std::uint64_t>(world), world, false) +
         comm::wire_bytes(comm::Collective::allgather, block, world, false);
}

int average_via_wire(comm::Communicator& comm, std::span<float> data, std::span<const std::size_t> counts,
                     WireFormat format, std::uint64_t seed, std::int64_t round, std::string_view traffic) {
  if (format == WireFormat::fp32) {
    average_in_place(comm, data, traffic);
    return 0;
  }
  if (total(counts) != data.size())
    fail("{} average: tensor counts cover {} elements, the buffer has {}", traffic, total(counts), data.size());
  const int world = comm.size(), me = comm.rank();
  const auto ranks = static_cast<std::size_t>(world), mine = static_cast<std::size_t>(me);
  const ShardPlan plan = plan_shards(counts, world, format);
  const std::size_t n = data.size(), shard = plan.shard, block = plan.block_bytes;
  // The values of shard r in data (the rest of the S is padding).
  const auto shard_values = [&](std::size_t r) { return std::min(shard, n - std::min(n, r * shard)); };
  const auto shard_bytes = [&](std::size_t r) { return wire_bytes_per_contribution(format, plan.pieces(r)); };
  // Scratch sized by the model: allocated per call, which costs little next to the collectives.
  // alltoall and allgather move equal blocks, so every encoded shard travels padded (zeros) to
  // the largest one: with fp8 the shards differ by 4 bytes per extra piece.
  memory::TrackedBuffer<float> values("wire.shard", shard);    // one shard in fp32: an upload, a decoded copy
  memory::TrackedBuffer<float> sum("wire.shard_sum", shard);   // this rank's shard: sum, then mean
  memory::TrackedBuffer<std::uint8_t> send("wire.send", ranks * block);
  memory::TrackedBuffer<std::uint8_t> recv("wire.recv", ranks * block);
  memory::TrackedBuffer<std::uint8_t> mean("wire.mean", block);
  const auto u64 = [](auto v) { return static_cast<std::uint64_t>(v); };

  // Upload: shard r of this rank's data, encoded into block r (fp8: SR keyed by (seed, round,
  // this rank, piece), amax scale per piece; 16-bit: nearest-even). "Finite" is decided on the
  // encoded bytes, as the owners will read them (a finite value can overflow fp16).
  std::fill(send.data(), send.data() + send.size(), std::uint8_t{0});
  bool finite = true;
  for (std::size_t r = 0; r < ranks; ++r) {
    const std::size_t lo = std::min(n, r * shard), count = shard_values(r);
    std::copy_n(data.data() + lo, count, values.data());
    std::fill(values.data() + count, values.data() + shard, 0.0f);
    const auto out = send.span().subspan(r * block, shard_bytes(r));
    const bool encoded = encode_pieces(values.span(), plan.pieces(r), format, tensor::Rounding::stochastic, false,
                                       out, [&](std::size_t p) {
                                         return stream_key({seed, u64(round), u64(me), u64(plan.first_piece[r] + p)});
                                       });
    const bool bf16 = format == WireFormat::bf16;
    finite = finite && (is_fp8(format) ? encoded : all_finite_16bit_bytes(out.data(), shard, bf16));
  }
  // Every rank learns which uploads are excluded, so all divide by the same count.
  const std::int32_t finite_flag = finite ? 1 : 0;
  std::vector<std::int32_t> finite_by_rank(ranks);
  comm.allgather(std::span<const std::int32_t>(&finite_flag, 1), std::span<std::int32_t>(finite_by_rank), traffic);
  const int contributors = static_cast<int>(std::count(finite_by_rank.begin(), finite_by_rank.end(), 1));
  if (contributors == 0) fail("{} average: every rank's contribution is non-finite ({} wire)", traffic, wire_format_name(format));

  // Reduce-scatter: this rank gets every rank's copy of its shard, sums the finite ones in fp32
  // in rank order and scales by 1 / contributors.
  comm.alltoall(std::span<const std::uint8_t>(send.span()), recv.span(), traffic);
  const auto my_pieces = plan.pieces(mine);
  const std::size_t my_bytes = shard_bytes(mine);
  std::fill(sum.data(), sum.data() + shard, 0.0f);
  for (std::size_t k = 0; k < ranks; ++k) {
    if (finite_by_rank[k] == 0) continue;
    // Decodes: the flag was computed from these very bytes.
    wire_decode(recv.span().subspan(k * block, my_bytes), my_pieces, format, values.span());
    add_into(sum.span(), values.span());
  }
  const float inv = 1.0f / static_cast<float>(contributors);
  for (float& x : sum.span()) x *= inv;

  // The mean travels in the wire format too (fp8: SR keyed by (seed, round, kWireMeanStream,
  // owner, piece), amax scale per piece; 16-bit: nearest-even); one allgather hands every rank
  // every encoded shard and every rank, this one included, decodes them all: the replicas stay
  // bitwise identical. A shard whose mean does not encode (an fp32 sum that overflowed) decodes
  // to NaN everywhere, where an fp32 allreduce would give inf.
  std::fill(mean.data(), mean.data() + block, std::uint8_t{0});
  encode_pieces(sum.span(), my_pieces, format, tensor::Rounding::stochastic, false, mean.span().first(my_bytes),
                [&](std::size_t p) {
                  return stream_key({seed, u64(round), kWireMeanStream, u64(me), u64(plan.first_piece[mine] + p)});
                });
  comm.allgather(std::span<const std::uint8_t>(mean.span()), recv.span(), traffic);
  for (std::size_t r = 0; r < ranks; ++r) {
    if (!wire_decode(recv.span().subspan(r * block, shard_bytes(r)), plan.pieces(r), format, values.span()))
      std::fill(values.data(), values.data() + shard, std::numeric_limits<float>::quiet_NaN());
    std::copy_n(values.data(), shard_values(r), data.data() + std::min(n, r * shard));
  }
  return world - contributors;
}

int average_native16(comm::Communicator& comm, std::span<std::uint16_t> data, bool bf16, WireFormat format,
                     std::string_view traffic) {
  const int world = comm.size();
  const float inv_world = 1.0f / static_cast<float>(world);
  const std::size_t chunk = std::min(kNative16Chunk, data.size());
  memory::TrackedBuffer<float> sum("wire.native16_sum", chunk);
  if (format == WireFormat::fp32) {
    for (std::size_t first = 0; first < data.size(); first += chunk) {
      const std::size_t n = std::min(chunk, data.size() - first);
      const auto part = data.subspan(first, n);
      const auto values = sum.span().first(n);
      tensor::decode_16bit(part, values, bf16);
      comm.allreduce(values, comm::ReduceOp::sum, traffic);
      for (float& v : values) v *= inv_world;
      tensor::encode_16bit(values, part, bf16);
    }
    return 0;
  }
  if (format != (bf16 ? WireFormat::bf16 : WireFormat::fp16))
    fail("{} average: native {} storage sends fp32 or {}, not precision.wire = {}", traffic, bf16 ? "bf16" : "fp16",
         bf16 ? "bf16" : "fp16", wire_format_name(format));
  const std::int32_t finite = tensor::all_finite_16bit(data, bf16) ? 1 : 0;
  std::vector<std::int32_t> finite_by_rank(static_cast<std::size_t>(world));
  comm.allgather(std::span<const std::int32_t>(&finite, 1), std::span<std::int32_t>(finite_by_rank), traffic);
  const int contributors = static_cast<int>(std::count(finite_by_rank.begin(), finite_by_rank.end(), 1));
  if (contributors == 0) fail("{} average: every rank's contribution is non-finite ({} wire)", traffic, wire_format_name(format));
  const float inv = 1.0f / static_cast<float>(contributors);
  // Reduce-scatter + allgather in 16 bits, chunk by chunk: rank r owns shard r of the chunk
  // (ceil(n / N) values; the last shard is padded with zeros). One alltoall brings rank r every
  // rank's copy of shard r, which it decodes and sums in fp32 in rank order over the finite
  // contributors and encodes; one allgather of the encoded shards hands every rank the chunk.
  // Each value is summed in the same order with the same float operations as if every rank had
  // gathered everything, so all ranks hold bitwise the same mean, for 2 (N-1)/N * 2 bytes per
  // value on the wire (an fp32 ring allreduce: 2 (N-1)/N * 4; an allgather: (N-1) * 2).
  const auto ranks = static_cast<std::size_t>(world);
  const std::size_t shard_cap = (chunk + ranks - 1) / ranks;
  memory::TrackedBuffer<std::uint16_t> send("wire.native16_send", shard_cap * ranks);
  memory::TrackedBuffer<std::uint16_t> recv("wire.native16_recv", shard_cap * ranks);
  memory::TrackedBuffer<std::uint16_t> mine("wire.native16_shard", shard_cap);
  for (std::size_t first = 0; first < data.size(); first += chunk) {
    const std::size_t n = std::min(chunk, data.size() - first);
    const std::size_t shard = (n + ranks - 1) / ranks, padded = shard * ranks;
    const auto part = data.subspan(first, n);
    std::copy(part.begin(), part.end(), send.data());
    std::fill(send.data() + n, send.data() + padded, std::uint16_t{0});
    comm.alltoall(std::span<const std::uint16_t>(send.data(), padded), recv.span().first(padded), traffic);
    std::fill(sum.data(), sum.data() + shard, 0.0f);
    for (int r = 0; r < world; ++r) {
      if (finite_by_rank[static_cast<std::size_t>(r)] == 0) continue;
      const std::uint16_t* bits = recv.data() + static_cast<std::size_t>(r) * shard;
      for (std::size_t i = 0; i < shard; ++i) sum[i] += tensor::decode_16bit(bits[i], bf16);
    }
    for (std::size_t i = 0; i < shard; ++i) sum[i] *= inv;
    tensor::encode_16bit(sum.span().first(shard), mine.span().first(shard), bf16);
    comm.allgather(std::span<const std::uint16_t>(mine.data(), shard), send.span().first(padded), traffic);
    std::copy(send.data(), send.data() + n, part.begin());
  }
  return world - contributors;
}

void ServerAverager::begin(const comm::Communicator& comm, std::span<const float> params,
                           std::span<const std::size_t> counts) {
  counts_.assign(counts.begin(), counts.end());
  if (counts_.empty()) counts_.push_back(params.size());
  if (total(counts_) != params.size())
    fail("server averager: tensor counts cover {} elements, the model has {}", total(counts_), params.size());
  excluded_ = 0;
  if (format_ == WireFormat::fp32) return;
  const std::size_t d = params.size(), num_tensors = counts_.size();
  tensor_first_.assign(num_tensors + 1, 0);
  for (std::size_t t = 0; t < num_tensors; ++t) tensor_first_[t + 1] = tensor_first_[t] + counts_[t];
  world_ = comm.size();
  const auto ranks = static_cast<std::size_t>(world_);
  shard_ = std::max<std::size_t>(1, (d + ranks - 1) / ranks);
  first_ = std::min(d, static_cast<std::size_t>(comm.rank()) * shard_);
  count_ = std::min(shard_, d - first_);
  header_bytes_ = is_fp8(format_) ? 4 * num_tensors : 4;
  value_bytes_ = is_fp8(format_) ? 1 : 2;
  block_bytes_ = header_bytes_ + shard_ * value_bytes_;
  scales_.assign(num_tensors, 1.0f);
  master_ = memory::TrackedBuffer<float>("server.master_fp32", count_);
  broadcast_ = memory::TrackedBuffer<float>("server.broadcast", count_);
  mean_ = memory::TrackedBuffer<float>("server.mean", count_);
  decoded_ = memory::TrackedBuffer<float>("server.decoded", count_);
  upload_ = memory::TrackedBuffer<std::uint8_t>("server.upload", wire_bytes_per_contribution(format_, counts_));
  send_ = memory::TrackedBuffer<std::uint8_t>("server.send", ranks * block_bytes_);
  recv_ = memory::TrackedBuffer<std::uint8_t>("server.recv", ranks * block_bytes_);
  mine_ = memory::TrackedBuffer<std::uint8_t>("server.shard", shard_ * value_bytes_);
  gathered_ = memory::TrackedBuffer<std::uint8_t>("server.gathered", ranks * shard_ * value_bytes_);
  std::copy_n(params.data() + first_, count_, master_.data());
  std::copy_n(params.data() + first_, count_, broadcast_.data());
}

std::vector<RootStateBuffer> ServerAverager::root_state(std::string_view prefix) {
  if (format_ == WireFormat::fp32 || counts_.empty()) return {};
  const std::size_t d = total(counts_);
  const std::string p(prefix);
  return {{p + "server_master", d, master_.span(), first_}, {p + "server_broadcast", d, broadcast_.span(), first_}};
}

bool ServerAverager::block_excluded(std::span<const std::uint8_t> block) const {
  if (!is_fp8(format_)) {
    std::uint32_t finite = 0;
    std::memcpy(&finite, block.data(), 4);
    return finite == 0;
  }
  for (std::size_t t = 0; t < counts_.size(); ++t) {
    float scale;
    std::memcpy(&scale, block.data() + 4 * t, 4);
    if (!(std::isfinite(scale) && scale > 0.0f)) return true;  // wire_encode's "excluded" mark
  }
  return false;
}

// Decodes this rank's shard from one sender's block (header + encoded shard) into out [count].
void ServerAverager::decode_shard(std::span<const std::uint8_t> block, std::span<float> out) const {
  const std::uint8_t* values = block.data() + header_bytes_;
  if (!is_fp8(format_)) {
    decode16_from_bytes(values, out, format_ == WireFormat::bf16);
    return;
  }
  const auto f = fp8_format(format_);
  const std::size_t last = first_ + count_;
  for (std::size_t t = 0; t < counts_.size(); ++t) {
    const std::size_t lo = std::max(first_, tensor_first_[t]), hi = std::min(last, tensor_first_[t + 1]);
    if (lo >= hi) continue;
    float scale;
    std::memcpy(&scale, block.data() + 4 * t, 4);
    tensor::dequantize({values + (lo - first_), hi - lo}, scale, f, out.subspan(lo - first_, hi - lo));
  }
}

// The broadcast's per-tensor scale: best_scale's rule over the tensor's search sample (whole for a
// small tensor, strided for a large one), computed from the shards.
void ServerAverager::choose_scales(comm::Communicator& comm, std::int64_t round, std::string_view traffic) {
  constexpr std::size_t J = tensor::kBestScaleCandidates;
  const auto f = fp8_format(format_);
  const std::size_t num_tensors = counts_.size(), last = first_ + count_;
  const auto piece = [&](std::size_t t) {
    const std::size_t lo = std::max(first_, tensor_first_[t]), hi = std::min(last, tensor_first_[t + 1]);
    return lo < hi ? master_.span().subspan(lo - first_, hi - lo) : std::span<float>();
  };
  // amax per tensor (+inf marks a non-finite W), one max allreduce: exact in any order.
  std::vector<float> amax(num_tensors);
  for (std::size_t t = 0; t < num_tensors; ++t) amax[t] = tensor::amax_abs_or_inf(piece(t));
  comm.allreduce(std::span<float>(amax), comm::ReduceOp::max, traffic);
  for (float a : amax)
    if (!(a <= std::numeric_limits<float>::max()))
      fail("{} averaging at round {}: the fp32 server model is non-finite ({} wire)", traffic, round,
           wire_format_name(format_));
  // The squared error of every candidate over this shard's part of every tensor's search sample
  // (every element of a small tensor, every kScaleSearchStride-th of a large one, counted from the
  // tensor's first element, so the sample does not depend on the number of ranks); one allgather,
  // then every rank adds the partial sums in rank order: all ranks choose the same scales.
  std::vector<std::array<float, J>> candidates(num_tensors);
  std::vector<double> partial(num_tensors * J, 0.0);
  for (std::size_t t = 0; t < num_tensors; ++t) {
    candidates[t] = tensor::best_scale_candidates(tensor::fp8_scale_from_amax(amax[t], f));
    auto w = std::span<const float>(piece(t));
    if (!w.empty() && counts_[t] >= tensor::kScaleSearchFullBelow) {
      // decoded_ is free between the upload decode and the next round: the sample goes there.
      constexpr std::size_t stride = tensor::kScaleSearchStride;
      const std::size_t rel = std::max(first_, tensor_first_[t]) - tensor_first_[t];
      std::size_t n = 0;
      for (std::size_t i = (stride - rel % stride) % stride; i < w.size(); i += stride) decoded_[n++] = w[i];
      w = std::span<const float>(decoded_.data(), n);
    }
    if (!w.empty())
      tensor::quantize_sq_errors(w, f, candidates[t], std::span<double, J>(partial.data() + t * J, J));
  }
  std::vector<double> all(partial.size() * static_cast<std::size_t>(world_));
  comm.allgather(std::span<const double>(partial), std::span<double>(all), traffic);
  for (std::size_t t = 0; t < num_tensors; ++t) {
    if (amax[t] == 0.0f) {  // best_scale of an all-zero tensor
      scales_[t] = 1.0f;
      continue;
    }
    std::array<double, J> error{};
    for (int r = 0; r < world_; ++r)
      for (std::size_t j = 0; j < J; ++j) error[j] += all[(static_cast<std::size_t>(r) * num_tensors + t) * J + j];
    scales_[t] = candidates[t][static_cast<std::size_t>(tensor::best_scale_index(error))];
  }
}

// mine = enc_det(W shard), zero-padded to S values.
void ServerAverager::encode_shard() {
  std::fill(mine_.data(), mine_.data() + mine_.size(), std::uint8_t{0});
  if (!is_fp8(format_)) {
    encode16_to_bytes(master_.span(), mine_.data(), format_ == WireFormat::bf16);
    return;
  }
  const auto f = fp8_format(format_);
  const std::size_t last = first_ + count_;
  for (std::size_t t = 0; t < counts_.size(); ++t) {
    const std::size_t lo = std::max(first_, tensor_first_[t]), hi = std::min(last, tensor_first_[t + 1]);
    if (lo >= hi) continue;
    // Nearest-even ignores the stream key; element by element the codes are those of the whole tensor.
    tensor::quantize_with_scale(master_.span().subspan(lo - first_, hi - lo), {mine_.data() + (lo - first_), hi - lo},
                                f, tensor::Rounding::nearest_even, 0, scales_[t]);
  }
}

// params = dec(the gathered fp8 broadcast): the shards lie back to back, so its first d codes
// are the model in order.
void ServerAverager::decode_all(std::span<float> params) {
  const auto f = fp8_format(format_);
  for (std::size_t t = 0; t < counts_.size(); ++t)
    tensor::dequantize({gathered_.data() + tensor_first_[t], counts_[t]}, scales_[t], f,
                       params.subspan(tensor_first_[t], counts_[t]));
}

void ServerAverager::average(comm::Communicator& comm, std::span<float> params, std::int64_t round,
                             std::string_view traffic) {
  if (format_ == WireFormat::fp32) {
    average_in_place(comm, params, traffic);
    return;
  }
  if (send_.size() == 0 || total(counts_) != params.size() || comm.size() != world_)
    fail("server averager: round {} on {} parameters and {} ranks before begin() for them", round, params.size(),
         comm.size());
  const auto ranks = static_cast<std::size_t>(world_);
  const std::size_t d = params.size(), num_tensors = counts_.size();
  // Uplink: unbiased (SR) for fp8; 16-bit formats round to nearest. Block r carries the header and
  // the encoded shard r (zero-padded), so rank r can decode its shard of every upload.
  wire_encode(params, counts_, format_, tensor::Rounding::stochastic, false, seed_, round, comm.rank(), upload_.span());
  const std::size_t header_in_upload = is_fp8(format_) ? 4 * num_tensors : 0;
  std::uint8_t header[4];
  if (!is_fp8(format_)) {
    const std::uint32_t finite = all_finite_16bit_bytes(upload_.data(), d, format_ == WireFormat::bf16) ? 1 : 0;
    std::memcpy(header, &finite, 4);
  }
  std::fill(send_.data(), send_.data() + send_.size(), std::uint8_t{0});
  for (std::size_t r = 0; r < ranks; ++r) {
    std::uint8_t* block = send_.data() + r * block_bytes_;
    std::memcpy(block, is_fp8(format_) ? upload_.data() : header, header_bytes_);
    const std::size_t lo = std::min(d, r * shard_), n = std::min(shard_, d - lo);
    std::memcpy(block + header_bytes_, upload_.data() + header_in_upload + lo * value_bytes_, n * value_bytes_);
  }
  comm.alltoall(std::span<const std::uint8_t>(send_.span()), recv_.span(), traffic);

  // Server work on this rank's shard: the rank-order fp32 mean of the uploads, then W += mean - B.
  std::fill(mean_.data(), mean_.data() + count_, 0.0f);
  int contributors = 0;
  for (std::size_t k = 0; k < ranks; ++k) {
    const auto block = recv_.span().subspan(k * block_bytes_, block_bytes_);
    if (block_excluded(block)) continue;
    ++contributors;
    decode_shard(block, decoded_.span());
    add_into(mean_.span(), decoded_.span());
  }
  excluded_ += world_ - contributors;
  if (contributors == 0)
    fail("{} averaging at round {}: no finite upload or a non-finite server model ({} wire)", traffic, round,
         wire_format_name(format_));
  const float inv = 1.0f / static_cast<float>(contributors);
  {
    float* __restrict w = master_.data();
    const float* __restrict m = mean_.data();
    const float* __restrict b = broadcast_.data();
    for (std::size_t i = 0; i < count_; ++i) w[i] += m[i] * inv - b[i];
  }

  // Downlink: deterministic, scales chosen together, shards all-gathered.
  if (is_fp8(format_)) choose_scales(comm, round, traffic);
  encode_shard();
  comm.allgather(std::span<const std::uint8_t>(mine_.span()), gathered_.span(), traffic);
  if (is_fp8(format_)) {
    decode_all(params);
  } else if (!decode16_from_bytes(gathered_.data(), params, format_ == WireFormat::bf16)) {
    // Every rank decodes the same bytes, so all fail here together.
    fail("{} averaging at round {}: no finite upload or a non-finite server model ({} wire)", traffic, round,
         wire_format_name(format_));
  }
  std::copy_n(params.data() + first_, count_, broadcast_.data());
}

}  // namespace lowsync::sync
