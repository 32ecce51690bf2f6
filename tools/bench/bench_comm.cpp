// Communication benchmark (run under mpirun with >= 2 ranks):
//  1. our Communicator::allreduce vs raw MPI_Allreduce on the same buffer (the MLP gradient,
//     535,818 floats), interleaved in one run: reports the ratio (target <= 1.05), and the cost
//     of comm.deterministic (rank-ordered sum) on the same buffer.
//  2. calibration of the alpha-beta network model: ping-pong between ranks 0 and 1 and allreduce
//     for 4 B ... 64 MiB; prints time, algbw = S/t and busbw = algbw * 2(N-1)/N (as nccl-tests),
//     and the fit of t = alpha + S/beta (times are medians of single iterations): alpha = the
//     median one-way time of messages up to 1 KiB, beta =
//     the median of S / (t - alpha) over messages of 1 MiB and more (a plain least-squares fit
//     lets the large messages swamp the latency). --json FILE writes the fit and the table, the
//     calibration that `lowsync compare --calibration FILE` uses for its "measured" link.
//   mpirun -n 2 build/bin/bench_comm [--quick] [--calibration-only (skips 1)] [--json FILE]
#include "lowsync/comm/communicator.hpp"

#include <Kokkos_Core.hpp>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
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
  {
    Kokkos::ScopeGuard kokkos(argc, argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    bool quick = false, calibration_only = false;
    std::string json_path;
    for (int i = 1; i < argc; ++i) {
      if (std::strcmp(argv[i], "--quick") == 0) quick = true;
      else if (std::strcmp(argv[i], "--calibration-only") == 0) calibration_only = true;
      else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) json_path = argv[++i];
    }
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
    if (rank == 0) std::printf("\n%12s %14s %14s %14s %14s\n", "bytes", "pingpong_us", "allreduce_us", "algbw_GBps", "busbw_GBps");
    std::vector<double> xs, ys, ars;
    const std::size_t max_bytes = quick ? (1u << 22) : (64u << 20);
    std::vector<char> buf(max_bytes);
    std::vector<float> fbuf(max_bytes / 4 + 1);
    for (std::size_t bytes = 4; bytes <= max_bytes; bytes *= 4) {
      const int iters = bytes < (1u << 20) ? 100 : 15;
      // Medians of single iterations: on a loaded machine a mean is dominated by the rare
      // iteration during which a rank was descheduled.
      std::vector<double> pps, ars1;
      for (int i = 0; i < iters; ++i) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t = MPI_Wtime();
        if (rank == 0) {
          MPI_Send(buf.data(), static_cast<int>(bytes), MPI_CHAR, 1, 0, MPI_COMM_WORLD);
          MPI_Recv(buf.data(), static_cast<int>(bytes), MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
          MPI_Recv(buf.data(), static_cast<int>(bytes), MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
          MPI_Send(buf.data(), static_cast<int>(bytes), MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
        pps.push_back((MPI_Wtime() - t) / 2.0);  // one way
        MPI_Barrier(MPI_COMM_WORLD);
        t = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, fbuf.data(), static_cast<int>(bytes / 4), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        ars1.push_back(MPI_Wtime() - t);
      }
      // Rank 0 times the ping-pong; the allreduce time is the slowest rank's median.
      const double pp = size >= 2 ? median(pps) : 0.0;
      double ar = median(ars1);
      MPI_Allreduce(MPI_IN_PLACE, &ar, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      const double algbw = static_cast<double>(bytes) / ar / 1e9;
      const double busbw = algbw * 2.0 * (size - 1) / size;
      if (rank == 0) std::printf("%12zu %14.2f %14.2f %14.3f %14.3f\n", bytes, pp * 1e6, ar * 1e6, algbw, busbw);
      xs.push_back(static_cast<double>(bytes));
      ys.push_back(pp);
      ars.push_back(ar);
    }
    if (rank == 0 && size >= 2) {
      std::vector<double> small;
      for (std::size_t i = 0; i < xs.size(); ++i)
        if (xs[i] <= 1024) small.push_back(ys[i]);
      const double alpha = median(small);
      std::vector<double> betas;
      for (std::size_t i = 0; i < xs.size(); ++i)
        if (xs[i] >= (1u << 20) && ys[i] > alpha) betas.push_back(xs[i] / (ys[i] - alpha));
      if (betas.empty()) betas.push_back(xs.back() / std::max(ys.back(), 1e-12));
      const double beta = median(betas);
      std::printf("\nfit: alpha = %.2f us, beta = %.2f GB/s (%.1f Gbit/s): --set net.alpha_us=%.2f --set net.beta_gbps=%.1f\n",
                  alpha * 1e6, beta / 1e9, 8.0 * beta / 1e9, alpha * 1e6, 8.0 * beta / 1e9);
      if (!json_path.empty()) {
        std::FILE* f = std::fopen(json_path.c_str(), "w");
        if (f == nullptr) {
          std::fprintf(stderr, "bench_comm: cannot write %s\n", json_path.c_str());
        } else {
          std::fprintf(f, "{\n  \"ranks\": %d,\n  \"alpha_s\": %.9g,\n  \"beta_Bps\": %.9g,\n  \"points\": [", size, alpha,
                       beta);
          for (std::size_t i = 0; i < xs.size(); ++i)
            std::fprintf(f, "%s\n    {\"bytes\": %.0f, \"pingpong_s\": %.9g, \"allreduce_s\": %.9g}", i ? "," : "", xs[i],
                         ys[i], ars[i]);
          std::fprintf(f, "\n  ]\n}\n");
          std::fclose(f);
          std::printf("calibration written to %s\n", json_path.c_str());
        }
      }
    }
  }
  MPI_Finalize();
  return 0;
}
