// ranks: 1
// The watchdog's rank-0 heartbeat check (src/comm/communicator.cpp) without a second process:
// the slots are plain memory standing in for rank 0's window, the "other rank" is this test
// writing a later collective number into slot 1.
#include "lowsync/comm/communicator.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace lowsync::comm {
namespace {

using namespace std::chrono_literals;

void post(std::int64_t* slots, int rank, std::int64_t value) {
  std::atomic_ref<std::int64_t>(slots[rank]).store(value, std::memory_order_relaxed);
}
std::int64_t read(std::int64_t* slots, int rank) {
  return std::atomic_ref<std::int64_t>(slots[rank]).load(std::memory_order_relaxed);
}

// A rank 0 that is always a little behind but keeps entering collectives is not stuck: over
// four timeouts of such progress the watchdog must not end the process (a timer that is never
// reset while rank 0 progresses would _Exit(4) here and fail the test).
TEST(Watchdog, SlowButProgressingRankZeroIsNotKilled) {
  std::int64_t slots[2] = {0, 0};
  Watchdog w(0.4, 0);
  w.attach_heartbeat(MPI_WIN_NULL, slots, 2);
  const auto end = std::chrono::steady_clock::now() + 1600ms;
  int collectives = 0;
  while (std::chrono::steady_clock::now() < end) {
    post(slots, 1, read(slots, 0) + 2);  // the other rank already waits in the next collective
    w.arm(Collective::allreduce, "test", 1);
    std::this_thread::sleep_for(5ms);
    w.disarm();
    std::this_thread::sleep_for(60ms);  // outside a collective, behind the other rank
    ++collectives;
  }
  EXPECT_EQ(read(slots, 0), collectives);  // every arm posted its number
}

// A rank 0 that stays outside a collective while another rank waits in one is named, and the
// process ends with the watchdog's exit status 4 within about the timeout.
void stay_behind_outside_a_collective() {
  std::int64_t slots[2] = {0, 0};
  Watchdog w(0.3, 0);
  w.attach_heartbeat(MPI_WIN_NULL, slots, 2);
  w.arm(Collective::allreduce, "test", 7);
  w.disarm();
  post(slots, 1, 3);  // rank 1 is at collective #3, rank 0 stays at #1
  std::this_thread::sleep_for(5s);
  std::_Exit(0);  // not reached when the watchdog works
}

TEST(WatchdogDeathTest, RankZeroStuckOutsideACollectiveIsNamed) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(stay_behind_outside_a_collective(), ::testing::ExitedWithCode(4),
              "ranks are waiting for rank\\(s\\) 0, which did not reach collective #3");
}

}  // namespace
}  // namespace lowsync::comm
