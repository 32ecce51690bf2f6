// ranks: 1 2 4
// Wire formats (sync/wire.hpp): the reduce-scatter average of an fp8/16-bit wire equals, bitwise
// on every rank, a reference built here with the tensor codecs from each rank's data (a pure
// function of its rank): shards cut into tensor pieces, each rounded with its documented SR key,
// summed in fp32 in rank order, the mean rounded again; shards that cut tensors, fewer values
// than ranks, excluded non-finite uploads, its bytes by formula; the sharded fp32 server model round
// against an independent reference (brute-force scale search with the reference codec), for fp8
// and 16-bit wires, tiny shards and failures; the ledger counts the real encoded bytes.
#include "support/reference_fp8.hpp"
#include "support/training.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/sync/wire.hpp"
#include "lowsync/tensor/fp8.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace lowsync::sync {
namespace {

using testing::world_rank;
using testing::world_size;

const std::vector<std::size_t> kCounts = {300, 17, 1000, 1};

// Rank r's data: tensors of different magnitudes so per-tensor scales matter.
std::vector<float> rank_data(int r, std::uint64_t salt = 0, const std::vector<std::size_t>& counts = kCounts) {
  std::vector<float> x;
  const float magnitudes[] = {0.05f, 3.0f, 1e-3f, 20.0f};
  for (std::size_t t = 0; t < counts.size(); ++t)
    for (std::size_t i = 0; i < counts[t]; ++i)
      x.push_back(magnitudes[t] * normal01(stream_key({77, salt, static_cast<std::uint64_t>(r), t}), i));
  return x;
}

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

std::uint64_t wire_bytes_of(const comm::Communicator& comm, std::string_view traffic) {
  std::uint64_t b = 0;
  for (const auto& [key, e] : comm.ledger().entries())
    if (key.second == traffic) b += e.wire_bytes;
  return b;
}

// The decoded fp8 SR upload of rank r, by the tensor API directly (not through wire_encode).
std::vector<float> fp8_upload(const std::vector<float>& x, tensor::Fp8Format f, std::uint64_t seed,
                              std::int64_t round, int r, const std::vector<std::size_t>& counts = kCounts) {
  std::vector<float> out(x.size());
  std::size_t off = 0;
  for (std::size_t t = 0; t < counts.size(); ++t) {
    std::span<const float> xt(x.data() + off, counts[t]);
    std::vector<std::uint8_t> q(counts[t]);
    const float s = tensor::quantize(xt, q, f, tensor::Rounding::stochastic,
                                     stream_key({seed, static_cast<std::uint64_t>(round), static_cast<std::uint64_t>(r), t}));
    tensor::dequantize(q, s, f, {out.data() + off, counts[t]});
    off += counts[t];
  }
  return out;
}

// average_via_wire's shard layout, rebuilt here from its description in sync/wire.hpp: S =
// ceil(n / K) values per shard (at least 1), the vector zero-padded to K S; the pieces of shard r
// are its overlaps with the tensors, in order, then its padding; pieces are numbered through the
// shards (the id in the SR keys).
struct ShardLayout {
  std::size_t shard = 0;
  std::vector<std::vector<std::size_t>> pieces;  // [K] piece lengths of each shard
  std::vector<std::size_t> first_id;             // [K] id of each shard's first piece
};

ShardLayout shard_layout(const std::vector<std::size_t>& counts, std::size_t K) {
  std::size_t n = 0;
  for (std::size_t c : counts) n += c;
  ShardLayout layout;
  layout.shard = std::max<std::size_t>(1, (n + K - 1) / K);
  std::size_t id = 0;
  for (std::size_t r = 0; r < K; ++r) {
    const std::size_t lo = r * layout.shard, hi = lo + layout.shard;
    std::vector<std::size_t> pieces;
    std::size_t start = 0;
    for (std::size_t c : counts) {
      const std::size_t a = std::max(lo, start), b = std::min(hi, start + c);
      if (a < b) pieces.push_back(b - a);
      start += c;
    }
    if (hi > std::max(lo, n)) pieces.push_back(hi - std::max(lo, n));
    layout.first_id.push_back(id);
    id += pieces.size();
    layout.pieces.push_back(pieces);
  }
  return layout;
}

// x rounded through the wire format, one piece: fp8 = tensor::quantize (amax scale, SR with
// `key`) and dequantize; 16-bit = nearest-even.
void round_piece(std::span<const float> x, std::span<float> out, WireFormat format, std::uint64_t key) {
  if (!is_fp8(format)) {
    for (std::size_t i = 0; i < x.size(); ++i)
      out[i] = format == WireFormat::bf16 ? tensor::bf16_round(x[i]) : tensor::fp16_round(x[i]);
    return;
  }
  const auto f = format == WireFormat::fp8_e4m3 ? tensor::Fp8Format::e4m3 : tensor::Fp8Format::e5m2;
  std::vector<std::uint8_t> q(x.size());
  const float s = tensor::quantize(x, q, f, tensor::Rounding::stochastic, key);
  tensor::dequantize(q, s, f, out);
}

// What average_via_wire must produce on every rank: each contributing rank's shards rounded piece
// by piece (key (seed, round, rank, piece id)), summed in fp32 in rank order, times
// 1/contributors, the mean rounded piece by piece again (key (seed, round, kWireMeanStream,
// owner, piece id)).
std::vector<float> reference_average(const std::vector<std::vector<float>>& all, const std::vector<std::size_t>& counts,
                                     WireFormat format, std::uint64_t seed, std::int64_t round, int excluded_rank) {
  const std::size_t K = all.size(), n = all[0].size();
  const ShardLayout layout = shard_layout(counts, K);
  const std::size_t padded = K * layout.shard;
  const auto r64 = static_cast<std::uint64_t>(round);
  // Calls fn(owner, piece id, first value, length) for every piece in order.
  const auto for_pieces = [&](auto&& fn) {
    for (std::size_t r = 0; r < K; ++r) {
      std::size_t first = r * layout.shard;
      for (std::size_t p = 0; p < layout.pieces[r].size(); ++p) {
        fn(r, layout.first_id[r] + p, first, layout.pieces[r][p]);
        first += layout.pieces[r][p];
      }
    }
  };
  std::vector<float> sum(padded, 0.0f), rounded(padded);
  int contributors = 0;
  for (std::size_t k = 0; k < K; ++k) {
    if (static_cast<int>(k) == excluded_rank) continue;
    ++contributors;
    std::vector<float> x = all[k];
    x.resize(padded, 0.0f);
    for_pieces([&](std::size_t, std::size_t id, std::size_t first, std::size_t len) {
      round_piece({x.data() + first, len}, {rounded.data() + first, len}, format, stream_key({seed, r64, k, id}));
    });
    for (std::size_t i = 0; i < padded; ++i) sum[i] += rounded[i];
  }
  const float inv = 1.0f / static_cast<float>(contributors);
  for (float& v : sum) v *= inv;
  for_pieces([&](std::size_t owner, std::size_t id, std::size_t first, std::size_t len) {
    round_piece({sum.data() + first, len}, {rounded.data() + first, len}, format,
                stream_key({seed, r64, kWireMeanStream, owner, id}));
  });
  rounded.resize(n);
  return rounded;
}

// Wire bytes per rank of one call, from the ledger's formulas: the int32 flag allgather, the
// alltoall of K blocks and the allgather of one block; a block is the largest encoded shard
// (16-bit: 2 S; fp8: S codes + a 4-byte scale per piece).
std::uint64_t reduce_scatter_bytes(const std::vector<std::size_t>& counts, std::size_t K, WireFormat format) {
  const ShardLayout layout = shard_layout(counts, K);
  std::uint64_t block = 0;
  for (const auto& pieces : layout.pieces)
    block = std::max<std::uint64_t>(block, is_fp8(format) ? layout.shard + 4 * pieces.size() : 2 * layout.shard);
  return (K - 1) * 4 + (K - 1) * block + (K - 1) * block;
}

// One average_via_wire call on every rank against reference_average, bitwise, and its bytes.
void expect_average_matches_reference(WireFormat format, const std::vector<std::size_t>& counts, bool last_rank_nan) {
  comm::Communicator comm(MPI_COMM_WORLD, {false, 60.0});
  const int K = world_size();
  std::vector<std::vector<float>> all;
  for (int r = 0; r < K; ++r) all.push_back(rank_data(r, 0, counts));
  if (last_rank_nan) all.back()[5 % all.back().size()] = NAN;
  std::vector<float> data = all[static_cast<std::size_t>(world_rank())];
  if (last_rank_nan && K == 1) {  // no finite contribution is left: an error
    EXPECT_THROW(average_via_wire(comm, data, counts, format, 5, 2, "grad"), Error);
    return;
  }
  EXPECT_EQ(average_via_wire(comm, data, counts, format, 5, 2, "grad"), last_rank_nan ? 1 : 0);
  const auto expect = reference_average(all, counts, format, 5, 2, last_rank_nan ? K - 1 : -1);
  // Every rank against the same reference: the replicas are bitwise identical too.
  EXPECT_TRUE(bitwise_equal(data, expect)) << wire_format_name(format);
  EXPECT_EQ(wire_bytes_of(comm, "grad"), reduce_scatter_bytes(counts, static_cast<std::size_t>(K), format))
      << wire_format_name(format);
  EXPECT_EQ(wire_bytes_of(comm, "grad"), average_via_wire_bytes(format, counts, K)) << wire_format_name(format);
}

TEST(Wire, Fp8ReduceScatterAverageMatchesReference) {
  for (WireFormat format : {WireFormat::fp8_e4m3, WireFormat::fp8_e5m2})
    expect_average_matches_reference(format, kCounts, false);
}

TEST(Wire, SixteenBitReduceScatterAverageMatchesReference) {
  for (WireFormat format : {WireFormat::bf16, WireFormat::fp16})
    expect_average_matches_reference(format, kCounts, false);
}

// Three values: on 4 ranks shards of one value, the last one all padding; on 2 ranks a shard
// holds a piece of each tensor, the other a piece and the padding.
TEST(Wire, ReduceScatterAverageOfFewerValuesThanRanks) {
  for (WireFormat format : {WireFormat::fp8_e4m3, WireFormat::bf16})
    expect_average_matches_reference(format, {1, 2}, false);
}

TEST(Wire, NonFiniteUploadIsExcludedEverywhere) {
  for (WireFormat format : {WireFormat::fp8_e4m3, WireFormat::bf16})
    expect_average_matches_reference(format, kCounts, true);
}

// The bytes against fp32 on the MLP's tensors: the ring allreduce of 4d, 2(K-1)/K 2d for a
// 16-bit wire, about 2(K-1)/K d for fp8.
TEST(Wire, ReduceScatterBytesAgainstFp32) {
  const std::vector<std::size_t> mlp = {401408, 512, 131072, 256, 2560, 10};
  const double d = 535818;
  for (int K : {2, 4, 8, 16}) {
    const double ring = 2.0 * (K - 1) / K * 4 * d;
    EXPECT_EQ(average_via_wire_bytes(WireFormat::fp32, mlp, K), static_cast<std::uint64_t>(ring));
    EXPECT_NEAR(average_via_wire_bytes(WireFormat::bf16, mlp, K) / ring, 0.5, 1e-4) << K;
    EXPECT_NEAR(average_via_wire_bytes(WireFormat::fp8_e4m3, mlp, K) / ring, 0.25, 1e-3) << K;
  }
}

// Native 16-bit storage (average_native16): more values than one chunk (and a last chunk that does
// not split evenly into shards), so the chunked collectives are covered; the result is the rank-order fp32 sum of the decoded values times
// 1/K, encoded nearest-even, rebuilt here from each rank's data.
TEST(Wire, Native16AverageEqualsRankOrderFp32MeanAcrossChunks) {
  const std::size_t n = 2 * kNative16Chunk + 77;
  const auto values = [&](int r, bool bf16) {
    std::vector<std::uint16_t> h(n);
    const std::uint64_t key = stream_key({91, static_cast<std::uint64_t>(r)});
    for (std::size_t i = 0; i < n; ++i) {
      const float x = 0.3f * normal01(key, i);
      h[i] = bf16 ? tensor::bf16_encode(x) : tensor::fp16_encode(x);
    }
    return h;
  };
  for (bool bf16 : {true, false}) {
    std::uint64_t fp32_bytes = 0;
    for (WireFormat format : {WireFormat::fp32, bf16 ? WireFormat::bf16 : WireFormat::fp16}) {
      // Deterministic sums: the fp32 allreduce adds in rank order too.
      comm::Communicator comm(MPI_COMM_WORLD, {true, 60.0});
      const int K = world_size();
      auto data = values(world_rank(), bf16);
      EXPECT_EQ(average_native16(comm, data, bf16, format, "grad"), 0);
      const auto dec = [&](std::uint16_t h) { return bf16 ? tensor::bf16_decode(h) : tensor::fp16_decode(h); };
      std::vector<float> sum(n, 0.0f);
      for (int r = 0; r < K; ++r) {
        const auto h = values(r, bf16);
        for (std::size_t i = 0; i < n; ++i) sum[i] += dec(h[i]);
      }
      std::size_t differ = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const float mean = sum[i] * (1.0f / static_cast<float>(K));
        differ += data[i] != (bf16 ? tensor::bf16_encode(mean) : tensor::fp16_encode(mean));
      }
      EXPECT_EQ(differ, 0u) << (bf16 ? "bf16" : "fp16") << " storage, " << wire_format_name(format) << " wire";
      // 16-bit wire: the finite flags (4 bytes), then per chunk a reduce-scatter (alltoall) and an
      // allgather of shards of ceil(chunk / K) values, 2 bytes each: about half the bytes of the
      // fp32 wire's ring allreduce (whose formula test_comm checks).
      if (format == WireFormat::fp32) {
        fp32_bytes = wire_bytes_of(comm, "grad");
      } else {
        std::uint64_t expect = static_cast<std::uint64_t>(K - 1) * 4;
        for (std::size_t first = 0; first < n; first += kNative16Chunk) {
          const std::size_t shard = (std::min(kNative16Chunk, n - first) + K - 1) / K;
          expect += 2 * static_cast<std::uint64_t>(K - 1) * 2 * shard;
        }
        EXPECT_EQ(wire_bytes_of(comm, "grad"), expect);
        if (K > 1) {
          EXPECT_LT(static_cast<double>(wire_bytes_of(comm, "grad")), 0.51 * static_cast<double>(fp32_bytes));
        }
      }
    }
  }
}

