// Foresight-pruning diagnostics (issue #22, ALGORITHMS.md §2): per-tensor distribution of the
// data-free NTK saliency of round 1 (full mask) on one rank, and which share of each tensor a
// one-shot global top-k at the final density would keep, for given prune.batch / prune.eps /
// seed; then the per-tensor density of the full pruning (prune.rounds rounds) on 1 rank.
//   build/bin/zo_saliency [batch=16] [eps=0.01] [rounds=10] [normalize=none] [seed=1] [init=fresh]
#include "lowsync/model/sparse_mlp.hpp"
#include "lowsync/optim/foresight.hpp"
#include "lowsync/optim/prune.hpp"

#include <Kokkos_Core.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  using namespace lowsync;
  optim::PruneSettings s;
  s.method = "ntk";
  s.batch = argc > 1 ? std::stoi(argv[1]) : 16;
  s.eps = argc > 2 ? std::stof(argv[2]) : 0.01f;
  s.rounds = argc > 3 ? std::stoi(argv[3]) : 10;
  s.normalize = argc > 4 ? argv[4] : "none";
  s.seed = argc > 5 ? std::stoull(argv[5]) : 1;
  s.init = argc > 6 ? argv[6] : "fresh";
  const std::size_t d = model::mlp_num_params();
  std::vector<float> sal(d);
  const model::Mask full(d, true);
  const double r = optim::ntk_rank_saliency(s, 1, 0, full, sal);
  const auto infos = model::mlp_param_infos();
  const auto top = optim::select_top_k(sal, 1.0 - s.sparsity, model::mlp_output_units());
  fmt::print("round-1 saliency (batch {}, eps {}, seed {}), R = {:.4g}\n", s.batch, s.eps, s.seed, r);
  fmt::print("| tensor | params | mean | median | p99 | max | zero | one-shot global top-10% kept |\n|---|---|---|---|---|---|---|---|\n");
  for (const auto& info : infos) {
    std::vector<float> v(sal.begin() + static_cast<std::ptrdiff_t>(info.offset),
                         sal.begin() + static_cast<std::ptrdiff_t>(info.offset + info.count));
    double mean = 0.0;
    std::size_t zeros = 0;
    for (float x : v) { mean += x; zeros += x == 0.0f ? 1 : 0; }
    mean /= static_cast<double>(v.size());
    std::sort(v.begin(), v.end());
    fmt::print("| {} | {} | {:.3g} | {:.3g} | {:.3g} | {:.3g} | {:.3f} | {:.3f} |\n", info.name, info.count, mean,
               v[v.size() / 2], v[v.size() * 99 / 100], v.back(), static_cast<double>(zeros) / v.size(),
               top.range_density(info.offset, info.count));
  }
  const auto mask = optim::foresight_prune(s, 0, [](std::span<float>) {}, 1.0);
  fmt::print("full pruning ({} rounds, normalize {}, init {}): ", s.rounds, s.normalize, s.init);
  for (const auto& info : infos) fmt::print("{} {:.3f}  ", info.name, mask.range_density(info.offset, info.count));
  fmt::print("\n");
  // How evenly the kept weights spread over units: kept per output row (fan-in) and per input
  // column (fan-out) of each weight; random pruning gives binomial counts (cv ~ 1/sqrt(mean)).
  for (const auto& l : model::mlp_layer_specs()) {
    std::vector<double> row(l.out, 0.0), col(l.in, 0.0);
    for (std::size_t o = 0; o < l.out; ++o)
      for (std::size_t i = 0; i < l.in; ++i)
        if (mask.test(l.weight_offset + o * l.in + i)) { row[o] += 1; col[i] += 1; }
    auto stats = [](const std::vector<double>& v) {
      double m = 0, q = 0; std::size_t empty = 0, single = 0;
      for (double x : v) { m += x; empty += x == 0 ? 1 : 0; single += x == 1 ? 1 : 0; }
      m /= v.size();
      for (double x : v) q += (x - m) * (x - m);
      return fmt::format("mean {:.1f} cv {:.2f} empty {} single {}", m, std::sqrt(q / v.size()) / m, empty, single);
    };
    fmt::print("  [{}x{}] kept per row: {}; per column: {}\n", l.out, l.in, stats(row), stats(col));
  }
}
