// GoogleTest main for unit and MPI tests (kokkos-comm's, fixed per STYLE.md): MPI and Kokkos by
// RAII, InitGoogleTest once, the default printer removed on ranks != 0, and pass/fail combined
// over ranks in OnTestEnd (which every rank reaches), so a failure on rank 3 fails the test on
// rank 0 too. A test that hangs is ended by ctest's TIMEOUT.
#include "lowsync/app/runtime.hpp"
#include "lowsync/core/log.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

namespace {

class CombineResults : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo& info) override {
    int failed_here = info.result()->Failed() ? 1 : 0, failed_anywhere = 0;
    MPI_Allreduce(&failed_here, &failed_anywhere, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (failed_anywhere && !failed_here) ADD_FAILURE() << "failed on another rank";
    if (failed_here) {
      int rank = 0;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank, info.test_suite_name(), info.name());
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  lowsync::app::Runtime runtime(argc, argv);
  lowsync::log::set_quiet(true);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (runtime.rank() != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new CombineResults);
  int failed = RUN_ALL_TESTS();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return failed;
}
