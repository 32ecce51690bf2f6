// Model: parameter layout of the reference architectures, seeded initialisation, and the whole
// forward_backward gradient against central differences of forward_loss on sampled coordinates.
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace lowsync::model {
namespace {

TEST(Model, MlpAndCnnHaveTheReferenceShapes) {
  Model mlp("mlp", 4, 1);
  EXPECT_EQ(mlp.num_params(), 784u * 512 + 512 + 512u * 256 + 256 + 256u * 10 + 10);
  EXPECT_EQ(mlp.param_infos().front().name, "fc1.weight");
  EXPECT_EQ(mlp.param_infos().front().shape, (std::vector<std::int64_t>{512, 784}));
  Model cnn("cnn", 4, 1);
  EXPECT_EQ(cnn.num_params(), 32u * 25 + 32 + 64u * 32 * 25 + 64 + 1024u * 512 + 512 + 512u * 10 + 10);
  EXPECT_EQ(cnn.param_infos()[2].shape, (std::vector<std::int64_t>{64, 32, 5, 5}));
  std::size_t expected_offset = 0;
  for (const auto& p : cnn.param_infos()) {
    EXPECT_EQ(p.offset, expected_offset) << p.name;
    expected_offset += p.count;
  }
  EXPECT_THROW(Model("resnet", 4, 1), Error);
  const auto tensors = cnn.param_tensors();
  ASSERT_EQ(tensors.size(), cnn.param_infos().size());
  EXPECT_EQ(tensors[2].name, "conv2.weight");
  EXPECT_EQ(tensors[2].data(), cnn.params().data() + cnn.param_infos()[2].offset);
  EXPECT_EQ(cnn.grad_tensors()[3].data(), cnn.grads().data() + cnn.param_infos()[3].offset);
}

TEST(Model, InitialisationIsSeededAndBounded) {
  Model a("mlp", 2, 7), b("mlp", 2, 7), c("mlp", 2, 8);
  EXPECT_TRUE(std::equal(a.params().begin(), a.params().end(), b.params().begin()));
  EXPECT_FALSE(std::equal(a.params().begin(), a.params().end(), c.params().begin()));
  const float bound = 1.0f / std::sqrt(784.0f);
  for (std::size_t i = 0; i < 784 * 512; ++i) ASSERT_LE(std::abs(a.params()[i]), bound);
}

void check_model_gradient(const std::string& arch) {
  const int n = 3;
  Model m(arch, n, 3);
  std::vector<float> images(n * 784);
  std::vector<std::int32_t> labels = {1, 4, 9};
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = uniform01(5, i);
  const data::Batch batch{images.data(), labels.data(), n};
  m.forward_backward(batch);
  std::vector<float> grads(m.grads().begin(), m.grads().end());
  auto params = m.params();
  int checked = 0;
  for (const auto& info : m.param_infos()) {
    for (int s = 0; s < 6; ++s) {
      const std::size_t i = info.offset + (random_bits(9, checked++) % info.count);
      const float keep = params[i], eps = 1e-2f;
      params[i] = keep + eps;
      const double lp = m.forward_loss(batch);
      params[i] = keep - eps;
      const double lm = m.forward_loss(batch);
      params[i] = keep;
      const double fd = (lp - lm) / (2.0 * eps);
      EXPECT_NEAR(grads[i], fd, 2e-3 + 0.05 * std::abs(fd)) << info.name << " index " << i;
    }
  }
}

TEST(Model, MlpGradientMatchesFiniteDifferences) { check_model_gradient("mlp"); }
TEST(Model, CnnGradientMatchesFiniteDifferences) { check_model_gradient("cnn"); }

TEST(Model, EvaluateCountsAccuracyOverChunks) {
  Model m("mlp", 2, 1);
  m.set_eval_batch(7);
  std::vector<float> images(20 * 784, 0.5f);
  std::vector<std::int32_t> labels(20, 0);
  const auto r = m.evaluate(images.data(), labels.data(), 20);
  EXPECT_EQ(r.samples, 20);
  // All inputs are equal, so all predictions are equal: accuracy is 0 or 1.
  EXPECT_TRUE(r.accuracy == 0.0 || r.accuracy == 1.0);
  EXPECT_NEAR(r.loss, m.forward_loss({images.data(), labels.data(), 2}), 1e-5);
}

}  // namespace
}  // namespace lowsync::model