TEST(Wire, Native16NonFiniteRankIsExcludedAndOtherWiresRefused) {
  comm::Communicator comm(MPI_COMM_WORLD, {false, 60.0});
  const int K = world_size();
  std::vector<std::uint16_t> data(100, tensor::bf16_encode(static_cast<float>(world_rank() + 1)));
  EXPECT_THROW(average_native16(comm, data, true, WireFormat::fp8_e4m3, "grad"), Error);
  if (world_rank() == K - 1) data[3] = tensor::bf16_encode(INFINITY);
  if (K == 1) {
    EXPECT_THROW(average_native16(comm, data, true, WireFormat::bf16, "grad"), Error);
    return;
  }
  EXPECT_EQ(average_native16(comm, data, true, WireFormat::bf16, "grad"), 1);
  // Ranks 0..K-2 hold 1..K-1: their mean is K/2.
  for (std::uint16_t h : data) EXPECT_EQ(tensor::bf16_decode(h), static_cast<float>(K) / 2.0f);
}

// Brute-force ServerOptimize with the reference codec (tests/support/reference_fp8.hpp): the
// squared error of every candidate summed over the tensor's search sample in element order, the
// first smallest wins. Shares no code with tensor::best_scale / quantize_sq_errors.
float brute_force_best_scale(std::span<const float> w, tensor::Fp8Format f, bool whole_tensor = false) {
  float amax = 0.0f;
  for (float v : w) amax = std::max(amax, std::fabs(v));
  if (amax == 0.0f) return 1.0f;
  const float s0 = tensor::fp8_scale_from_amax(amax, f);
  const float fmax = static_cast<float>(reference::fp8_max(f));
  float best = 0.0f;
  double best_error = 0.0;
  for (int j = 0; j < tensor::kBestScaleCandidates; ++j) {
    const float s = tensor::best_scale_candidate(s0, j);
    double e = 0.0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      // ServerOptimize's search sample: every element of a small tensor, every 8th of a large one.
      if (!whole_tensor && w.size() >= tensor::kScaleSearchFullBelow && i % tensor::kScaleSearchStride != 0) continue;
      const float v = w[i];
      const float y = std::fmin(std::fmax(v / s, -fmax), fmax);
      const float w_hat = static_cast<float>(reference::fp8_decode(reference::fp8_encode_rne(y, f), f)) * s;
      e += (double(w_hat) - double(v)) * (double(w_hat) - double(v));
    }
    if (j == 0 || e < best_error) best_error = e, best = s;
  }
  return best;
}

