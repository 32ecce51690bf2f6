// Native 16-bit storage, default plan (Layer::make_plan16): the layer's whole parameter and
// gradient tensors are staged as floats in the model-wide `stage` around the layer's fp32 plan,
// and the batch runs through it in chunks whose activations are decoded into the stage too.
// `stage` is shared by all layers, so the parameters are decoded again at the start of every
// forward and backward. Rounding points are those of the emulated path (half_plan.cpp): output,
// input gradient and parameter gradients land on the 16-bit grid (nearest-even).
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>

namespace lowsync::layers {
namespace {

// One tensor in its 16-bit home and its float copy in the stage.
struct Staged {
  std::span<std::uint16_t> bits;
  std::span<float> floats;
};

// Samples per chunk: as many as fit kStage16ChunkFloats input + output values, at least one.
int chunk_samples(const Layer& layer, int batch) {
  const auto per_sample = static_cast<std::size_t>(shape_size(layer.input_shape()) + shape_size(layer.output_shape()));
  return static_cast<int>(std::clamp<std::size_t>(kStage16ChunkFloats / per_sample, 1, static_cast<std::size_t>(batch)));
}

std::size_t param_floats(const Layer& layer) {
  std::size_t floats = 0;
  for (const auto& spec : layer.param_specs()) floats += static_cast<std::size_t>(shape_size(spec.shape));
  return floats;
}

class StagedPlan16 final : public LayerPlan16 {
 public:
  StagedPlan16(Layer& layer, int batch, Executor& exec, const Native16Tensors& t, std::span<float> stage)
      : bf16_(t.bf16), batch_(batch), chunk_(chunk_samples(layer, batch)),
        in_(static_cast<std::size_t>(shape_size(layer.input_shape()))),
        out_(static_cast<std::size_t>(shape_size(layer.output_shape()))),
        redo_forward_(layer.backward_reads_forward_state() && chunk_ < batch) {
    const auto specs = layer.param_specs();
    if (t.params.size() != specs.size() || t.grads.size() != specs.size())
      fail("{}: native 16-bit plan got {} params / {} grads for {} tensors", layer.name(), t.params.size(),
           t.grads.size(), specs.size());
    // Qualified: a layer overriding stage16_floats (tiled Linear) may still be staged whole here.
    const std::size_t needed = layer.Layer::stage16_floats(batch, false);
    if (stage.size() < needed) fail("{}: stage of {} floats, needs {}", layer.name(), stage.size(), needed);
    std::size_t offset = 0;
    auto take = [&](std::size_t n) {
      const auto s = stage.subspan(offset, n);
      offset += n;
      return s;
    };
    std::vector<float*> param_floats, grad_floats;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const auto n = static_cast<std::size_t>(shape_size(specs[i].shape));
      params_.push_back({{t.params[i], n}, take(n)});
      param_floats.push_back(params_.back().floats.data());
    }
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const auto n = static_cast<std::size_t>(shape_size(specs[i].shape));
      grads_.push_back({{t.grads[i], n}, take(n)});
      grad_floats.push_back(grads_.back().floats.data());
    }
    // Several chunks: their parameter gradients are summed here in fp32, rounded once at the end.
    if (chunk_ < batch)
      for (const auto& g : grads_) sums_.push_back(take(g.floats.size()));
    const auto chunk = static_cast<std::size_t>(chunk_);
    x_ = take(chunk * in_), dx_ = take(chunk * in_), y_ = take(chunk * out_), dy_ = take(chunk * out_);
    full_ = layer.make_plan(chunk_, exec, param_floats, grad_floats);
    if (batch % chunk_ != 0) tail_ = layer.make_plan(batch % chunk_, exec, param_floats, grad_floats);
  }

  void forward(const std::uint16_t* x, std::uint16_t* y, bool training) override {
    stage_params();
    for (int first = 0; first < batch_; first += chunk_) {
      const Chunk c = chunk_at(first);
      tensor::decode_16bit({x + c.first * in_, c.size * in_}, x_.first(c.size * in_), bf16_);
      c.plan->forward(x_.data(), y_.data(), training);
      tensor::encode_16bit(y_.first(c.size * out_), {y + c.first * out_, c.size * out_}, bf16_);
    }
  }

  void backward(const std::uint16_t* x, const std::uint16_t* y, const std::uint16_t* dy, std::uint16_t* dx) override {
    stage_params();
    for (int first = 0; first < batch_; first += chunk_) {
      const Chunk c = chunk_at(first);
      tensor::decode_16bit({x + c.first * in_, c.size * in_}, x_.first(c.size * in_), bf16_);
      if (redo_forward_)  // the plan's forward state now belongs to the last chunk
        c.plan->forward(x_.data(), y_.data(), true);
      else
        tensor::decode_16bit({y + c.first * out_, c.size * out_}, y_.first(c.size * out_), bf16_);
      tensor::decode_16bit({dy + c.first * out_, c.size * out_}, dy_.first(c.size * out_), bf16_);
      c.plan->backward(x_.data(), y_.data(), dy_.data(), dx != nullptr ? dx_.data() : nullptr);
      for (std::size_t i = 0; i < sums_.size(); ++i) {
        const auto g = grads_[i].floats;
        if (first == 0)
          std::copy(g.begin(), g.end(), sums_[i].begin());
        else
          for (std::size_t k = 0; k < g.size(); ++k) sums_[i][k] += g[k];
      }
      if (dx != nullptr) tensor::encode_16bit(dx_.first(c.size * in_), {dx + c.first * in_, c.size * in_}, bf16_);
    }
    for (std::size_t i = 0; i < grads_.size(); ++i)
      tensor::encode_16bit(sums_.empty() ? grads_[i].floats : sums_[i], grads_[i].bits, bf16_);
  }

 private:
  struct Chunk {
    std::size_t first, size;
    LayerPlan* plan;
  };
  Chunk chunk_at(int first) const {
    const int size = std::min(chunk_, batch_ - first);
    return {static_cast<std::size_t>(first), static_cast<std::size_t>(size), size == chunk_ ? full_.get() : tail_.get()};
  }
  void stage_params() {
    for (const auto& p : params_) tensor::decode_16bit(p.bits, p.floats, bf16_);
  }

  bool bf16_;
  int batch_, chunk_;
  std::size_t in_, out_;  // values per sample
  bool redo_forward_;
  std::vector<Staged> params_, grads_;
  std::vector<std::span<float>> sums_;  // per gradient tensor, when the batch takes several chunks
  std::span<float> x_, dx_, y_, dy_;    // one chunk's activations
  std::unique_ptr<LayerPlan> full_, tail_;  // plans for chunk_ and batch % chunk_ samples
};

}  // namespace

std::unique_ptr<LayerPlan16> Layer::make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                                std::span<float> stage) {
  return std::make_unique<StagedPlan16>(*this, batch, exec, t, stage);
}

std::size_t Layer::stage16_floats(int batch, bool) const {
  const std::size_t params = param_floats(*this);
  const int chunk = chunk_samples(*this, batch);
  const auto per_sample = static_cast<std::size_t>(shape_size(input_shape()) + shape_size(output_shape()));
  // parameters, gradients, the gradient sums of several chunks, one chunk's x, dx, y, dy
  return 2 * params + (chunk < batch ? params : 0) + 2 * static_cast<std::size_t>(chunk) * per_sample;
}

}  // namespace lowsync::layers
