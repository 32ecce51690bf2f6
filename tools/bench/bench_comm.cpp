// Communication benchmark (run under mpirun with >= 2 ranks):
//  1. our Communicator::allreduce vs raw MPI_Allreduce on the same buffer (the MLP gradient,
//     535,818 floats), interleaved in one run: reports the ratio (target <= 1.05), and the cost
//     of comm.deterministic (rank-ordered sum) on the same buffer.
//  2. calibration of the alpha-beta network model: ping-pong between ranks 0 and 1 and allreduce
//     for 4 B ... 64 MiB; prints time, algbw = S/t and busbw = algbw * 2(N-1)/N (as nccl-tests),
//     and the fit of t = alpha + S/beta (times are medians of single iterations): alpha = the
//     median one-way time of messages up to 1 KiB, beta = the median of S / (t - alpha) over
//     messages of 1 MiB and more (a plain least-squares fit lets the large messages swamp the
//     latency). --json FILE writes the fit and the table, the calibration that `lowsync compare
//     --calibration FILE` uses for its "measured" link.
//   mpirun -n 2 build/bin/bench_comm [--quick] [--calibration-only (skips 1)] [--json FILE]
//       [--max-bytes N] [--seconds-per-size S] [--label TEXT]
// --max-bytes caps the message sizes (default 64 MiB, --quick 4 MiB); --seconds-per-size caps the
// iterations of one size by the time its first iteration took (default 3 s, at least 3
// iterations), so a slow link (tools/netem: 100 Mbit/s) calibrates in seconds; --label names the
// link in the JSON (tools/netem/netem.sh passes its profile).
#include "lowsync/comm/communicator.hpp"

