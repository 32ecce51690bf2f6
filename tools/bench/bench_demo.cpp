// DeMo codec cost per training step at K = 4 ranks on one thread: encode (chunked DCT, top-k,
// packing, error feedback) of one rank's momentum for every tensor of the MLP / CNN, and the
// decode (contributor average + inverse DCT) of four gathered blocks. No MPI: the four blocks are
// encoded in-process from four different momenta.
//   build/bin/bench_demo [--benchmark_filter=mlp]
// --step mode, under mpirun: the whole DeMo step (DemoStrategy::step: momentum, encode, one
// allgather, decode, sign step) against what it replaces, the gradient allreduce (average) plus an
// AdamW step, on the model's real gradient, alternating blocks of steps of the two so both see the
// same machine load; prints per-step wall ms (slowest rank) and their ratio (target <= 1.3).
//   mpirun -n 4 build/bin/bench_demo --step [--arch mlp] [--value bf16|fp32] [--rounds 6]
#include "lowsync/app/runtime.hpp"
#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/core/timer.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/sync/demo.hpp"
#include "lowsync/sync/demo_codec.hpp"

#include <Kokkos_Core.hpp>
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <string_view>
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

// Wall seconds of `steps` calls of f, slowest rank (barrier before, max after).
template <class F>
double timed_steps(comm::Communicator& comm, int steps, F&& f) {
  comm.barrier();
  Timer t;
  for (int i = 0; i < steps; ++i) f();
  double s[1] = {t.seconds()};
  comm.allreduce(std::span<double>(s), comm::ReduceOp::max, "control");
  return s[0];
}

int run_step_mode(int argc, char** argv) {
  std::string arch = "mlp", value = "bf16";
  int rounds = 6, steps = 10;
  for (int i = 1; i + 1 < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--arch") arch = argv[++i];
    else if (a == "--value") value = argv[++i];
    else if (a == "--rounds") rounds = std::atoi(argv[++i]);
    else if (a == "--steps") steps = std::atoi(argv[++i]);
  }
  app::Runtime runtime(argc, argv);
  comm::Communicator comm(MPI_COMM_WORLD);
  model::Model m(arch, 64, 1);
  // A real gradient: one forward/backward on a synthetic batch (different per rank).
  std::vector<float> images(64 * 784);
  std::vector<std::int32_t> labels(64);
  std::mt19937 gen(static_cast<std::uint32_t>(17 + comm.rank()));
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (float& x : images) x = u(gen);
  for (auto& l : labels) l = static_cast<std::int32_t>(gen() % 10);
  m.forward_backward({images.data(), labels.data(), 64});
  const std::vector<float> grads(m.grads().begin(), m.grads().end());
  std::vector<float> params(m.params().begin(), m.params().end()), params_adam = params, g(grads.size());

  sync::DemoOptions o;
  o.wire = {DType::u16, value == "fp32" ? DType::f32 : DType::bf16};
  o.check_every = 0;
  sync::DemoStrategy demo(o);
  config::Config cfg;
  cfg.set("optim.name", std::string("adamw"));
  auto adamw = optim::make_optimizer(cfg, params.size());
  std::int64_t step = 0;
  auto demo_step = [&] { demo.step(comm, m.param_infos(), params, grads, 1e-3, ++step); };
  auto adamw_step = [&] {
    std::memcpy(g.data(), grads.data(), g.size() * sizeof(float));
    sync::average_in_place(comm, g, "grad");
    adamw->step(params_adam, g);
  };
  timed_steps(comm, 3, demo_step);  // warm-up: first-touch, codec and wire buffers
  timed_steps(comm, 3, adamw_step);
  double demo_s = 0.0, adamw_s = 0.0;
  for (int r = 0; r < rounds; ++r) {
    demo_s += timed_steps(comm, steps, demo_step);
    adamw_s += timed_steps(comm, steps, adamw_step);
  }
  const double n = static_cast<double>(rounds) * steps;
  if (comm.rank() == 0)
    std::printf("demo_step %s %d ranks, %s values: demo %.3f ms/step, allreduce+adamw %.3f ms/step, ratio %.2f "
                "(target <= 1.3)\n",
                arch.c_str(), comm.size(), value.c_str(), 1e3 * demo_s / n, 1e3 * adamw_s / n, demo_s / adamw_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--step") return run_step_mode(argc, argv);
  omp_set_num_threads(1);
  Kokkos::ScopeGuard kokkos(argc, argv);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
