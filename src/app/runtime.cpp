// MPI + Kokkos lifetime (see runtime.hpp).
#include "lowsync/app/runtime.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"

#include <Kokkos_Core.hpp>
#include <omp.h>

#include <cstdlib>

namespace lowsync::app {

Runtime::Runtime(int& argc, char**& argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  log::set_rank(rank_);
  Kokkos::InitArguments args;
  args.num_threads = 1;
  args.disable_warnings = true;
  Kokkos::initialize(args);
  // One thread per rank unless train.threads says otherwise: ranks usually fill the cores.
  set_threads(1);
}

Runtime::~Runtime() {
  Kokkos::finalize();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void Runtime::set_threads(int threads) { omp_set_num_threads(threads); }

void Runtime::abort(int exit_code) const {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

}  // namespace lowsync::app
