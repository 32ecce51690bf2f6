// Stop requests from outside: SIGTERM and SIGUSR1 (what Slurm sends before the wall-time limit)
// set a flag that the trainer reads at each step boundary; the ranks agree on it, write a
// checkpoint and exit with status 3. A second signal ends the process at once (status 128 + sig).
//
// The signals are taken by a dedicated thread (sigtimedwait), never by a thread that computes:
// some of oneDNN 2.x's generated GEMM kernels point rsp into a heap buffer, and a signal handler
// run on that thread writes its frame there and corrupts the heap (uxlfoundation/oneDNN#4845; a
// Slurm USR1 crashed about 1 rank in 16). So every other thread blocks the two signals: the
// constructor blocks them in the calling thread, threads created later inherit the mask, and
// block_stop_signals() at the top of main() covers the threads MPI_Init starts. A handler stays
// installed for a thread started earlier that does not block them (a test binary's MPI threads).
#pragma once

#include <thread>

namespace lowsync::app {

// Blocks / unblocks SIGTERM and SIGUSR1 in the calling thread (and in threads it creates later).
void block_stop_signals();
void unblock_stop_signals();

// Counts stop signals for the lifetime of the object; afterwards the previous handlers are back
// and the signals are unblocked in the constructing thread (default action: terminate).
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // Signals received so far (async-signal-safe counter) and the last one's number.
  static int received();
  static int last_signal();

 private:
  std::jthread waiter_;
};

}  // namespace lowsync::app
