// Pre-LN transformer block (ALGORITHMS.md §8) composed of the layers' own plans over [B*T, C]:
//   x1 = x + proj(attn(qkv(ln1(x))));  y = x1 + fc2(gelu(fc1(ln2(x1))))
// proj and fc2 write into the residual's buffer and the skip is added there (a Kokkos kernel), so
// the block holds no copy of either branch output. Backward runs the plans in reverse; each
// residual adds the gradient that skips the branch to the one through it. One template serves
// fp32 (LayerPlan) and native bf16 storage (LayerPlan16 on the sub-layers' bf16 primitives; each
// residual sum is rounded to bf16); fp16 takes the default staged plan.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/transformer.hpp"
#include "lowsync/tensor/half.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <array>

namespace lowsync::layers {
namespace {

using Host = Kokkos::DefaultHostExecutionSpace;

// y[i] += x[i]
void add_into(float* y, const float* x, std::size_t n) {
  Kokkos::parallel_for("residual_add", Kokkos::RangePolicy<Host>(0, n), [=](const std::size_t i) { y[i] += x[i]; });
}
// bf16: y[i] = round_bf16(y[i] + x[i]), the sum in fp32
void add_into(std::uint16_t* y, const std::uint16_t* x, std::size_t n) {
  Kokkos::parallel_for("residual_add_bf16", Kokkos::RangePolicy<Host>(0, n), [=](const std::size_t i) {
    y[i] = tensor::bf16_encode(tensor::bf16_decode(y[i]) + tensor::bf16_decode(x[i]));
  });
}

template <class Elem>
struct PlanOf {
  using type = LayerPlan;
};
template <>
struct PlanOf<std::uint16_t> {
  using type = LayerPlan16;
};

// The sub-layers, in forward order (param_specs() lists their tensors in this order too).
enum Part { kLn1, kQkv, kAttn, kProj, kLn2, kFc1, kGelu, kFc2, kParts };

template <class Elem>
class BlockPlan final : public PlanOf<Elem>::type {
 public:
  using Plan = typename PlanOf<Elem>::type;
  using Buffer = lowsync::memory::TrackedBuffer<Elem>;

  BlockPlan(std::size_t rows, std::size_t width, std::array<std::unique_ptr<Plan>, kParts> plans)
      : rows_(rows), c_(width), p_(std::move(plans)), h1_("block.ln1", rows_ * c_), qkv_("block.qkv", rows_ * 3 * c_),
        att_("block.attn", rows_ * c_), x1_("block.x1", rows_ * c_), h2_("block.ln2", rows_ * c_),
        f1_("block.fc1", rows_ * 4 * c_), g_("block.gelu", rows_ * 4 * c_) {}

  void forward(const Elem* x, Elem* y, bool training) override {
    p_[kLn1]->forward(x, h1_.data(), training);
    p_[kQkv]->forward(h1_.data(), qkv_.data(), training);
    p_[kAttn]->forward(qkv_.data(), att_.data(), training);
    p_[kProj]->forward(att_.data(), x1_.data(), training);
    add_into(x1_.data(), x, rows_ * c_);
    p_[kLn2]->forward(x1_.data(), h2_.data(), training);
    p_[kFc1]->forward(h2_.data(), f1_.data(), training);
    p_[kGelu]->forward(f1_.data(), g_.data(), training);
    p_[kFc2]->forward(g_.data(), y, training);
    add_into(y, x1_.data(), rows_ * c_);
  }

  // Reads the activations (and the LayerNorm / softmax state) of the last forward of this plan.
  // proj and fc2 have no ReLU, so their backward never reads the y passed to them.
  void backward(const Elem* x, const Elem* y, const Elem* dy, Elem* dx) override {
    if (dg_.size() == 0) {  // gradient buffers: only plans that train pay for them
      dg_ = Buffer("block.dgelu", rows_ * 4 * c_);
      dqkv_ = Buffer("block.dqkv", rows_ * 3 * c_);
      dh_ = Buffer("block.dln", rows_ * c_);
      dx1_ = Buffer("block.dx1", rows_ * c_);
      datt_ = Buffer("block.dattn", rows_ * c_);
    }
    if (dx == nullptr) {  // LayerNorm 1 still runs for its parameter gradients
      if (dx_scratch_.size() == 0) dx_scratch_ = Buffer("block.dx", rows_ * c_);
      dx = dx_scratch_.data();
    }
    // second residual: d x1 = dy + ln2'(fc1'(gelu'(fc2'(dy))))
    p_[kFc2]->backward(g_.data(), y, dy, dg_.data());
    p_[kGelu]->backward(f1_.data(), g_.data(), dg_.data(), dg_.data());
    p_[kFc1]->backward(h2_.data(), f1_.data(), dg_.data(), dh_.data());
    p_[kLn2]->backward(x1_.data(), h2_.data(), dh_.data(), dx1_.data());
    add_into(dx1_.data(), dy, rows_ * c_);
    // first residual: dx = d x1 + ln1'(qkv'(attn'(proj'(d x1))))
    p_[kProj]->backward(att_.data(), x1_.data(), dx1_.data(), datt_.data());
    p_[kAttn]->backward(qkv_.data(), att_.data(), datt_.data(), dqkv_.data());
    p_[kQkv]->backward(h1_.data(), qkv_.data(), dqkv_.data(), dh_.data());
    p_[kLn1]->backward(x, h1_.data(), dh_.data(), dx);
    add_into(dx, dx1_.data(), rows_ * c_);
  }