// The decoded upload of rank r through `format` (fp8: SR with the amax scale; 16-bit: nearest).
std::vector<float> upload_of(const std::vector<float>& x, const std::vector<std::size_t>& counts, WireFormat format,
                             std::uint64_t seed, std::int64_t round, int r) {
  if (is_fp8(format))
    return fp8_upload(x, format == WireFormat::fp8_e4m3 ? tensor::Fp8Format::e4m3 : tensor::Fp8Format::e5m2, seed,
                      round, r, counts);
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    out[i] = format == WireFormat::bf16 ? tensor::bf16_round(x[i]) : tensor::fp16_round(x[i]);
  return out;
}

// Reference of one server round: master += mean(decoded uploads of the finite ranks) - B;
// broadcast = nearest-even (fp8: per tensor the brute-force best scale).
void reference_round(std::vector<float>& master, std::vector<float>& broadcast, const std::vector<std::vector<float>>& params,
                     const std::vector<std::size_t>& counts, WireFormat format, std::int64_t round) {
  std::vector<float> mean(master.size(), 0.0f);
  int contributors = 0;
  for (std::size_t r = 0; r < params.size(); ++r) {
    if (!std::all_of(params[r].begin(), params[r].end(), [](float v) { return std::isfinite(v); })) continue;
    ++contributors;
    const auto up = upload_of(params[r], counts, format, 3, round, static_cast<int>(r));
    for (std::size_t i = 0; i < up.size(); ++i) mean[i] += up[i];
  }
  const float inv = 1.0f / static_cast<float>(contributors);
  for (std::size_t i = 0; i < master.size(); ++i) master[i] += mean[i] * inv - broadcast[i];
  if (!is_fp8(format)) {
    broadcast = upload_of(master, counts, format, 0, 0, 0);
    return;
  }
  const auto f = format == WireFormat::fp8_e4m3 ? tensor::Fp8Format::e4m3 : tensor::Fp8Format::e5m2;
  std::size_t off = 0;
  for (std::size_t t = 0; t < counts.size(); ++t) {
    std::span<const float> wt(master.data() + off, counts[t]);
    const float s = brute_force_best_scale(wt, f);
    for (std::size_t i = 0; i < counts[t]; ++i) {
      const float y = std::fmin(std::fmax(wt[i] / s, -fp8_max(f)), fp8_max(f));
      broadcast[off + i] = static_cast<float>(reference::fp8_decode(reference::fp8_encode_rne(y, f), f)) * s;
    }
    off += counts[t];
  }
}

