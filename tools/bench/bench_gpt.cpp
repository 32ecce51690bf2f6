// One training step of the gpt (ALGORITHMS.md §8, defaults T 128, C 128, L 4, H 4) at batch
// 16 x 128 tokens on one thread: forward + backward + AdamW (lr 1e-3, betas 0.9/0.95) on random
// bytes, in fp32 and in bf16 (precision.compute = bf16, precision.storage = native). Reports
// tokens/s by wall clock and by this process's CPU time (what one otherwise idle core gives on a
// shared machine), and step_time / the sum of the oneDNN primitive times of the same steps
// (Executor profiling; Kokkos kernels and framework overhead are the difference).
// Targets (issue 23): fp32 >= 20,000 tokens/s (2x PyTorch 1.13's ~10,000 here), bf16 >= 30,000,
// step / primitives <= 1.15. tools/bench/gpt_speed.sh runs it beside the same model in PyTorch.
//   build/bin/bench_gpt [--benchmark_filter=fp32]
#include "lowsync/config/config.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/batch.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>
#include <omp.h>

#include <ctime>

namespace {

using namespace lowsync;

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

void bm_gpt_step(benchmark::State& state, bool bf16) {
  const int batch = 16, ctx = 128;
  model::Model model("gpt", batch, 1, bf16 ? model::Compute::bf16 : model::Compute::fp32,
                     bf16 ? model::Storage::native16 : model::Storage::float32);
  config::Config cfg;
  cfg.set("optim.name", std::string("adamw"));
  cfg.set("optim.lr", 1e-3);
  cfg.set("optim.beta2", 0.95);
  if (bf16) {
    cfg.set("precision.compute", std::string("bf16"));
    cfg.set("precision.storage", std::string("native"));
  }
  auto opt = optim::make_optimizer(cfg, model.num_params(), bf16);
  // A few fixed batches of random bytes (the data path is not what this measures).
  const int batches = 4;
  std::vector<float> inputs(static_cast<std::size_t>(batches) * batch * ctx);
  std::vector<std::int32_t> labels(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = static_cast<float>(random_bits(3, i) % 256);
    labels[i] = static_cast<std::int32_t>(random_bits(4, i) % 256);
  }
  std::int64_t k = 0;
  auto step = [&] {
    const std::size_t first = static_cast<std::size_t>(k++ % batches) * batch * ctx;
    model.forward_backward({inputs.data() + first, labels.data() + first, batch});
    opt->step(model.param_store(), model.grad_store());
  };
  for (int i = 0; i < 3; ++i) step();  // warm-up: JIT kernels, first touch

  std::int64_t steps = 0;
  Timer t;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    step();
    ++steps;
  }
  const double step_s = t.seconds() / static_cast<double>(steps);
  const double cpu_step_s = (process_cpu_seconds() - cpu0) / static_cast<double>(steps);

  // The same steps with every primitive timed (stream.wait per primitive), wall and CPU time.
  model.set_profiling(true);
  model.reset_profile();
  const int profiled = 10;
  Timer tp;
  for (int i = 0; i < profiled; ++i) step();
  const double profiled_step_s = tp.seconds() / profiled;
  const double prim_s = model.profiled_primitive_seconds() / profiled;
  model.set_profiling(false);

  const double tokens = static_cast<double>(batch) * ctx;
  state.counters["tokens_per_s"] = tokens / step_s;
  state.counters["cpu_tokens_per_s"] = tokens / cpu_step_s;
  state.counters["step_ms"] = step_s * 1e3;
  state.counters["primitives_ms"] = prim_s * 1e3;
  // Both from the profiled steps, so the ratio is measured within one window.
  state.counters["step_over_primitives"] = profiled_step_s / prim_s;
  state.counters["gflop_per_s"] = 3.0 * model.forward_flops_per_sample() * batch / step_s * 1e-9;
}

BENCHMARK_CAPTURE(bm_gpt_step, fp32, false)->Unit(benchmark::kMillisecond)->MinTime(3.0);
BENCHMARK_CAPTURE(bm_gpt_step, bf16, true)->Unit(benchmark::kMillisecond)->MinTime(3.0);

}  // namespace

int main(int argc, char** argv) {
  omp_set_num_threads(1);
  Kokkos::ScopeGuard kokkos(argc, argv);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
