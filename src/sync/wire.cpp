// Wire formats for strategies (see sync/wire.hpp; ALGORITHMS.md §1 "Per-tensor scaled quantizer",
// "Per-round algorithm", "Bytes per round per client"). Encoders write one rank's contribution into
// a byte buffer so the communicator records exactly the bytes that travel; decoders always
// accumulate in fp32 in rank order so every rank (or the server) gets bitwise the same sum.
#include "lowsync/sync/wire.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>
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
  return std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); });
}

void check_layout(std::span<const std::size_t> counts, std::size_t elements, std::size_t bytes,
                  std::size_t expected_bytes, std::string_view what) {
  if (total(counts) != elements)
    fail("{}: tensor counts cover {} elements, the buffer has {}", what, total(counts), elements);
  if (bytes != expected_bytes) fail("{}: {} bytes, the wire format needs {}", what, bytes, expected_bytes);
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
  check_layout(counts, x.size(), out.size(), wire_bytes_per_contribution(format, counts), "wire_encode");
  const bool finite = all_finite(x);
  switch (format) {
    case WireFormat::fp32:
      std::memcpy(out.data(), x.data(), x.size_bytes());
      return finite;
    case WireFormat::bf16:
    case WireFormat::fp16: {
      // 16-bit formats carry inf/NaN themselves; the receiver's finiteness check catches them.
      for (std::size_t i = 0; i < x.size(); ++i) {
        const std::uint16_t h = tensor::encode_16bit(x[i], format == WireFormat::bf16);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      return finite;
    }
    case WireFormat::fp8_e4m3:
    case WireFormat::fp8_e5m2: break;
  }
  const auto f = fp8_format(format);
  const std::size_t num_tensors = counts.size();
  std::uint8_t* codes = out.data() + 4 * num_tensors;
  if (!finite) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (std::size_t t = 0; t < num_tensors; ++t) std::memcpy(out.data() + 4 * t, &nan, 4);
    std::fill(codes, out.data() + out.size(), std::uint8_t{0});
    return false;
  }
  std::size_t offset = 0;
  for (std::size_t t = 0; t < num_tensors; ++t) {
    const auto xt = x.subspan(offset, counts[t]);
    const float scale = search_scale ? tensor::best_scale(xt, f) : tensor::fp8_scale(xt, f);
    const std::uint64_t key = stream_key({seed, static_cast<std::uint64_t>(round), static_cast<std::uint64_t>(rank),
                                          static_cast<std::uint64_t>(t)});
    tensor::quantize_with_scale(xt, {codes + offset, counts[t]}, f, rounding, key, scale);
    std::memcpy(out.data() + 4 * t, &scale, 4);
    offset += counts[t];
  }
  return true;
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
    case WireFormat::fp16: {
      for (std::size_t i = 0; i < out.size(); ++i) {
        std::uint16_t h;
        std::memcpy(&h, in.data() + 2 * i, 2);
        const float v = tensor::decode_16bit(h, format == WireFormat::bf16);
        if (!std::isfinite(v)) return false;
        out[i] = v;
      }
      return true;
    }
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

int average_via_wire(comm::Communicator& comm, std::span<float> data, std::span<const std::size_t> counts,
                     WireFormat format, std::uint64_t seed, std::int64_t round, std::string_view traffic) {
  if (format == WireFormat::fp32) {
    average_in_place(comm, data, traffic);
    return 0;
  }
  const std::size_t bytes = wire_bytes_per_contribution(format, counts);
  const int world = comm.size();
  // Scratch sized by the model: allocated per call, which costs little next to the collective.
  memory::TrackedBuffer<std::uint8_t> send("wire.send", bytes);
  memory::TrackedBuffer<std::uint8_t> recv("wire.recv", bytes * static_cast<std::size_t>(world));
  memory::TrackedBuffer<float> decoded("wire.decoded", data.size());
  wire_encode(data, counts, format, tensor::Rounding::stochastic, false, seed, round, comm.rank(), send.span());
  comm.allgather(std::span<const std::uint8_t>(send.span()), recv.span(), traffic);
  // Every rank decodes the same bytes in the same order with the same float operations.
  std::fill(data.begin(), data.end(), 0.0f);
  int contributors = 0;
  for (int r = 0; r < world; ++r) {
    if (!wire_decode(recv.span().subspan(static_cast<std::size_t>(r) * bytes, bytes), counts, format, decoded.span()))
      continue;
    ++contributors;
    for (std::size_t i = 0; i < data.size(); ++i) data[i] += decoded[i];
  }
  if (contributors == 0) fail("{} average: every rank's contribution is non-finite ({} wire)", traffic, wire_format_name(format));
  const float inv = 1.0f / static_cast<float>(contributors);
  for (float& x : data) x *= inv;
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
  const std::size_t bytes = wire_bytes_per_contribution(format_, counts_);
  send_ = memory::TrackedBuffer<std::uint8_t>("server.send", bytes);
  if (comm.rank() == 0) {
    master_ = memory::TrackedBuffer<float>("server.master_fp32", params.size());
    broadcast_ = memory::TrackedBuffer<float>("server.broadcast", params.size());
    decoded_ = memory::TrackedBuffer<float>("server.decoded", params.size());
    recv_ = memory::TrackedBuffer<std::uint8_t>("server.recv", bytes * static_cast<std::size_t>(comm.size()));
    std::copy(params.begin(), params.end(), master_.data());
    std::copy(params.begin(), params.end(), broadcast_.data());
  }
}

std::vector<RootStateBuffer> ServerAverager::root_state(std::string_view prefix) {
  if (format_ == WireFormat::fp32 || counts_.empty()) return {};
  const std::size_t d = total(counts_);
  const std::string p(prefix);
  return {{p + "server_master", d, master_.span()}, {p + "server_broadcast", d, broadcast_.span()}};
}

void ServerAverager::average(comm::Communicator& comm, std::span<float> params, std::int64_t round,
                             std::string_view traffic) {
  if (format_ == WireFormat::fp32) {
    average_in_place(comm, params, traffic);
    return;
  }
  if (send_.size() == 0 || total(counts_) != params.size())
    fail("server averager: round {} on {} parameters before begin() for them", round, params.size());
  const std::size_t bytes = send_.size();
  const int world = comm.size();
  // Uplink: unbiased (SR) for fp8; 16-bit formats round to nearest.
  wire_encode(params, counts_, format_, tensor::Rounding::stochastic, false, seed_, round, comm.rank(), send_.span());
  comm.gather(std::span<const std::uint8_t>(send_.span()), recv_.span(), 0, traffic);
  if (comm.rank() == 0) {
    float* mean = params.data();  // rank 0's params are overwritten by the broadcast below anyway
    std::fill(params.begin(), params.end(), 0.0f);
    int contributors = 0;
    for (int r = 0; r < world; ++r) {
      if (!wire_decode(recv_.span().subspan(static_cast<std::size_t>(r) * bytes, bytes), counts_, format_,
                       decoded_.span()))
        continue;
      ++contributors;
      for (std::size_t i = 0; i < params.size(); ++i) mean[i] += decoded_[i];
    }
    excluded_ += world - contributors;
    bool ok = contributors > 0;
    if (ok) {
      const float inv = 1.0f / static_cast<float>(contributors);
      // W += mean - B: the fp32 master moves by the clients' mean update.
      for (std::size_t i = 0; i < params.size(); ++i) master_[i] += mean[i] * inv - broadcast_[i];
      ok = wire_encode(master_.span(), counts_, format_, tensor::Rounding::nearest_even, true, seed_, round, 0,
                       send_.span());
    }
    // A failed round still broadcasts, with the excluded mark, so every rank fails at this point.
    if (!ok) wire_encode(std::vector<float>(params.size(), NAN), counts_, format_, tensor::Rounding::nearest_even,
                         false, seed_, round, 0, send_.span());
  }
  comm.broadcast(send_.span(), 0, traffic);
  if (!wire_decode(send_.span(), counts_, format_, params))
    fail("{} averaging at round {}: no finite upload or a non-finite server model ({} wire)", traffic, round,
         wire_format_name(format_));
  if (comm.rank() == 0) std::copy(params.begin(), params.end(), broadcast_.data());
}

}  // namespace lowsync::sync