// Wire bytes of one sharded server round per rank (sync/wire.hpp), from the ledger formulas:
// alltoall of K blocks (header + S values) = (K-1) blocks; fp8: a max allreduce of T floats
// (ring: 2(K-1)/K * 4T) and an allgather of 16 T doubles; the allgather of S values.
std::uint64_t server_round_bytes(std::uint64_t K, std::uint64_t d, std::uint64_t T, WireFormat format) {
  if (K == 1) return 0;
  const std::uint64_t S = (d + K - 1) / K;
  if (is_fp8(format)) return (K - 1) * (4 * T + S) + 2 * (K - 1) * 4 * T / K + (K - 1) * 16 * T * 8 + (K - 1) * S;
  return (K - 1) * (4 + 2 * S) + (K - 1) * 2 * S;
}

// skew_sample: every 8th element (global index; tensors starting at multiples of 8) is 1000x
// smaller than the rest, so a search over the strided sample and one over the whole tensor choose
// different scales.
void expect_server_rounds_match_reference(WireFormat format, const std::vector<std::size_t>& counts,
                                          int non_finite_rank, bool skew_sample = false) {
  comm::Communicator comm(MPI_COMM_WORLD, {false, 60.0});
  const int K = world_size();
  std::size_t d = 0;
  for (std::size_t c : counts) d += c;
  const auto data = [&](int r, std::uint64_t salt) {
    std::vector<float> x(d);
    for (std::size_t i = 0; i < d; ++i) {
      const float size = skew_sample && i % 8 == 0 ? 1e-3f : 0.01f + 0.1f * static_cast<float>(i % 7);
      x[i] = size * normal01(stream_key({78, salt, static_cast<std::uint64_t>(r)}), i);
    }
    return x;
  };
  std::vector<float> start = data(0, 100);  // identical replicas at the start
  ServerAverager server(format, 3);
  server.begin(comm, start, counts);
  std::vector<float> master = start, broadcast = start;
  for (std::int64_t round = 1; round <= 2; ++round) {
    std::vector<std::vector<float>> all;  // local training moved the replicas apart
    for (int r = 0; r < K; ++r) all.push_back(data(r, static_cast<std::uint64_t>(round)));
    if (non_finite_rank >= 0) all[static_cast<std::size_t>(non_finite_rank)][d / 2] = INFINITY;
    std::vector<float> params = all[static_cast<std::size_t>(world_rank())];
    server.average(comm, params, round, "model");
    reference_round(master, broadcast, all, counts, format, round);
    EXPECT_TRUE(bitwise_equal(params, broadcast)) << wire_format_name(format) << " round " << round;
    // This rank's shard of the fp32 master; the shards tile the model.
    const std::size_t S = (d + static_cast<std::size_t>(K) - 1) / static_cast<std::size_t>(K);
    const std::size_t first = std::min(d, static_cast<std::size_t>(world_rank()) * S), n = std::min(S, d - first);
    EXPECT_EQ(server.server_offset(), first);
    EXPECT_TRUE(bitwise_equal(server.server_model(), std::span<const float>(master).subspan(first, n)))
        << wire_format_name(format) << " round " << round;
    EXPECT_EQ(server.excluded(), non_finite_rank >= 0 ? round : 0);
  }
  // The master is not its quantized copy: some element differs from the broadcast (a tensor of
  // one or two values can sit exactly on the grid of its best scale).
  if (d > 100) {
    EXPECT_FALSE(bitwise_equal(master, broadcast));
  }
  EXPECT_EQ(wire_bytes_of(comm, "model"), 2 * server_round_bytes(static_cast<std::uint64_t>(K), d, counts.size(), format))
      << wire_format_name(format);
}

