// SIGTERM/SIGUSR1 handling (see signals.hpp). The handler only touches sig_atomic_t counters and
// calls write/_exit, which are async-signal-safe.
#include "lowsync/app/signals.hpp"

#include <unistd.h>

#include <csignal>

namespace lowsync::app {
namespace {

volatile std::sig_atomic_t g_count = 0;
volatile std::sig_atomic_t g_last = 0;
struct sigaction g_old_term {}, g_old_usr1 {};

extern "C" void on_stop_signal(int sig) {
  if (g_count > 0) {
    static const char kMsg[] = "lowsync: second stop signal: exiting now without a checkpoint\n";
    [[maybe_unused]] const auto n = ::write(2, kMsg, sizeof kMsg - 1);
    ::_exit(128 + sig);
  }
  g_count = g_count + 1;
  g_last = sig;
}

}  // namespace

StopSignals::StopSignals() {
  g_count = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // MPI and file I/O calls continue; the flag is read between steps
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGUSR1, &sa, &g_old_usr1);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGUSR1, &g_old_usr1, nullptr);
}

int StopSignals::received() { return static_cast<int>(g_count); }
int StopSignals::last_signal() { return static_cast<int>(g_last); }

}  // namespace lowsync::app
