// Communication benchmark (run under mpirun with >= 2 ranks):
//  1. our Communicator::allreduce vs raw MPI_Allreduce on the same buffer (the MLP gradient,
//     535,818 floats), interleaved in one run: reports the ratio (target <= 1.05), and the cost
//     of comm.deterministic (rank-ordered sum) on the same buffer.
//  2. calibration of the alpha-beta network model: ping-pong between ranks 0 and 1 and allreduce
//     for 4 B ... 64 MiB; prints time, algbw = S/t and busbw = algbw * 2(N-1)/N (as nccl-tests),
//     and the least-squares alpha (latency) and beta (bandwidth) of t = alpha + S/beta.
//   mpirun -n 2 build/bin/bench_comm [--quick]
#include "lowsync/comm/communicator.hpp"

#include <Kokkos_Core.hpp>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
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
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    // The trainer's default watchdog timeout, so its cost is included.
    lowsync::comm::Communicator comm(MPI_COMM_WORLD, {false, 300.0});

    // 1. front door overhead
    std::vector<float> grads(535818, 1.0f);
    lowsync::comm::Communicator det(MPI_COMM_WORLD, {true, 300.0});
    std::vector<double> ours, raw, ordered;
    const int reps = quick ? 50 : 300;
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
    if (rank == 0)
      std::printf("allreduce %zu floats on %d ranks: lowsync %.3f ms, raw MPI_Allreduce %.3f ms (medians), ratio %.3f\n",
                  grads.size(), size, median(ours) * 1e3, median(raw) * 1e3, median(ours) / median(raw));
    if (rank == 0)
      std::printf("comm.deterministic allreduce (rank-ordered sum): %.3f ms, ratio to raw %.3f\n", median(ordered) * 1e3,
                  median(ordered) / median(raw));

    // 2. calibration
    if (rank == 0) std::printf("\n%12s %14s %14s %14s %14s\n", "bytes", "pingpong_us", "allreduce_us", "algbw_GBps", "busbw_GBps");
    std::vector<double> xs, ys;
    const std::size_t max_bytes = quick ? (1u << 22) : (64u << 20);
    std::vector<char> buf(max_bytes);
    std::vector<float> fbuf(max_bytes / 4 + 1);
    for (std::size_t bytes = 4; bytes <= max_bytes; bytes *= 4) {
      const int iters = bytes < (1u << 20) ? 200 : 10;
      double pp = 0.0;
      if (size >= 2) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double t = MPI_Wtime();
        for (int i = 0; i < iters; ++i) {
          if (rank == 0) {
            MPI_Send(buf.data(), static_cast<int>(bytes), MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf.data(), static_cast<int>(bytes), MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
          } else if (rank == 1) {
            MPI_Recv(buf.data(), static_cast<int>(bytes), MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf.data(), static_cast<int>(bytes), MPI_CHAR, 0, 0, MPI_COMM_WORLD);
          }
        }
        pp = (MPI_Wtime() - t) / iters / 2.0;  // one way
      }
      const int n = static_cast<int>(bytes / 4);
      MPI_Barrier(MPI_COMM_WORLD);
      const double t = MPI_Wtime();
      for (int i = 0; i < iters; ++i) MPI_Allreduce(MPI_IN_PLACE, fbuf.data(), n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      const double ar = (MPI_Wtime() - t) / iters;
      const double algbw = static_cast<double>(bytes) / ar / 1e9;
      const double busbw = algbw * 2.0 * (size - 1) / size;
      if (rank == 0) std::printf("%12zu %14.2f %14.2f %14.3f %14.3f\n", bytes, pp * 1e6, ar * 1e6, algbw, busbw);
      xs.push_back(static_cast<double>(bytes));
      ys.push_back(pp);
    }
    if (rank == 0 && size >= 2) {
      // Least squares t = alpha + S * (1/beta) on the one-way ping-pong times.
      double sx = 0, sy = 0, sxx = 0, sxy = 0;
      const double k = static_cast<double>(xs.size());
      for (std::size_t i = 0; i < xs.size(); ++i) sx += xs[i], sy += ys[i], sxx += xs[i] * xs[i], sxy += xs[i] * ys[i];
      const double slope = (k * sxy - sx * sy) / (k * sxx - sx * sx);
      const double alpha = std::max(ys.front(), (sy - slope * sx) / k);
      std::printf("\nfit: alpha = %.2f us, beta = %.2f GB/s (%.1f Gbit/s): --set net.alpha_us=%.2f --set net.beta_gbps=%.1f\n",
                  alpha * 1e6, 1.0 / slope / 1e9, 8.0 / slope / 1e9, alpha * 1e6, 8.0 / slope / 1e9);
    }
  }
  MPI_Finalize();
  return 0;
}
