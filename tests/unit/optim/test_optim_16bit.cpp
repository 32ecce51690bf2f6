// Standalone 16-bit optimizers (precision.compute = bf16 | fp16, ALGORITHMS.md §3): SGD momentum
// and Adam store parameters and state on the 16-bit grid (nearest-even) with the arithmetic of one
// update in fp32, against scalar loops; 16-bit Adam raises eps to 1e-4.
#include "lowsync/config/config.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace lowsync::optim {
namespace {

config::Config make_cfg(const std::vector<std::string>& sets) {
  config::Config cfg;
  for (const auto& s : sets) cfg.set_text(s);
  return cfg;
}

float r16(float x, bool bf16) { return bf16 ? tensor::bf16_round(x) : tensor::fp16_round(x); }

TEST(Optim16Bit, SgdMomentumStoresSixteenBitValues) {
  for (bool bf16 : {true, false}) {
    const std::size_t n = 64;
    auto opt = make_optimizer(make_cfg({"optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9",
                                        bf16 ? "precision.compute=bf16" : "precision.compute=fp16"}),
                              n);
    std::vector<float> w(n), v(n, 0.0f);
    for (std::size_t i = 0; i < n; ++i) w[i] = r16(2.0f * uniform01(1, i) - 1.0f, bf16);
    std::vector<float> ref = w;
    for (int step = 0; step < 5; ++step) {
      std::vector<float> g(n);
      for (std::size_t i = 0; i < n; ++i) g[i] = r16(1e-2f * (2.0f * uniform01(2 + step, i) - 1.0f), bf16);
      opt->step(w, g);
      for (std::size_t i = 0; i < n; ++i) {
        v[i] = r16(0.9f * v[i] + g[i], bf16);
        ref[i] = r16(ref[i] - 0.01f * v[i], bf16);
      }
    }
    EXPECT_EQ(0, std::memcmp(w.data(), ref.data(), n * sizeof(float))) << (bf16 ? "bf16" : "fp16");
    auto state = opt->state();
    ASSERT_EQ(state.size(), 1u);
    EXPECT_EQ(0, std::memcmp(state[0].data.data(), v.data(), n * sizeof(float)));
  }
}

TEST(Optim16Bit, AdamUsesEpsOneEMinus4AndSixteenBitState) {
  const std::size_t n = 32;
  auto opt = make_optimizer(make_cfg({"optim.name=adamw", "optim.lr=0.001", "precision.compute=fp16"}), n);
  std::vector<float> w(n, 0.5f), m(n, 0.0f), v(n, 0.0f);
  std::vector<float> ref = w;
  for (int step = 1; step <= 3; ++step) {
    std::vector<float> g(n);
    // Gradients small enough that g^2 underflows fp16: eps = 1e-8 would blow the update up.
    for (std::size_t i = 0; i < n; ++i) g[i] = tensor::fp16_round(1e-4f * (uniform01(7 + step, i) + 0.5f));
    opt->step(w, g);
    const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(0.9, step)));
    const float c2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(0.999, step)));
    for (std::size_t i = 0; i < n; ++i) {
      m[i] = tensor::fp16_round(0.9f * m[i] + 0.1f * g[i]);
      v[i] = tensor::fp16_round(0.999f * v[i] + 0.001f * g[i] * g[i]);
      ref[i] = tensor::fp16_round(ref[i] * 1.0f - 0.001f * (m[i] * c1) / (std::sqrt(v[i]) * c2 + 1e-4f));
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_EQ(w[i], ref[i]) << i;
    EXPECT_TRUE(std::isfinite(w[i]));
    EXPECT_GT(w[i], 0.49f);  // a bounded step, not an explosion
  }
}

}  // namespace
}  // namespace lowsync::optim