TEST(Wire, ServerRoundsMatchReferenceAndKeepTheFp32Master) {
  for (WireFormat format : {WireFormat::fp8_e4m3, WireFormat::fp8_e5m2, WireFormat::bf16, WireFormat::fp16})
    expect_server_rounds_match_reference(format, kCounts, -1);
}

// Tensors large enough for the strided search sample, cut by shard boundaries that are not
// multiples of the stride (S = 4548 on 2 ranks, 2274 on 4), on data where the sample matters.
TEST(Wire, ServerSearchesTheStridedSampleOfLargeTensors) {
  const std::vector<std::size_t> counts = {4096, 5000};
  std::vector<float> x(5000);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 8 == 0 ? 1e-3f : 0.5f) * normal01(5, i);
  // The data tells the two searches apart: otherwise this test could not see which one ran.
  ASSERT_NE(brute_force_best_scale(x, tensor::Fp8Format::e4m3), brute_force_best_scale(x, tensor::Fp8Format::e4m3, true));
  expect_server_rounds_match_reference(WireFormat::fp8_e4m3, counts, -1, true);
}

// Fewer parameters than ranks times two: some shards are short or empty, and tensors straddle
// shard boundaries.
TEST(Wire, ServerRoundsWithTinyShards) {
  for (WireFormat format : {WireFormat::fp8_e4m3, WireFormat::bf16})
    expect_server_rounds_match_reference(format, {2, 1, 2}, -1);
}

