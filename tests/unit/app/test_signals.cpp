// StopSignals (app/signals.hpp) while the model trains. Some of oneDNN 2.x's generated GEMM kernels
// point rsp into a heap buffer; a signal handler run on that thread writes its frame there and
// corrupts the heap, and glibc aborts at a later free (uxlfoundation/oneDNN#4845, fixed upstream
// in 2026, not in Debian's 2.7). Stop signals must therefore be taken by a thread that never runs
// oneDNN. The test sends process-directed SIGUSR1s at random moments of MLP training; with the
// handler on the training thread the process aborted within a few dozen of them.
#include "lowsync/app/signals.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <thread>
#include <vector>

namespace lowsync::app {
namespace {

TEST(StopSignals, CountsSignalsSentWhileTheModelTrains) {
  constexpr int kBatch = 64;
  model::Model m("mlp", kBatch, 7);
  std::vector<float> images(static_cast<std::size_t>(kBatch) * 784);
  std::vector<std::int32_t> labels(kBatch);
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = uniform01(11, i);
  for (int i = 0; i < kBatch; ++i) labels[static_cast<std::size_t>(i)] = i % 10;
  const data::Batch batch{images.data(), labels.data(), kBatch};

  constexpr int kTrials = 60;
  for (int trial = 0; trial < kTrials; ++trial) {
    const StopSignals signals;
    ASSERT_EQ(StopSignals::received(), 0);
    // A delay spread over a few training steps, so the signal lands anywhere inside one.
    const auto delay = std::chrono::microseconds(200 + static_cast<int>(uniform01(13, static_cast<std::uint64_t>(trial)) * 3000.0));
    std::thread sender([delay] {
      std::this_thread::sleep_for(delay);
      ::kill(::getpid(), SIGUSR1);
    });
    float loss = 0.0F;
    int steps_after = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (steps_after < 3 && std::chrono::steady_clock::now() < deadline) {
      loss = m.forward_backward(batch);
      if (StopSignals::received() > 0) ++steps_after;
    }
    sender.join();
    ASSERT_EQ(StopSignals::received(), 1) << "trial " << trial;
    EXPECT_EQ(StopSignals::last_signal(), SIGUSR1);
    EXPECT_TRUE(std::isfinite(loss));
  }
  // Allocations after the signals: a corrupted heap aborts here at the latest.
  std::vector<std::vector<float>> blocks;
  for (int i = 0; i < 200; ++i) blocks.emplace_back(static_cast<std::size_t>(1000 + 37 * i), 1.0F);
  model::Model fresh("mlp", kBatch, 8);
  EXPECT_TRUE(std::isfinite(fresh.forward_backward(batch)));
}

}  // namespace
}  // namespace lowsync::app