 private:
  std::size_t rows_, c_;
  std::array<std::unique_ptr<Plan>, kParts> p_;
  // [B*T, C] h1, att, x1, h2; [B*T, 3C] qkv; [B*T, 4C] f1, g (forward state kept for backward)
  Buffer h1_, qkv_, att_, x1_, h2_, f1_, g_;
  Buffer dg_, dqkv_, dh_, dx1_, datt_, dx_scratch_;
};

class TransformerBlock final : public Layer {
 public:
  TransformerBlock(std::int64_t ctx, std::int64_t width, std::int64_t heads) : ctx_(ctx), width_(width) {
    parts_[kLn1] = make_layernorm(ctx, width);
    parts_[kQkv] = make_linear_rows(ctx, width, 3 * width, true);
    parts_[kAttn] = make_causal_attention(ctx, width, heads);
    parts_[kProj] = make_linear_rows(ctx, width, width, true);
    parts_[kLn2] = make_layernorm(ctx, width);
    parts_[kFc1] = make_linear_rows(ctx, width, 4 * width, true);
    parts_[kGelu] = make_gelu({ctx, 4 * width});
    parts_[kFc2] = make_linear_rows(ctx, 4 * width, width, true);
  }
  std::string name() const override { return "block"; }
  Shape input_shape() const override { return {ctx_, width_}; }
  Shape output_shape() const override { return {ctx_, width_}; }
  std::vector<ParamSpec> param_specs() const override {
    static constexpr std::array<const char*, kParts> kNames{"ln1", "qkv", "attn", "proj", "ln2", "fc1", "gelu", "fc2"};
    std::vector<ParamSpec> specs;
    for (int k = 0; k < kParts; ++k)
      for (auto s : parts_[k]->param_specs()) {
        s.name = std::string(kNames[k]) + "." + s.name;
        specs.push_back(std::move(s));
      }
    return specs;
  }
  bool backward_reads_forward_state() const override { return true; }

  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*> p, std::vector<float*> g) override {
    std::array<std::unique_ptr<LayerPlan>, kParts> plans;
    std::size_t first = 0;
    for (int k = 0; k < kParts; ++k) {
      const std::size_t n = parts_[k]->param_specs().size();
      plans[k] = parts_[k]->make_plan(batch, exec, {p.begin() + first, p.begin() + first + n},
                                      {g.begin() + first, g.begin() + first + n});
      first += n;
    }
    return std::make_unique<BlockPlan<float>>(rows(batch), width_, std::move(plans));
  }

  // bf16 on oneDNN bf16 primitives: every sub-layer's own native plan on u16 activations. fp16
  // (or bf16 primitives refused): the default staging of the whole block in fp32.
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    if (!(t.bf16 && t.bf16_primitives)) return Layer::make_plan16(batch, exec, t, stage);
    std::array<std::unique_ptr<LayerPlan16>, kParts> plans;
    std::size_t first = 0;
    for (int k = 0; k < kParts; ++k) {
      const std::size_t n = parts_[k]->param_specs().size();
      Native16Tensors sub = t;
      sub.params.assign(t.params.begin() + first, t.params.begin() + first + n);
      sub.grads.assign(t.grads.begin() + first, t.grads.begin() + first + n);
      plans[k] = parts_[k]->make_plan16(batch, exec, sub, stage);
      first += n;
    }
    return std::make_unique<BlockPlan<std::uint16_t>>(rows(batch), width_, std::move(plans));
  }
  std::size_t stage16_floats(int batch, bool bf16_primitives) const override {
    if (!bf16_primitives) return Layer::stage16_floats(batch, false);
    std::size_t floats = 0;  // the sub-layers stage one at a time
    for (const auto& part : parts_) floats = std::max(floats, part->stage16_floats(batch, true));
    return floats;
  }

  double flops_per_sample() const override {
    double f = 0.0;
    for (const auto& part : parts_) f += part->flops_per_sample();
    return f;
  }

 private:
  std::size_t rows(int batch) const { return static_cast<std::size_t>(batch * ctx_); }

  std::int64_t ctx_, width_;
  std::array<std::unique_ptr<Layer>, kParts> parts_;
};

}  // namespace

std::unique_ptr<Layer> make_transformer_block(std::int64_t ctx, std::int64_t width, std::int64_t heads) {
  if (ctx <= 0 || width <= 0 || heads <= 0 || width % heads != 0)
    fail("transformer block needs positive sizes and width divisible by heads, got T {} C {} H {}", ctx, width, heads);
  return std::make_unique<TransformerBlock>(ctx, width, heads);
}

}  // namespace lowsync::layers
