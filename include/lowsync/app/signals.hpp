// Stop requests from outside: SIGTERM and SIGUSR1 (what Slurm sends before the wall-time limit)
// set a flag that the trainer reads at each step boundary; the ranks agree on it, write a
// checkpoint and exit with status 3. A second signal ends the process at once (status 128 + sig).
#pragma once

namespace lowsync::app {

// Installs the handlers for the lifetime of the object (restores the previous ones after).
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // Signals received so far (async-signal-safe counter) and the last one's number.
  static int received();
  static int last_signal();
};

}  // namespace lowsync::app
