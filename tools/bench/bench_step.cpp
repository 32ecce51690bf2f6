// One training step (loader + forward/backward + SGD) of each model at batch 64 on one thread,
// and, in the same process, the sum of the oneDNN primitive times the step runs. Reports
// samples/s and step_time / primitive_time (target <= 1.15).
//   build/bin/bench_step [--benchmark_filter=mlp]
#include "lowsync/config/config.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/data/loader.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>
#include <omp.h>

#include <numeric>

namespace {

using namespace lowsync;

const data::FashionMnist& dataset() {
  static const data::FashionMnist fm = data::load_fashion_mnist("/usr/share/datasets/fashion-mnist");
  return fm;
}

void bm_train_step(benchmark::State& state, const std::string& arch) {
  const int batch = 64;
  const auto& fm = dataset();
  std::vector<std::int64_t> idx(static_cast<std::size_t>(fm.train.count));
  std::iota(idx.begin(), idx.end(), 0);
  data::Loader loader(fm.train, idx, batch, 1, 0);
  model::Model model(arch, batch, 1);
  config::Config cfg;
  auto opt = optim::make_optimizer(cfg, model.num_params());
  auto step = [&] {
    const auto b = loader.next();
    model.forward_backward(b);
    opt->step(model.params(), model.grads());
  };
  for (int i = 0; i < 20; ++i) step();  // warm-up: JIT kernels, first touch

  std::int64_t steps = 0;
  Timer t;
  for (auto _ : state) {
    step();
    ++steps;
  }
  const double step_s = t.seconds() / static_cast<double>(steps);

  // Same steps with every primitive timed (stream.wait per primitive).
  model.set_profiling(true);
  model.reset_profile();
  const int profiled = 200;
  for (int i = 0; i < profiled; ++i) step();
  const double prim_s = model.profiled_primitive_seconds() / profiled;
  model.set_profiling(false);

  state.counters["samples_per_s"] = batch / step_s;
  state.counters["step_ms"] = step_s * 1e3;
  state.counters["primitives_ms"] = prim_s * 1e3;
  state.counters["step_over_primitives"] = step_s / prim_s;
}

BENCHMARK_CAPTURE(bm_train_step, mlp, std::string("mlp"))->Unit(benchmark::kMillisecond)->MinTime(3.0);
BENCHMARK_CAPTURE(bm_train_step, cnn, std::string("cnn"))->Unit(benchmark::kMillisecond)->MinTime(5.0);

}  // namespace

int main(int argc, char** argv) {
  omp_set_num_threads(1);
  Kokkos::ScopeGuard kokkos(argc, argv);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
