// SIGTERM/SIGUSR1 handling (see signals.hpp). The waiter thread and the fallback handler share
// one counting function that only touches sig_atomic_t counters and calls write/_exit, which are
// async-signal-safe.
#include "lowsync/app/signals.hpp"

#include <signal.h>
#include <unistd.h>

#include <csignal>
#include <ctime>

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

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  return set;
}

// Takes pending stop signals until asked to stop; the 20 ms timeout bounds the destructor's wait.
void wait_for_signals(const std::stop_token& stop) {
  const sigset_t set = stop_set();
  const timespec timeout{0, 20'000'000};
  while (!stop.stop_requested()) {
    const int sig = ::sigtimedwait(&set, nullptr, &timeout);
    if (sig > 0) on_stop_signal(sig);  // else a timeout or EINTR: look at the token again
  }
}

}  // namespace

void block_stop_signals() {
  const sigset_t set = stop_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void unblock_stop_signals() {
  const sigset_t set = stop_set();
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

StopSignals::StopSignals() {
  g_count = 0;
  g_last = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // MPI and file I/O calls continue; the flag is read between steps
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGUSR1, &sa, &g_old_usr1);
  block_stop_signals();  // before the thread starts: it inherits the mask sigtimedwait needs
  waiter_ = std::jthread(wait_for_signals);
}

StopSignals::~StopSignals() {
  waiter_.request_stop();
  waiter_.join();
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGUSR1, &g_old_usr1, nullptr);
  unblock_stop_signals();
}

int StopSignals::received() { return static_cast<int>(g_count); }
int StopSignals::last_signal() { return static_cast<int>(g_last); }

}  // namespace lowsync::app
