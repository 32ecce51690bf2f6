// Wire codec throughput on one thread (issue #19, ALGORITHMS.md §1 "Cost"): the vectorised fp8
// encoders, decoder and one-pass 16-candidate scale search against the scalar reference loops they
// replace (the constexpr codec per element; 16 quantize_sq_error passes), and the 16-bit span
// codecs, on one MLP-sized tensor. Reports elements/s; the "scalar_" rows are the baselines.
//   build/bin/bench_codecs [--benchmark_filter=best_scale]
#include "lowsync/core/rng.hpp"
#include "lowsync/tensor/fp8.hpp"
#include "lowsync/tensor/half.hpp"

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using namespace lowsync;
using tensor::Fp8Format;

// The MLP's parameter count (535,818), weights of a trained scale with a few outliers.
const std::vector<float>& weights() {
  static const std::vector<float> w = [] {
    std::vector<float> x(535818);
    const std::uint64_t key = stream_key({19});
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.05f * normal01(key, i);
    x[7] = 0.9f;
    return x;
  }();
  return w;
}

void set_rate(benchmark::State& state, std::size_t n) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
}

void bm_quantize_sr(benchmark::State& state) {
  const auto& w = weights();
  std::vector<std::uint8_t> q(w.size());
  for (auto _ : state) benchmark::DoNotOptimize(tensor::quantize(w, q, Fp8Format::e4m3, tensor::Rounding::stochastic, 5));
  set_rate(state, w.size());
}

void bm_scalar_quantize_sr(benchmark::State& state) {
  const auto& w = weights();
  std::vector<std::uint8_t> q(w.size());
  for (auto _ : state) {
    const float s = tensor::fp8_scale(w, Fp8Format::e4m3);
    for (std::size_t i = 0; i < w.size(); ++i)
      q[i] = tensor::fp8_encode_sr(std::fmin(std::fmax(w[i] / s, -448.0f), 448.0f), Fp8Format::e4m3, uniform01(5, i));
    benchmark::DoNotOptimize(q.data());
  }
  set_rate(state, w.size());
}

void bm_quantize_rne(benchmark::State& state) {
  const auto& w = weights();
  std::vector<std::uint8_t> q(w.size());
  for (auto _ : state) benchmark::DoNotOptimize(tensor::quantize(w, q, Fp8Format::e4m3, tensor::Rounding::nearest_even, 0));
  set_rate(state, w.size());
}

void bm_dequantize(benchmark::State& state) {
  const auto& w = weights();
  std::vector<std::uint8_t> q(w.size());
  const float s = tensor::quantize(w, q, Fp8Format::e4m3, tensor::Rounding::nearest_even, 0);
  std::vector<float> out(w.size());
  for (auto _ : state) {
    tensor::dequantize(q, s, Fp8Format::e4m3, out);
    benchmark::DoNotOptimize(out.data());
  }
  set_rate(state, w.size());
}

void bm_best_scale(benchmark::State& state) {
  const auto& w = weights();
  for (auto _ : state) benchmark::DoNotOptimize(tensor::best_scale(w, Fp8Format::e4m3));
  set_rate(state, w.size());
}

// The same search with scales that do not halve every 4 steps (the last one moved by an ulp):
// one division per candidate instead of one per 4.
void bm_sq_errors_general_scales(benchmark::State& state) {
  const auto& w = weights();
  auto scales = tensor::best_scale_candidates(tensor::fp8_scale(w, Fp8Format::e4m3));
  scales[15] = std::nextafter(scales[15], 1.0f);
  std::array<double, tensor::kBestScaleCandidates> errors{};
  for (auto _ : state) {
    tensor::quantize_sq_errors(w, Fp8Format::e4m3, scales, errors);
    benchmark::DoNotOptimize(errors.data());
  }
  set_rate(state, w.size());
}

// What best_scale did before: one scalar quantize_sq_error pass per candidate.
void bm_scalar_best_scale(benchmark::State& state) {
  const auto& w = weights();
  for (auto _ : state) {
    const float s0 = tensor::fp8_scale(w, Fp8Format::e4m3);
    float best = s0;
    double best_error = tensor::quantize_sq_error(w, Fp8Format::e4m3, s0);
    for (int j = 1; j < tensor::kBestScaleCandidates; ++j) {
      const float s = tensor::best_scale_candidate(s0, j);
      const double e = tensor::quantize_sq_error(w, Fp8Format::e4m3, s);
      if (e < best_error) best_error = e, best = s;
    }
    benchmark::DoNotOptimize(best);
  }
  set_rate(state, w.size());
}

void bm_encode_16bit(benchmark::State& state, bool bf16) {
  const auto& w = weights();
  std::vector<std::uint16_t> h(w.size());
  for (auto _ : state) {
    tensor::encode_16bit(w, h, bf16);
    benchmark::DoNotOptimize(h.data());
  }
  set_rate(state, w.size());
}

void bm_decode_16bit(benchmark::State& state, bool bf16) {
  const auto& w = weights();
  std::vector<std::uint16_t> h(w.size());
  tensor::encode_16bit(w, h, bf16);
  std::vector<float> out(w.size());
  for (auto _ : state) {
    tensor::decode_16bit(h, out, bf16);
    benchmark::DoNotOptimize(out.data());
  }
  set_rate(state, w.size());
}

BENCHMARK(bm_quantize_sr)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_scalar_quantize_sr)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_quantize_rne)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_dequantize)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_best_scale)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_sq_errors_general_scales)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_scalar_best_scale)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_encode_16bit, bf16, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_encode_16bit, fp16, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_decode_16bit, bf16, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_decode_16bit, fp16, false)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
