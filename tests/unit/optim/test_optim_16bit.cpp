// Standalone 16-bit optimizers (precision.compute = bf16 | fp16, ALGORITHMS.md §3): SGD momentum
// and Adam store parameters and state on the 16-bit grid (nearest-even) with the arithmetic of one
// update in fp32, against scalar loops; 16-bit Adam raises eps to 1e-4. Native 16-bit storage
// (u16 bit patterns in a 16-bit ParamStore) gives bitwise the values of the float-storage optimizer.
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
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
    EXPECT_EQ(0, std::memcmp(state[0].data.fp32().data(), v.data(), n * sizeof(float)));
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

std::uint16_t enc(float x, bool bf16) { return bf16 ? tensor::bf16_encode(x) : tensor::fp16_encode(x); }
float dec(std::uint16_t h, bool bf16) { return bf16 ? tensor::bf16_decode(h) : tensor::fp16_decode(h); }

// Same config, float storage (checked against scalar loops above) and native storage: after
// several steps parameters and every state buffer agree bit for bit once decoded.
void expect_native_equals_float(std::vector<std::string> sets, bool bf16) {
  sets.push_back(bf16 ? "precision.compute=bf16" : "precision.compute=fp16");
  const std::size_t n = 257;
  auto emulated = make_optimizer(make_cfg(sets), n);
  auto native = make_optimizer(make_cfg(sets), n, true);
  for (const auto& s : native->state()) EXPECT_TRUE(s.data.is_16bit()) << s.name;
  std::vector<float> w(n);
  std::vector<std::uint16_t> w16(n);
  for (std::size_t i = 0; i < n; ++i) {
    w16[i] = enc(3.0f * (2.0f * uniform01(11, i) - 1.0f), bf16);
    w[i] = dec(w16[i], bf16);
  }
  for (int step = 0; step < 6; ++step) {
    std::vector<float> g(n);
    std::vector<std::uint16_t> g16(n);
    for (std::size_t i = 0; i < n; ++i) {
      // Magnitudes from 1e-6 to 1: fp16 subnormals, underflowing g^2, and large steps.
      g16[i] = enc(std::pow(10.0f, -6.0f * uniform01(40 + step, i)) * (uniform01(60 + step, i) < 0.5f ? -1.0f : 1.0f), bf16);
      g[i] = dec(g16[i], bf16);
    }
    emulated->step(w, g);
    native->step({w16, bf16}, {g16, bf16});
  }
  EXPECT_EQ(native->step_count(), emulated->step_count());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < n; ++i) differ += std::bit_cast<std::uint32_t>(dec(w16[i], bf16)) != std::bit_cast<std::uint32_t>(w[i]);
  EXPECT_EQ(differ, 0u) << "parameters, " << (bf16 ? "bf16" : "fp16");
  const auto fs = emulated->state();
  const auto hs = native->state();
  ASSERT_EQ(fs.size(), hs.size());
  for (std::size_t b = 0; b < fs.size(); ++b) {
    EXPECT_EQ(fs[b].name, hs[b].name);
    std::size_t state_differ = 0;
    for (std::size_t i = 0; i < n; ++i) state_differ += dec(hs[b].data.bits()[i], bf16) != fs[b].data.fp32()[i];
    EXPECT_EQ(state_differ, 0u) << fs[b].name;
  }
}

TEST(Optim16Bit, NativeStorageMatchesFloatStorageBitwise) {
  for (bool bf16 : {true, false}) {
    expect_native_equals_float({"optim.name=sgd", "optim.lr=0.05"}, bf16);
    expect_native_equals_float({"optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9", "optim.weight_decay=0.01"}, bf16);
    expect_native_equals_float({"optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.1"}, bf16);
    expect_native_equals_float({"optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9",
                                "precision.update_rounding=stochastic"}, bf16);
    expect_native_equals_float({"optim.name=adamw", "optim.lr=0.01", "precision.update_rounding=stochastic"}, bf16);
  }
}

// An SGD step of a tenth of an ulp of the weight: nearest-even loses every one of them, stochastic
// rounding keeps them in expectation (the mean over 4096 weights moves by 50 tenths of an ulp
// after 50 steps, within 0.3 ulp), and a second optimizer with the same seed draws the same bits.
TEST(Optim16Bit, StochasticUpdateRoundingKeepsSubUlpSteps) {
  for (bool bf16 : {true, false}) {
    const std::size_t n = 4096;
    const float w0 = 1.5f, ulp = bf16 ? 0x1p-7f : 0x1p-10f;  // spacing in [1, 2)
    const float lr = 0.01f, g = 0.1f * ulp / lr;
    const std::string compute = bf16 ? "precision.compute=bf16" : "precision.compute=fp16";
    auto run = [&](const std::string& rounding) {
      auto opt = make_optimizer(make_cfg({"optim.name=sgd", "optim.lr=0.01", compute, "precision.update_rounding=" + rounding}), n, false);
      std::vector<float> w(n, w0), grads(n, g);
      for (int step = 0; step < 50; ++step) opt->step(w, grads);
      return w;
    };
    const auto nearest = run("nearest");
    EXPECT_TRUE(std::all_of(nearest.begin(), nearest.end(), [&](float v) { return v == w0; }));
    const auto stochastic = run("stochastic");
    double mean = 0.0;
    for (float v : stochastic) mean += v;
    mean /= n;
    EXPECT_NEAR(mean, w0 - 50 * 0.1 * ulp, 0.3 * ulp) << (bf16 ? "bf16" : "fp16");
    EXPECT_EQ(run("stochastic"), stochastic);
    for (float v : stochastic) ASSERT_EQ(v, r16(v, bf16));  // still on the 16-bit grid
  }
}

TEST(Optim16Bit, StochasticUpdateRoundingNeeds16BitSgdOrAdamW) {
  EXPECT_THROW(make_optimizer(make_cfg({"optim.name=sgd", "precision.update_rounding=stochastic"}), 4, false), Error);
  EXPECT_THROW(make_optimizer(make_cfg({"optim.name=sgd", "precision.compute=fp8", "precision.update_rounding=stochastic"}), 4,
                              false),
               Error);
  EXPECT_NO_THROW(make_optimizer(make_cfg({"optim.name=adamw", "precision.compute=fp16", "precision.update_rounding=stochastic"}),
                                 4, true));
}

TEST(Optim16Bit, NativeStorageRefusesFp32ComputeAndFloatSteps) {
  EXPECT_THROW(make_optimizer(make_cfg({"optim.name=sgd"}), 4, true), Error);
  auto native = make_optimizer(make_cfg({"optim.name=sgd", "precision.compute=bf16"}), 4, true);
  std::vector<float> w(4), g(4);
  EXPECT_THROW(native->step(w, g), Error);
}

}  // namespace
}  // namespace lowsync::optim