TEST(Wire, ServerExcludesANonFiniteUploadOnEveryRank) {
  const int K = world_size();
  for (WireFormat format : {WireFormat::fp8_e4m3, WireFormat::bf16}) {
    if (K == 1) {  // no finite upload is left: an error, on every rank
      comm::Communicator comm(MPI_COMM_WORLD, {false, 60.0});
      std::vector<float> x(10, 1.0f);
      ServerAverager server(format, 3);
      server.begin(comm, x, {});
      x[4] = NAN;
      EXPECT_THROW(server.average(comm, x, 1, "model"), Error);
      continue;
    }
    expect_server_rounds_match_reference(format, kCounts, K - 1);
  }
}

// Every rank fails together when the fp32 master itself goes non-finite (an fp32 overflow of
// W += mean - B), wherever its shard lies.
TEST(Wire, ServerFailsOnEveryRankForANonFiniteMaster) {
  comm::Communicator comm(MPI_COMM_WORLD, {false, 60.0});
  std::vector<float> start(64, -3e38f);
  ServerAverager server(WireFormat::fp8_e5m2, 3);
  server.begin(comm, start, {});
  std::vector<float> params(64, 3e38f);  // mean - B = 6e38 overflows
  EXPECT_THROW(server.average(comm, params, 1, "model"), Error);
}

TEST(Wire, ParseRejectsUnknownFormat) {
  EXPECT_EQ(parse_wire_format("fp8_e5m2"), WireFormat::fp8_e5m2);
  EXPECT_THROW(parse_wire_format("int8"), Error);
}

}  // namespace
}  // namespace lowsync::sync
