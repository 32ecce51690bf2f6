// Runtime: MPI (MPI_Init_thread, FUNNELED) and Kokkos initialised and finalised by RAII, rank-aware
// logging set up, and the OpenMP thread count for oneDNN fixed per rank.
#pragma once

#include <mpi.h>

namespace lowsync::app {

class Runtime {
 public:
  Runtime(int& argc, char**& argv);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }
  static void set_threads(int threads);
  // Ends every rank (MPI_Abort): for a failure peers may be waiting on in a collective.
  [[noreturn]] void abort(int exit_code) const;

 private:
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace lowsync::app
