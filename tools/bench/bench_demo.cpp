// DeMo codec cost per training step at K = 4 ranks on one thread: encode (chunked DCT, top-k,
// packing, error feedback) of one rank's momentum for every tensor of the MLP / CNN, and the
// decode (contributor average + inverse DCT) of four gathered blocks. No MPI: the four blocks are
// encoded in-process from four different momenta.
//   build/bin/bench_demo [--benchmark_filter=mlp]
#include "lowsync/model/model.hpp"
#include "lowsync/sync/demo_codec.hpp"

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>
#include <omp.h>

#include <random>
#include <span>
#include <vector>

namespace {

using namespace lowsync;
namespace demo = lowsync::sync::demo;

constexpr int kRanks = 4;

struct Setup {
  std::vector<model::ParamInfo> infos;
  std::size_t num_params = 0;
  std::unique_ptr<demo::Codec> codec;
};

Setup make_setup(const std::string& arch, demo::WireFormat wire, std::int64_t topk) {
  Setup s;
  const model::Model m(arch, 64, 1);
  s.infos = m.param_infos();
  s.num_params = m.num_params();
  std::vector<std::vector<std::int64_t>> shapes;
  for (const auto& info : s.infos) shapes.push_back(info.shape);
  s.codec = std::make_unique<demo::Codec>(shapes, 64, topk, wire);
  return s;
}

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1e-3f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(gen);
  return x;
}

void encode_all(Setup& s, std::vector<float>& delta, std::span<std::uint8_t> block) {
  for (std::size_t t = 0; t < s.infos.size(); ++t)
    s.codec->encode(t, {delta.data() + s.infos[t].offset, s.infos[t].count}, block);
}

// Per iteration: delta = 0.999 delta + g (as the strategy does), then encode every tensor.
void bm_encode(benchmark::State& state, const std::string& arch, demo::WireFormat wire) {
  Setup s = make_setup(arch, wire, 32);
  std::vector<float> delta = random_floats(s.num_params, 1);
  const std::vector<float> g = random_floats(s.num_params, 2);
  std::vector<std::uint8_t> block(s.codec->block_bytes());
  for (auto _ : state) {
    for (std::size_t i = 0; i < delta.size(); ++i) delta[i] = 0.999f * delta[i] + g[i];
    encode_all(s, delta, block);
    benchmark::DoNotOptimize(block.data());
  }
  state.counters["block_bytes"] = static_cast<double>(s.codec->block_bytes());
  state.counters["params"] = static_cast<double>(s.num_params);
}

// Per iteration: decode every tensor from the same four gathered blocks.
void bm_decode(benchmark::State& state, const std::string& arch, demo::WireFormat wire) {
  Setup s = make_setup(arch, wire, 32);
  const std::size_t bb = s.codec->block_bytes();
  std::vector<std::uint8_t> gathered(bb * kRanks);
  for (int r = 0; r < kRanks; ++r) {
    std::vector<float> delta = random_floats(s.num_params, 10 + static_cast<std::uint32_t>(r));
    encode_all(s, delta, {gathered.data() + static_cast<std::size_t>(r) * bb, bb});
  }
  std::vector<float> q(s.num_params);
  for (auto _ : state) {
    for (std::size_t t = 0; t < s.infos.size(); ++t)
      s.codec->decode(t, gathered, kRanks, {q.data() + s.infos[t].offset, s.infos[t].count});
    benchmark::DoNotOptimize(q.data());
  }
}

const demo::WireFormat kF32{DType::u16, DType::f32};
const demo::WireFormat kBf16{DType::u16, DType::bf16};

BENCHMARK_CAPTURE(bm_encode, mlp_fp32, std::string("mlp"), kF32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_decode, mlp_fp32, std::string("mlp"), kF32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_encode, mlp_bf16, std::string("mlp"), kBf16)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_decode, mlp_bf16, std::string("mlp"), kBf16)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_encode, cnn_fp32, std::string("cnn"), kF32)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_decode, cnn_fp32, std::string("cnn"), kF32)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  omp_set_num_threads(1);
  Kokkos::ScopeGuard kokkos(argc, argv);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
