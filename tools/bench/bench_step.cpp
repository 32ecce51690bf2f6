// One training step (loader + forward/backward + SGD) of each model at batch 64 on one thread,
// in fp32 and in bf16 (precision.compute = bf16, precision.storage = native: u16 parameters,
// activations and gradients on oneDNN bf16 primitives), and, in the same process, the sum of the
// oneDNN primitive times the step runs. Reports samples/s by wall clock, samples/s by this
// process's CPU time (cpu_samples_per_s: what one otherwise idle core would give on a shared,
// oversubscribed machine) and step_time / primitive_time (target <= 1.15).
// CNN targets (issue 19, against PyTorch 1.13's 2,716 samples/s quoted there): fp32 >= 4,100
// samples/s, bf16 >= 6,790; tools/bench/cnn_speed.sh measures PyTorch beside these rows.
//   build/bin/bench_step [--benchmark_filter=cnn]
#include "lowsync/config/config.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>
#include <omp.h>

#include <ctime>
#include <numeric>

namespace {

using namespace lowsync;

const data::FashionMnist& dataset() {
  static const data::FashionMnist fm = data::load_fashion_mnist("/usr/share/datasets/fashion-mnist");
  return fm;
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

void bm_train_step(benchmark::State& state, const std::string& arch, bool bf16) {
  const int batch = 64;
  const auto& fm = dataset();
  std::vector<std::int64_t> idx(static_cast<std::size_t>(fm.train.count));
  std::iota(idx.begin(), idx.end(), 0);
  data::Loader loader(fm.train, idx, batch, 1, 0);
  model::Model model(arch, batch, 1, bf16 ? model::Compute::bf16 : model::Compute::fp32,
                     bf16 ? model::Storage::native16 : model::Storage::float32);
  config::Config cfg;
  if (bf16) {
    cfg.set("precision.compute", std::string("bf16"));
    cfg.set("precision.storage", std::string("native"));
  }
  auto opt = optim::make_optimizer(cfg, model.num_params(), bf16);
  auto step = [&] {
    const auto b = loader.next();
    model.forward_backward(b);
    opt->step(model.param_store(), model.grad_store());
  };
  for (int i = 0; i < 20; ++i) step();  // warm-up: JIT kernels, first touch

  std::int64_t steps = 0;
  Timer t;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    step();
    ++steps;
  }
  const double step_s = t.seconds() / static_cast<double>(steps);
  const double cpu_step_s = (process_cpu_seconds() - cpu0) / static_cast<double>(steps);

  // Same steps with every primitive timed (stream.wait per primitive).
  model.set_profiling(true);
  model.reset_profile();
  const int profiled = 200;
  for (int i = 0; i < profiled; ++i) step();
  const double prim_s = model.profiled_primitive_seconds() / profiled;
  model.set_profiling(false);

  state.counters["samples_per_s"] = batch / step_s;
  state.counters["cpu_samples_per_s"] = batch / cpu_step_s;
  state.counters["step_ms"] = step_s * 1e3;
  state.counters["primitives_ms"] = prim_s * 1e3;
  state.counters["step_over_primitives"] = step_s / prim_s;
}

BENCHMARK_CAPTURE(bm_train_step, mlp, std::string("mlp"), false)->Unit(benchmark::kMillisecond)->MinTime(3.0);
BENCHMARK_CAPTURE(bm_train_step, cnn, std::string("cnn"), false)->Unit(benchmark::kMillisecond)->MinTime(5.0);
BENCHMARK_CAPTURE(bm_train_step, cnn_bf16, std::string("cnn"), true)->Unit(benchmark::kMillisecond)->MinTime(5.0);

}  // namespace

int main(int argc, char** argv) {
  omp_set_num_threads(1);
  Kokkos::ScopeGuard kokkos(argc, argv);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
