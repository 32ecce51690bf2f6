// Softmax cross-entropy against a naive fp64 loop; its gradient against central differences;
// stability with large logits (the row max is subtracted).
#include "support/reference_layers.hpp"

#include "lowsync/core/rng.hpp"
#include "lowsync/layers/layer.hpp"

#include <gtest/gtest.h>

namespace lowsync::layers {
namespace {

TEST(SoftmaxCrossEntropy, MatchesNaiveLoopAndFiniteDifferences) {
  const int n = 6, classes = 10;
  std::vector<float> logits(n * classes);
  std::vector<std::int32_t> labels(n);
  for (int i = 0; i < n * classes; ++i) logits[i] = 4.0f * (uniform01(7, i) - 0.5f);
  for (int i = 0; i < n; ++i) labels[i] = (i * 7) % classes;
  std::vector<float> d(logits.size());
  const float loss = softmax_cross_entropy(logits.data(), labels.data(), n, classes, d.data());
  std::vector<double> ld(logits.begin(), logits.end());
  EXPECT_NEAR(loss, testing::ref_cross_entropy(ld, labels, n, classes), 1e-6);
  for (std::size_t i = 0; i < ld.size(); ++i) {
    const double eps = 1e-6, keep = ld[i];
    ld[i] = keep + eps;
    const double lp = testing::ref_cross_entropy(ld, labels, n, classes);
    ld[i] = keep - eps;
    const double lm = testing::ref_cross_entropy(ld, labels, n, classes);
    ld[i] = keep;
    EXPECT_NEAR(d[i], (lp - lm) / (2 * eps), 1e-6) << i;
  }
}

TEST(SoftmaxCrossEntropy, StableForLargeLogits) {
  std::vector<float> logits = {1000.0f, 0.0f, -1000.0f, 500.0f};
  std::vector<std::int32_t> labels = {0};
  std::vector<float> d(4);
  EXPECT_NEAR(softmax_cross_entropy(logits.data(), labels.data(), 1, 4, d.data()), 0.0f, 1e-6);
  labels = {3};
  EXPECT_NEAR(softmax_cross_entropy(logits.data(), labels.data(), 1, 4, d.data()), 500.0f, 1e-3);
  EXPECT_TRUE(std::isfinite(d[2]));
}

TEST(CountCorrect, CountsArgmaxMatches) {
  std::vector<float> logits = {0.1f, 0.9f, 0.8f, 0.2f, 0.3f, 0.3f};
  std::vector<std::int32_t> labels = {1, 1, 0};
  EXPECT_EQ(count_correct(logits.data(), labels.data(), 3, 2), 2);  // ties: first index wins
}

}  // namespace
}  // namespace lowsync::layers
