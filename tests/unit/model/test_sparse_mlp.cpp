// The memory-lean ZO model against the dense backprop Model: same initial weights, same loss
// (dense mask, and a pruned mask against the Model with pruned weights zeroed); and the
// finite-difference NTK trace of the pruning phase against tr(J J^T) from exact backprop.
#include "support/training.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/model/sparse_mlp.hpp"
#include "lowsync/optim/prune.hpp"
#include "lowsync/optim/zo.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowsync::model {
namespace {

TEST(SparseMlp, LayoutAndInitMatchModel) {
  Model dense("mlp", 4, 17);
  ASSERT_EQ(dense.num_params(), mlp_num_params());
  const auto infos = mlp_param_infos();
  ASSERT_EQ(infos.size(), dense.param_infos().size());
  for (std::size_t t = 0; t < infos.size(); ++t) {
    EXPECT_EQ(infos[t].name, dense.param_infos()[t].name);
    EXPECT_EQ(infos[t].offset, dense.param_infos()[t].offset);
  }
  const auto p = dense.params();
  for (std::size_t j = 0; j < p.size(); j += 997) ASSERT_EQ(mlp_initial_value(17, j), p[j]) << j;
  EXPECT_EQ(mlp_initial_value(17, p.size() - 1), p[p.size() - 1]);
}

TEST(SparseMlp, DenseMaskLossEqualsModel) {
  const int n = 8;
  Model dense("mlp", n, 5);
  SparseMlp lean(n, 5);
  const auto b = testing::synthetic_batch(3, 1, 0, n);
  EXPECT_NEAR(lean.forward_loss(b.batch()), dense.forward_loss(b.batch()), 2e-5);
  EXPECT_EQ(lean.nnz(), dense.num_params());
}

TEST(SparseMlp, PrunedLossEqualsModelWithZeroedWeights) {
  const int n = 6;
  const std::size_t d = mlp_num_params();
  auto mask = std::make_shared<optim::Mask>(d, true);
  for (std::size_t j = 0; j < d; ++j)
    if (uniform01(8, j) < 0.85f) mask->set(j, false);
  SparseMlp lean(n, 9, mask);
  EXPECT_EQ(lean.nnz(), mask->nnz());
  EXPECT_LT(lean.params().bytes(), d * sizeof(float) / 5);  // stored compressed
  Model dense("mlp", n, 9);
  auto p = dense.params();
  for (std::size_t j = 0; j < d; ++j)
    if (!mask->test(j)) p[j] = 0.0f;
  const auto b = testing::synthetic_batch(4, 2, 0, n);
  EXPECT_NEAR(lean.forward_loss(b.batch()), dense.forward_loss(b.batch()), 2e-5);
  // Evaluation in chunks of the batch equals the Model's evaluation.
  const auto big = testing::synthetic_batch(4, 3, 0, 15);
  const auto e1 = lean.evaluate(big.images.data(), big.labels.data(), 15);
  dense.set_eval_batch(15);
  const auto e2 = dense.evaluate(big.images.data(), big.labels.data(), 15);
  EXPECT_NEAR(e1.loss, e2.loss, 2e-5);
  EXPECT_DOUBLE_EQ(e1.accuracy, e2.accuracy);
  EXPECT_DOUBLE_EQ(lean.forward_flops_per_sample(),
                   [&] {
                     double f = 0.0;
                     for (const auto& s : mlp_layer_specs())
                       f += 2.0 * mask->range_nnz(s.weight_offset, s.in * s.out) + mask->range_nnz(s.bias_offset, s.out);
                     return f;
                   }());
}

// The register-tiled forward (tiles of 32 and 16 samples, then single samples) against the plain
// per-weight loop it replaced, bit for bit: bias (0 when pruned), then + w * x per kept weight in
// ascending flat order, fp32 multiply then add, ReLU; loss in double. Batches hit every tile path.
double reference_loss(const SparseMlp& m, const float* images, const std::int32_t* labels, int n_int) {
  const auto n = static_cast<std::size_t>(n_int);
  const Mask& mask = m.params().mask();
  const auto v = m.params().values();
  std::vector<float> x(784 * n);
  for (std::size_t b = 0; b < n; ++b)
    for (std::size_t i = 0; i < 784; ++i) x[i * n + b] = images[b * 784 + i];
  std::size_t k = 0;
  for (const auto& s : m.layers()) {
    std::vector<float> y(s.out * n);
    std::vector<std::size_t> weight_k(s.out * s.in + 1);
    // Kept values are stored in flat order: weights of this layer, then its biases.
    std::vector<float> w(s.in * s.out, 0.0f), bias(s.out, 0.0f);
    std::vector<bool> kept_w(s.in * s.out), kept_b(s.out);
    for (std::size_t j = 0; j < s.in * s.out; ++j)
      if ((kept_w[j] = mask.test(s.weight_offset + j))) w[j] = v[k++];
    for (std::size_t o = 0; o < s.out; ++o)
      if ((kept_b[o] = mask.test(s.bias_offset + o))) bias[o] = v[k++];
    for (std::size_t o = 0; o < s.out; ++o)
      for (std::size_t b = 0; b < n; ++b) {
        float acc = kept_b[o] ? bias[o] : 0.0f;
        for (std::size_t i = 0; i < s.in; ++i)
          if (kept_w[o * s.in + i]) acc = acc + w[o * s.in + i] * x[i * n + b];
        y[o * n + b] = s.relu ? std::max(acc, 0.0f) : acc;
      }
    x = std::move(y);
  }
  double total = 0.0;
  for (std::size_t b = 0; b < n; ++b) {
    float mx = x[b];
    for (std::size_t c = 1; c < 10; ++c) mx = std::max(mx, x[c * n + b]);
    double denom = 0.0;
    for (std::size_t c = 0; c < 10; ++c) denom += std::exp(static_cast<double>(x[c * n + b] - mx));
    total += std::log(denom) - static_cast<double>(x[static_cast<std::size_t>(labels[b]) * n + b] - mx);
  }
  return total / static_cast<double>(n);
}

TEST(SparseMlp, TiledForwardBitwiseEqualsPlainLoop) {
  const std::size_t d = mlp_num_params();
  auto mask = std::make_shared<optim::Mask>(d, true);
  for (std::size_t j = 0; j < d; ++j)
    if (uniform01(12, j) < 0.7f) mask->set(j, false);
  for (const int n : {1, 16, 21, 32, 53}) {
    SparseMlp lean(n, 3, mask);
    const auto b = testing::synthetic_batch(5, 4, 0, n);
    const double got = lean.forward_loss(b.batch());
    EXPECT_EQ(got, reference_loss(lean, b.images.data(), b.labels.data(), n)) << "batch " << n;
  }
}

// Several zeroth-order directions in one pass against the in-place form, one direction at a time:
// each loss is bitwise forward_loss() after optim::zo_perturb of a fresh copy of the values, for
// dense and pruned masks, batches that hit every tile path, direction counts that hit every group
// size of the shared first layer, and every coefficient the estimator uses; the stored values are
// unchanged afterwards.
TEST(SparseMlp, PerturbedLossesBitwiseEqualInPlacePerturbation) {
  const std::size_t d = mlp_num_params();
  auto pruned = std::make_shared<optim::Mask>(d, true);
  for (std::size_t j = 0; j < d; ++j)
    if (uniform01(31, j) < 0.8f) pruned->set(j, false);
  for (const auto& mask : {std::shared_ptr<optim::Mask>(), pruned}) {
    for (const int n : {1, 17, 32}) {
      for (const int dirs : {1, 2, 3, 4, 7}) {
        SparseMlp lean(n, 6, mask, dirs);
        const auto b = testing::synthetic_batch(7, 5, 0, n);
        const auto values = lean.params().values();
        const std::vector<float> saved(values.begin(), values.end());
        std::vector<std::uint64_t> keys;
        for (int i = 0; i < dirs; ++i) keys.push_back(optim::zo_direction_key(99, 3, i));
        for (const float coef : {1.0f, -1.0f, 2.0f}) {
          std::vector<double> got(static_cast<std::size_t>(dirs));
          lean.perturbed_losses(b.batch(), {keys, 1e-2f, coef}, got);
          ASSERT_TRUE(std::equal(saved.begin(), saved.end(), values.begin())) << "values changed";
          for (int i = 0; i < dirs; ++i) {
            optim::zo_perturb(lean.params(), keys[static_cast<std::size_t>(i)], 1e-2f, coef);
            const double want = lean.forward_loss(b.batch());
            std::copy(saved.begin(), saved.end(), values.begin());
            EXPECT_EQ(got[static_cast<std::size_t>(i)], want)
                << (mask ? "pruned" : "dense") << " batch " << n << " dirs " << dirs << " dir " << i << " coef " << coef;
          }
        }
      }
    }
  }
  SparseMlp two(4, 6, nullptr, 2);
  const auto b = testing::synthetic_batch(7, 5, 0, 4);
  const std::uint64_t keys[3] = {1, 2, 3};
  std::vector<double> losses(3);
  EXPECT_THROW(two.perturbed_losses(b.batch(), {keys, 1e-2f, 1.0f}, losses), lowsync::Error);  // 3 > room for 2
  EXPECT_THROW(SparseMlp(4, 6, nullptr, 0), lowsync::Error);
  // Room for more directions is room for more activations.
  EXPECT_GT(two.activation_bytes(), SparseMlp(4, 6, nullptr, 1).activation_bytes());
}

// tr(J J^T) / n by backprop (one backward per output and sample, J rows = d f_c(x_b) / dw)
// against the finite-difference NTK estimate E[R] / eps^2 of the pruning phase.
TEST(NtkTrace, FiniteDifferenceMatchesBackpropTrace) {
  const int n = 2;
  const std::size_t d = mlp_num_params();
  std::vector<float> w(d), m(d, 1.0f), x(static_cast<std::size_t>(n) * 784), out(n * 10), dout(n * 10), g(d);
  for (std::size_t j = 0; j < d; ++j) w[j] = mlp_initial_value(21, j);
  for (std::size_t j = 0; j < d; ++j)
    if (uniform01(22, j) < 0.5f) m[j] = 0.0f;  // a pruned network: J restricted to kept weights
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal01(23, i);
  std::vector<float> wm(d);
  for (std::size_t j = 0; j < d; ++j) wm[j] = w[j] * m[j];
  DenseMlpRef net(n);
  // Backprop: one output coordinate at a time (dout = one-hot), summing ||grad restricted to m||^2.
  double trace = 0.0;
  for (int b = 0; b < n; ++b)
    for (int c = 0; c < 10; ++c) {
      net.forward(wm, x.data(), out);
      std::fill(dout.begin(), dout.end(), 0.0f);
      dout[static_cast<std::size_t>(b) * 10 + c] = 1.0f;
      net.backward(wm, x.data(), dout, g);
      for (std::size_t j = 0; j < d; ++j) trace += m[j] * static_cast<double>(g[j]) * g[j];
    }
  trace /= n;
  optim::NtkProblem problem{[&](std::span<const float> ww, std::span<float> o) { net.forward(ww, x.data(), o); },
                            static_cast<std::size_t>(n), 10};
  // Var of delta^T A delta is 2 eps^4 tr(A^2) <= 2 eps^4 tr(A)^2 (equality at rank one), so the
  // relative std of the mean over 120 draws is < sqrt(2/120) = 13% in the worst case and about
  // 3% for A of rank ~20 (two samples x ten outputs): a 30% band fails only on a wrong trace.
  const double fd = optim::ntk_trace_estimate(problem, w, m, 1e-3f, 77, 120);
  EXPECT_NEAR(fd / trace, 1.0, 0.3) << "fd " << fd << " backprop " << trace;
  // A wrong scale (missing eps^2 or 1/n) is off by far more; a zero gradient gives 0.
  EXPECT_GT(trace, 0.0);
}

}  // namespace
}  // namespace lowsync::model
