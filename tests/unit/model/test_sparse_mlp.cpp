// The memory-lean ZO model against the dense backprop Model: same initial weights, same loss
// (dense mask, and a pruned mask against the Model with pruned weights zeroed); and the
// finite-difference NTK trace of the pruning phase against tr(J J^T) from exact backprop.
#include "support/training.hpp"

#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/model/sparse_mlp.hpp"
#include "lowsync/optim/prune.hpp"

#include <gtest/gtest.h>

#include <cmath>

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
