// Native 16-bit storage (Storage::native16): the same initial 16-bit values as float storage,
// the same gradients up to the fp32 summation order of the staged kernels, u16 buffers that are
// 2 bytes per value, and no float parameter view to misuse.
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/tensor/half.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include <gtest/gtest.h>

#include <cmath>

namespace lowsync::model {
namespace {

float decode(std::uint16_t h, bool bf16) { return bf16 ? tensor::bf16_decode(h) : tensor::fp16_decode(h); }

void compare_with_float_storage(const std::string& arch, Compute compute) {
  const bool bf16 = compute == Compute::bf16;
  const int n = 8;
  Model emulated(arch, n, 5, compute, Storage::float32);
  Model native(arch, n, 5, compute, Storage::native16);
  ASSERT_EQ(native.num_params(), emulated.num_params());
  ASSERT_EQ(native.params16().size(), emulated.num_params());
  for (std::size_t i = 0; i < native.num_params(); ++i)
    ASSERT_EQ(decode(native.params16()[i], bf16), emulated.params()[i]) << arch << " param " << i;

  std::vector<float> images(static_cast<std::size_t>(n) * 784);
  std::vector<std::int32_t> labels(n);
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = uniform01(6, i);
  for (int i = 0; i < n; ++i) labels[i] = i % 10;
  const data::Batch batch{images.data(), labels.data(), n};
  const float loss_e = emulated.forward_backward(batch);
  const float loss_n = native.forward_backward(batch);
  EXPECT_NEAR(loss_n, loss_e, 2e-2 * std::abs(loss_e)) << arch;
  // Per tensor: relative L2 distance of the gradients (one ulp of a 16-bit activation can move
  // a few gradients by an ulp or two; a wrong kernel moves them by O(1)).
  for (const auto& info : native.param_infos()) {
    double diff = 0.0, norm = 0.0;
    for (std::size_t i = info.offset; i < info.offset + info.count; ++i) {
      const double g = emulated.grads()[i], h = decode(native.grads16()[i], bf16);
      diff += (g - h) * (g - h);
      norm += g * g;
    }
    EXPECT_LT(std::sqrt(diff), (bf16 ? 3e-2 : 5e-3) * std::sqrt(norm) + 1e-12) << arch << " " << info.name;
  }
  const auto eval_e = emulated.evaluate(images.data(), labels.data(), n);
  const auto eval_n = native.evaluate(images.data(), labels.data(), n);
  EXPECT_NEAR(eval_n.loss, eval_e.loss, 2e-2 * std::abs(eval_e.loss)) << arch;
}

TEST(Native16, MlpMatchesFloatStorage) {
  compare_with_float_storage("mlp", Compute::bf16);
  compare_with_float_storage("mlp", Compute::fp16);
}

TEST(Native16, CnnMatchesFloatStorage) {
  compare_with_float_storage("cnn", Compute::bf16);
  compare_with_float_storage("cnn", Compute::fp16);
}

// Activations and their gradients are u16 too: half the float buffers, plus the fp32 logits and
// their gradient the loss reads and writes ([N, 10] each).
TEST(Native16, ActivationsTakeTwoBytesPerValue) {
  for (const char* arch : {"mlp", "cnn"}) {
    const int n = 16;
    Model emulated(arch, n, 1, Compute::bf16, Storage::float32);
    Model native(arch, n, 1, Compute::bf16, Storage::native16);
    EXPECT_EQ(native.activation_bytes(), emulated.activation_bytes() / 2 + 2 * n * 10 * sizeof(float)) << arch;
  }
}

TEST(Native16, NoFloatViewsAndSmallStaging) {
  Model native("mlp", 4, 1, Compute::bf16, Storage::native16);
  EXPECT_THROW(native.params(), Error);
  EXPECT_THROW(native.grads(), Error);
  EXPECT_THROW(native.param_tensors(), Error);
  // bf16 Linear layers run oneDNN bf16 matmuls on the u16 store in place: no staging at all.
  if (dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core) {
    EXPECT_EQ(native.stage16_bytes(), 0u);
  }
  // fp16: the tiled staging (one 64-row tile of fc1's weight and its gradient, in fp32) is under a
  // quarter of the 16-bit parameters + gradients (4 bytes per parameter).
  Model native_fp16("mlp", 4, 1, Compute::fp16, Storage::native16);
  EXPECT_GT(native_fp16.stage16_bytes(), 0u);
  EXPECT_LT(native_fp16.stage16_bytes(), native_fp16.num_params() * 4 / 4);
  Model float_storage("mlp", 4, 1, Compute::bf16);
  EXPECT_THROW(float_storage.params16(), Error);
  EXPECT_EQ(float_storage.stage16_bytes(), 0u);
  EXPECT_THROW(Model("mlp", 4, 1, Compute::fp32, Storage::native16), Error);
}

}  // namespace
}  // namespace lowsync::model
