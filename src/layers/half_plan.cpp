// Standalone 16-bit compute, emulated (precision.compute = bf16 | fp16; ALGORITHMS.md §3): the
// wrapped plan computes in fp32 (oneDNN f32 primitives; sums inside kernels stay fp32) and every
// value it stores — output activation, input gradient, parameter gradients — is rounded to the
// 16-bit grid (nearest-even). Storage stays in float buffers: the numerics are those of 16-bit
// storage, the memory is not (README "Precision").
#include "lowsync/layers/layer.hpp"
#include "lowsync/tensor/half.hpp"

namespace lowsync::layers {
namespace {

class HalfPlan final : public LayerPlan {
 public:
  HalfPlan(std::unique_ptr<LayerPlan> inner, std::size_t input_size, std::size_t output_size, bool bf16,
           std::vector<std::span<float>> grads)
      : inner_(std::move(inner)), input_size_(input_size), output_size_(output_size), bf16_(bf16),
        grads_(std::move(grads)) {}

  void forward(const float* x, float* y, bool training) override {
    inner_->forward(x, y, training);
    tensor::round_to_16bit({y, output_size_}, bf16_);
  }

  void backward(const float* x, const float* y, const float* dy, float* dx) override {
    inner_->backward(x, y, dy, dx);
    if (dx != nullptr) tensor::round_to_16bit({dx, input_size_}, bf16_);
    for (auto g : grads_) tensor::round_to_16bit(g, bf16_);
  }

 private:
  std::unique_ptr<LayerPlan> inner_;
  std::size_t input_size_, output_size_;
  bool bf16_;
  std::vector<std::span<float>> grads_;
};

}  // namespace

std::unique_ptr<LayerPlan> make_half_plan(std::unique_ptr<LayerPlan> inner, std::size_t input_size,
                                          std::size_t output_size, bool bf16, std::vector<std::span<float>> grads) {
  return std::make_unique<HalfPlan>(std::move(inner), input_size, output_size, bf16, std::move(grads));
}

}  // namespace lowsync::layers