#include <Kokkos_Core.hpp>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int status = 0;
  {
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    bool quick = false, calibration_only = false;
    std::string json_path, label;
    double max_bytes_arg = 0.0, seconds_per_size = 3.0;
    // Bad arguments: one line, every rank exits 2 (all ranks parse the same argv, so they agree).
    auto usage_error = [&](const std::string& what) {
      if (rank == 0) std::fprintf(stderr, "bench_comm: %s\n", what.c_str());
      return false;
    };
    auto number = [&](int i, double lo, double hi, double& out) {
      if (i + 1 >= argc) return usage_error(std::string(argv[i]) + " needs a value");
      char* end = nullptr;
      const double v = std::strtod(argv[i + 1], &end);
      if (end == argv[i + 1] || *end != '\0' || !(v >= lo && v <= hi))
        return usage_error(std::string(argv[i]) + " must be a number in [" + std::to_string(lo) + ", " +
                           std::to_string(hi) + "], got '" + argv[i + 1] + "'");
      out = v;
      return true;
    };
    bool args_ok = true;
    for (int i = 1; i < argc && args_ok; ++i) {
      if (std::strcmp(argv[i], "--quick") == 0) quick = true;
      else if (std::strcmp(argv[i], "--calibration-only") == 0) calibration_only = true;
      else if (std::strcmp(argv[i], "--json") == 0 || std::strcmp(argv[i], "--label") == 0) {
        if (i + 1 >= argc) args_ok = usage_error(std::string(argv[i]) + " needs a value");
        else (argv[i][2] == 'j' ? json_path : label) = argv[i + 1], ++i;
      } else if (std::strcmp(argv[i], "--max-bytes") == 0) {
        args_ok = number(i, 4, 1u << 30, max_bytes_arg), ++i;
      } else if (std::strcmp(argv[i], "--seconds-per-size") == 0) {
        args_ok = number(i, 0, 3600, seconds_per_size), ++i;
      } else {
        args_ok = usage_error(std::string("unknown argument '") + argv[i] +
                              "' (--quick, --calibration-only, --json FILE, --max-bytes N, --seconds-per-size S, --label TEXT)");
      }
    }
    if (args_ok && size < 2) args_ok = usage_error("needs at least 2 ranks (mpirun -n 2 ...)");
    if (!args_ok) {
      MPI_Finalize();
      return 2;
    }
    Kokkos::ScopeGuard kokkos(argc, argv);
    // The trainer's default watchdog timeout, so its cost is included.
    lowsync::comm::Communicator comm(MPI_COMM_WORLD, {false, 300.0});

    // 1. front door overhead
    std::vector<float> grads(535818, 1.0f);
    lowsync::comm::Communicator det(MPI_COMM_WORLD, {true, 300.0});
    std::vector<double> ours, raw, ordered;
    const int reps = calibration_only ? 0 : quick ? 50 : 300;
    for (int i = 0; i < reps + 10; ++i) {
      MPI_Barrier(MPI_COMM_WORLD);
      double t = MPI_Wtime();
      comm.allreduce(std::span<float>(grads), lowsync::comm::ReduceOp::sum, "grad");
      const double a = MPI_Wtime() - t;
      MPI_Barrier(MPI_COMM_WORLD);
      t = MPI_Wtime();
      MPI_Allreduce(MPI_IN_PLACE, grads.data(), static_cast<int>(grads.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      const double b = MPI_Wtime() - t;
      MPI_Barrier(MPI_COMM_WORLD);
      t = MPI_Wtime();
      det.allreduce(std::span<float>(grads), lowsync::comm::ReduceOp::sum, "grad");
      const double c = MPI_Wtime() - t;
      if (i >= 10) ours.push_back(a), raw.push_back(b), ordered.push_back(c);
    }
    if (rank == 0 && !calibration_only)
      std::printf("allreduce %zu floats on %d ranks: lowsync %.3f ms, raw MPI_Allreduce %.3f ms (medians), ratio %.3f\n",
                  grads.size(), size, median(ours) * 1e3, median(raw) * 1e3, median(ours) / median(raw));
    if (rank == 0 && !calibration_only)
      std::printf("comm.deterministic allreduce (rank-ordered sum): %.3f ms, ratio to raw %.3f\n", median(ordered) * 1e3,
                  median(ordered) / median(raw));

    // 2. calibration
    if (rank == 0) std::printf("\n%12s %14s %14s %14s %14s %6s\n", "bytes", "pingpong_us", "allreduce_us", "algbw_GBps", "busbw_GBps", "iters");
    std::vector<double> xs, ys, ars, bcs;
    const std::size_t max_bytes =
        max_bytes_arg > 0 ? static_cast<std::size_t>(max_bytes_arg) : quick ? (std::size_t{1} << 22) : (std::size_t{64} << 20);
    std::vector<char> buf(max_bytes);
    std::vector<float> fbuf(max_bytes / 4 + 1);
    // One ping-pong (rank 0 <-> 1, one way = half the round trip), one allreduce and one broadcast
    // (root 0) of `bytes`.
    auto iteration = [&](std::size_t bytes, double& pp, double& ar, double& bc) {
      MPI_Barrier(MPI_COMM_WORLD);
      double t = MPI_Wtime();
      if (rank == 0) {
        MPI_Send(buf.data(), static_cast<int>(bytes), MPI_CHAR, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(buf.data(), static_cast<int>(bytes), MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else if (rank == 1) {
        MPI_Recv(buf.data(), static_cast<int>(bytes), MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(buf.data(), static_cast<int>(bytes), MPI_CHAR, 0, 0, MPI_COMM_WORLD);
      }
      pp = (MPI_Wtime() - t) / 2.0;
      MPI_Barrier(MPI_COMM_WORLD);
      t = MPI_Wtime();
      MPI_Allreduce(MPI_IN_PLACE, fbuf.data(), static_cast<int>(bytes / 4), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      ar = MPI_Wtime() - t;
      MPI_Barrier(MPI_COMM_WORLD);
      t = MPI_Wtime();
      MPI_Bcast(buf.data(), static_cast<int>(bytes), MPI_CHAR, 0, MPI_COMM_WORLD);
      bc = MPI_Wtime() - t;
    };
    for (std::size_t bytes = 4; bytes <= max_bytes; bytes *= 4) {
      // An untimed first iteration opens connections and grows TCP's window; rank 0 sizes the
      // iteration count from its time so every size takes about seconds_per_size.
      double pp0 = 0.0, ar0 = 0.0, bc0 = 0.0;
      iteration(bytes, pp0, ar0, bc0);
      int iters = bytes < (1u << 20) ? 100 : 15;
      if (rank == 0) {
        const double once = 2.0 * pp0 + ar0 + bc0;
        if (once * iters > seconds_per_size) iters = std::max(3, static_cast<int>(seconds_per_size / std::max(once, 1e-9)));
      }
      MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
      // Medians of single iterations: on a loaded machine a mean is dominated by the rare
      // iteration during which a rank was descheduled.
      std::vector<double> pps, ars1, bcs1;
      for (int i = 0; i < iters; ++i) {
        double pp = 0.0, ar = 0.0, bc = 0.0;
        iteration(bytes, pp, ar, bc);
        pps.push_back(pp);
        ars1.push_back(ar);
        bcs1.push_back(bc);
      }
      // Rank 0 times the ping-pong; the allreduce and broadcast times are the slowest rank's
      // medians (a broadcast's root returns as soon as its sends are queued).
      const double pp = median(pps);
      double ar_bc[2] = {median(ars1), median(bcs1)};
      MPI_Allreduce(MPI_IN_PLACE, ar_bc, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      const double ar = ar_bc[0];
      const double algbw = static_cast<double>(bytes) / ar / 1e9;
      const double busbw = algbw * 2.0 * (size - 1) / size;
      if (rank == 0) std::printf("%12zu %14.2f %14.2f %14.4f %14.4f %6d\n", bytes, pp * 1e6, ar * 1e6, algbw, busbw, iters);
      std::fflush(stdout);
      xs.push_back(static_cast<double>(bytes));
      ys.push_back(pp);
      ars.push_back(ar);
      bcs.push_back(ar_bc[1]);
    }
    if (rank == 0) {
      std::vector<double> small;
      for (std::size_t i = 0; i < xs.size(); ++i)
        if (xs[i] <= 1024) small.push_back(ys[i]);
      const double alpha = median(small);
      std::vector<double> betas, ar_betas, bc_betas;
      const double n = size, ar_alpha = 2.0 * (n - 1) * alpha, ar_factor = 2.0 * (n - 1) / n;
      const double bc_alpha = std::ceil(std::log2(n)) * alpha;
      for (std::size_t i = 0; i < xs.size(); ++i) {
        if (xs[i] >= (1u << 20) && ys[i] > alpha) betas.push_back(xs[i] / (ys[i] - alpha));
        // The bandwidth the ring-allreduce formula needs to match the measured allreduce.
        if (xs[i] >= (1u << 20) && ars[i] > ar_alpha) ar_betas.push_back(ar_factor * xs[i] / (ars[i] - ar_alpha));
        // Likewise the broadcast formula, ceil(log2 N) alpha + S / beta.
        if (xs[i] >= (1u << 20) && bcs[i] > bc_alpha) bc_betas.push_back(xs[i] / (bcs[i] - bc_alpha));
      }
      if (betas.empty()) betas.push_back(xs.back() / std::max(ys.back(), 1e-12));
      const double beta = median(betas);
      const double ar_beta = ar_betas.empty() ? 0.0 : median(ar_betas);
      const double bc_beta = bc_betas.empty() ? 0.0 : median(bc_betas);
      std::printf("\nfit: alpha = %.2f us, beta = %.4g GB/s (%.4g Gbit/s): --set net.alpha_us=%.2f --set net.beta_gbps=%.4g\n",
                  alpha * 1e6, beta / 1e9, 8.0 * beta / 1e9, alpha * 1e6, 8.0 * beta / 1e9);
      if (ar_beta > 0)
        std::printf("allreduce at %d ranks, >= 1 MiB: the ring formula matches with beta = %.4g GB/s (%.2fx the ping-pong beta)\n",
                    size, ar_beta / 1e9, ar_beta / beta);
      if (bc_beta > 0)
        std::printf("broadcast at %d ranks, >= 1 MiB: the formula matches with beta = %.4g GB/s (%.2fx the ping-pong beta)\n",
                    size, bc_beta / 1e9, bc_beta / beta);
      if (!json_path.empty()) {
        std::FILE* f = std::fopen(json_path.c_str(), "w");
        if (f == nullptr) {
          std::fprintf(stderr, "bench_comm: --json %s: cannot write the file\n", json_path.c_str());
          status = 1;
        } else {
          std::string quoted;
          for (char c : label) {
            if (c == '"' || c == '\\') quoted += '\\';
            if (static_cast<unsigned char>(c) >= 0x20) quoted += c;
          }
          std::fprintf(f, "{\n  \"label\": \"%s\",\n  \"ranks\": %d,\n  \"alpha_s\": %.9g,\n  \"beta_Bps\": %.9g,\n"
                       "  \"allreduce_beta_Bps\": %.9g,\n  \"broadcast_beta_Bps\": %.9g,\n  \"points\": [", quoted.c_str(), size,
                       alpha, beta, ar_beta, bc_beta);
          for (std::size_t i = 0; i < xs.size(); ++i)
            std::fprintf(f, "%s\n    {\"bytes\": %.0f, \"pingpong_s\": %.9g, \"allreduce_s\": %.9g, \"broadcast_s\": %.9g}",
                         i ? "," : "", xs[i], ys[i], ars[i], bcs[i]);
          std::fprintf(f, "\n  ]\n}\n");
          std::fclose(f);
          std::printf("calibration written to %s\n", json_path.c_str());
        }
      }
    }
  }
  MPI_Finalize();
  return status;
}
