// SGD (momentum, weight decay) and AdamW against hand-written scalar loops of the textbook
// update rules (torch.optim semantics), for several steps.
#include "lowsync/config/config.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace lowsync::optim {
namespace {

std::vector<float> random_vec(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = 2.0f * uniform01(seed, i) - 1.0f;
  return v;
}

config::Config make_cfg(const std::vector<std::string>& sets) {
  config::Config cfg;
  for (const auto& s : sets) cfg.set_text(s);
  return cfg;
}

TEST(Sgd, MatchesScalarLoopWithMomentumAndWeightDecay) {
  const std::size_t n = 37;
  auto cfg = make_cfg({"optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.01"});
  auto opt = make_optimizer(cfg, n);
  auto w = random_vec(n, 1);
  std::vector<double> w_ref(w.begin(), w.end()), v_ref(n, 0.0);
  for (int step = 0; step < 5; ++step) {
    auto g = random_vec(n, 100 + step);
    opt->step(w, g);
    for (std::size_t i = 0; i < n; ++i) {
      const double gi = g[i] + 0.01 * w_ref[i];
      v_ref[i] = 0.9 * v_ref[i] + gi;
      w_ref[i] -= 0.1 * v_ref[i];
    }
  }
  for (std::size_t i = 0; i < n; ++i) EXPECT_NEAR(w[i], w_ref[i], 1e-5) << i;
  ASSERT_EQ(opt->state().size(), 1u);
  EXPECT_EQ(opt->state()[0].name, "momentum");
  EXPECT_EQ(opt->step_count(), 5);
}

TEST(Sgd, PlainSgdHasNoState) {
  auto opt = make_optimizer(make_cfg({"optim.lr=0.5"}), 3);
  std::vector<float> w = {1.0f, 2.0f, 3.0f}, g = {1.0f, -1.0f, 0.5f};
  opt->step(w, g);
  EXPECT_FLOAT_EQ(w[0], 0.5f);
  EXPECT_FLOAT_EQ(w[1], 2.5f);
  EXPECT_FLOAT_EQ(w[2], 2.75f);
  EXPECT_TRUE(opt->state().empty());
}

TEST(AdamW, MatchesScalarLoop) {
  const std::size_t n = 29;
  auto cfg = make_cfg({"optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.1", "optim.beta1=0.8",
                       "optim.beta2=0.99", "optim.eps=1e-6"});
  auto opt = make_optimizer(cfg, n);
  auto w = random_vec(n, 2);
  std::vector<double> wr(w.begin(), w.end()), m(n, 0.0), v(n, 0.0);
  for (int t = 1; t <= 6; ++t) {
    auto g = random_vec(n, 200 + t);
    opt->step(w, g);
    for (std::size_t i = 0; i < n; ++i) {
      wr[i] *= 1.0 - 0.01 * 0.1;
      m[i] = 0.8 * m[i] + 0.2 * g[i];
      v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
      const double mh = m[i] / (1 - std::pow(0.8, t)), vh = v[i] / (1 - std::pow(0.99, t));
      wr[i] -= 0.01 * mh / (std::sqrt(vh) + 1e-6);
    }
  }
  for (std::size_t i = 0; i < n; ++i) EXPECT_NEAR(w[i], wr[i], 2e-5) << i;
  EXPECT_EQ(opt->state().size(), 2u);
}

}  // namespace
}  // namespace lowsync::optim
