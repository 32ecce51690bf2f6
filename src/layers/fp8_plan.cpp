// FP8 training as fake quantization (ALGORITHMS.md §1 "Fake quantization"), wrapped around a
// GEMM/conv plan: forward runs the primitive on E4M3 fake-quantized weights and inputs, backward
// on the E5M2 fake-quantized output gradient; the straight-through estimator passes gradients to
// the fp32 shadow weights (the flat master parameters) and inputs, zero where the forward clamped.
// Scales are per tensor, per call: amax / Fmax.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"
#include "lowsync/tensor/fp8.hpp"

#include <cmath>

namespace lowsync::layers {
namespace {

using tensor::Fp8Format;

// amax over the finite values (1 when none): a non-finite input is not refused here but passes
// through fake_quantize as NaN, so a diverging step surfaces in the loss, which all ranks check
// at the same point, instead of throwing on one rank.
// The scale is nudged up by an ulp when amax / scale rounds above Fmax, so that the largest
// element is not counted as clamped (which would zero its gradient in the STE).
float finite_scale(std::span<const float> x, Fp8Format f) {
  float amax = 0.0f;
  for (float v : x)
    if (std::isfinite(v)) amax = std::max(amax, std::fabs(v));
  float scale = tensor::fp8_scale_from_amax(amax, f);
  while (amax / scale > tensor::fp8_max(f)) scale = std::nextafter(scale, INFINITY);
  return scale;
}

class Fp8Plan final : public LayerPlan {
 public:
  Fp8Plan(std::unique_ptr<LayerPlan> inner, std::size_t input_size, std::size_t output_size, Fp8Tensors w)
      : inner_(std::move(inner)), w_(w), x_q_("fp8.input_q", input_size), dy_q_("fp8.dy_q", output_size) {}

  void forward(const float* x, float* y, bool training) override {
    w_scale_ = finite_scale(w_.master, Fp8Format::e4m3);
    tensor::fake_quantize(w_.master, w_.quantized, Fp8Format::e4m3, w_scale_);
    const std::span<const float> xs(x, x_q_.size());
    x_scale_ = finite_scale(xs, Fp8Format::e4m3);
    tensor::fake_quantize(xs, x_q_.span(), Fp8Format::e4m3, x_scale_);
    inner_->forward(x_q_.data(), y, training);
  }

  void backward(const float* x, const float* y, const float* dy, float* dx) override {
    const std::span<const float> dys(dy, dy_q_.size());
    tensor::fake_quantize(dys, dy_q_.span(), Fp8Format::e5m2, finite_scale(dys, Fp8Format::e5m2));
    // The inner plan sees the quantized input and weights of the forward (its weight pointer is
    // w_.quantized), so dW = dy_q^T x_q and dx = dy_q W_q.
    inner_->backward(x_q_.data(), y, dy_q_.data(), dx);
    tensor::ste_backward(w_.master, w_scale_, Fp8Format::e4m3, w_.grad);
    if (dx != nullptr)
      tensor::ste_backward({x, x_q_.size()}, x_scale_, Fp8Format::e4m3, {dx, x_q_.size()});
  }

 private:
  std::unique_ptr<LayerPlan> inner_;
  Fp8Tensors w_;
  memory::TrackedBuffer<float> x_q_;   // [N, in...] the forward's fake-quantized input
  memory::TrackedBuffer<float> dy_q_;  // [N, out...] the fake-quantized output gradient
  float w_scale_ = 1.0f, x_scale_ = 1.0f;
};

}  // namespace

std::unique_ptr<LayerPlan> make_fp8_plan(std::unique_ptr<LayerPlan> inner, std::size_t input_size,
                                         std::size_t output_size, Fp8Tensors weight) {
  if (weight.master.size() != weight.quantized.size() || weight.master.size() != weight.grad.size())
    fail("fp8 plan: weight {} / quantized {} / grad {} sizes differ", weight.master.size(), weight.quantized.size(),
         weight.grad.size());
  return std::make_unique<Fp8Plan>(std::move(inner), input_size, output_size, weight);
}

}  // namespace lowsync::layers
