// Native 16-bit storage, default plan (Layer::make_plan16): the layer's whole parameter and
// gradient tensors are staged as floats in the model-wide `stage` around the layer's fp32 plan.
// `stage` is shared by all layers, so the parameters are decoded again at the start of every
// forward and backward. Rounding points are those of the emulated path (half_plan.cpp): output,
// input gradient and parameter gradients land on the 16-bit grid.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"
#include "lowsync/tensor/half.hpp"

namespace lowsync::layers {
namespace {

// One tensor in its 16-bit home and its float copy in the stage.
struct Staged {
  std::span<std::uint16_t> bits;
  std::span<float> floats;
};

class StagedPlan16 final : public LayerPlan {
 public:
  StagedPlan16(Layer& layer, int batch, Executor& exec, const Native16Tensors& t, std::span<float> stage)
      : bf16_(t.bf16), input_size_(static_cast<std::size_t>(batch * shape_size(layer.input_shape()))),
        output_size_(static_cast<std::size_t>(batch * shape_size(layer.output_shape()))) {
    const auto specs = layer.param_specs();
    if (t.params.size() != specs.size() || t.grads.size() != specs.size())
      fail("{}: native 16-bit plan got {} params / {} grads for {} tensors", layer.name(), t.params.size(),
           t.grads.size(), specs.size());
    // Qualified: a layer overriding stage16_floats (tiled Linear) may still be staged whole here.
    const std::size_t needed = layer.Layer::stage16_floats(batch, false);
    if (stage.size() < needed) fail("{}: stage of {} floats, needs {}", layer.name(), stage.size(), needed);
    std::size_t offset = 0;
    auto take = [&](std::uint16_t* bits, const Shape& shape) {
      const auto n = static_cast<std::size_t>(shape_size(shape));
      const Staged s{{bits, n}, stage.subspan(offset, n)};
      offset += n;
      return s;
    };
    std::vector<float*> param_floats, grad_floats;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      params_.push_back(take(t.params[i], specs[i].shape));
      param_floats.push_back(params_.back().floats.data());
    }
    for (std::size_t i = 0; i < specs.size(); ++i) {
      grads_.push_back(take(t.grads[i], specs[i].shape));
      grad_floats.push_back(grads_.back().floats.data());
    }
    inner_ = layer.make_plan(batch, exec, std::move(param_floats), std::move(grad_floats));
  }

  void forward(const float* x, float* y, bool training) override {
    stage_params();
    inner_->forward(x, y, training);
    tensor::round_to_16bit({y, output_size_}, bf16_);
  }

  void backward(const float* x, const float* y, const float* dy, float* dx) override {
    stage_params();
    inner_->backward(x, y, dy, dx);
    for (const auto& g : grads_) tensor::encode_16bit(g.floats, g.bits, bf16_);
    if (dx != nullptr) tensor::round_to_16bit({dx, input_size_}, bf16_);
  }

 private:
  void stage_params() {
    for (const auto& p : params_) tensor::decode_16bit(p.bits, p.floats, bf16_);
  }

  bool bf16_;
  std::size_t input_size_, output_size_;
  std::vector<Staged> params_, grads_;
  std::unique_ptr<LayerPlan> inner_;
};

}  // namespace

std::unique_ptr<LayerPlan> Layer::make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                              std::span<float> stage) {
  return std::make_unique<StagedPlan16>(*this, batch, exec, t, stage);
}

std::size_t Layer::stage16_floats(int, bool) const {
  std::size_t floats = 0;
  for (const auto& spec : param_specs()) floats += static_cast<std::size_t>(shape_size(spec.shape));
  return 2 * floats;  // parameters, then gradients
}

}  // namespace lowsync::layers
