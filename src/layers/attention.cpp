// Causal multi-head self-attention (ALGORITHMS.md §8) on oneDNN batched matmuls over [B, H, T, *]
// views of the qkv rows (strided memory descriptors: no copies, no transposes) and oneDNN softmax:
//   forward:  S = scale Q K^T (an output scale of the matmul), then -inf above the diagonal
//             (the causal mask, written in place), P = softmax(S) in place, O = P V.
//   backward: dP = dO V^T, dV = P^T dO, dS = softmax_backward(P, dP) in place,
//             dQ = scale dS K, dK = scale dS^T Q.
// Masked probabilities are exactly 0, so positions after t add exact zeros to row t: causality
// holds bitwise. The same primitives run on fp32 (LayerPlan) or on bf16 activations in place
// (LayerPlan16, native bf16 storage; fp32 accumulation inside the primitives).
#include "lowsync/core/error.hpp"
#include "lowsync/layers/transformer.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using dims = memory::dims;

// The primitives and buffers for one batch size and data type (f32 or bf16); pointers are untyped.
class AttentionCore {
 public:
  AttentionCore(std::int64_t batch, std::int64_t ctx, std::int64_t width, std::int64_t heads, Executor& exec, dt type)
      : exec_(exec), width_bytes_(width * static_cast<std::int64_t>(memory::data_type_size(type))),
        scores_bytes_(static_cast<std::size_t>(batch * heads * ctx * ctx) * memory::data_type_size(type)),
        probs_("attention.probs", scores_bytes_), ctx_(ctx) {
    auto& eng = exec.engine();
    const std::int64_t b = batch, h = heads, t = ctx, d = width / heads, c = width;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));

    // Views of one third of the qkv rows [B, T, 3C] (or of its gradient) as [B, H, T, D], and its
    // transpose [B, H, D, T]; views of the attention output rows [B, T, C].
    const memory::desc third_md({b, h, t, d}, type, dims{t * 3 * c, d, 3 * c, 1});
    const memory::desc third_t_md({b, h, d, t}, type, dims{t * 3 * c, d, 1, 3 * c});
    const memory::desc out_md({b, h, t, d}, type, dims{t * c, d, c, 1});
    const memory::desc scores_md({b, h, t, t}, type, tag::abcd);
    const memory::desc scores_t_md({b, h, t, t}, type, dims{h * t * t, t * t, 1, t});

    // The causal mask is written after the matmul, not as its binary post-op: with that post-op
    // oneDNN 2.6 falls back to its reference matmul (ref:any, ~100x slower: 0.94 s of a 3.8 s step).
    dnnl::primitive_attr scaled;
    scaled.set_output_scales(0, {scale});
    const dnnl::matmul::primitive_desc qk_pd({third_md, third_t_md, scores_md}, scaled, eng);
    qk_ = dnnl::matmul(qk_pd);
    const dnnl::softmax_forward::primitive_desc sm_fwd_pd({dnnl::prop_kind::forward_training, scores_md, 3}, eng);
    softmax_fwd_ = dnnl::softmax_forward(sm_fwd_pd);
    softmax_bwd_ = dnnl::softmax_backward(dnnl::softmax_backward::primitive_desc({scores_md, scores_md, 3}, eng, sm_fwd_pd));
    pv_ = dnnl::matmul(dnnl::matmul::primitive_desc({scores_md, third_md, out_md}, eng));
    // backward
    dp_ = dnnl::matmul(dnnl::matmul::primitive_desc({out_md, third_t_md, scores_md}, eng));
    dv_ = dnnl::matmul(dnnl::matmul::primitive_desc({scores_t_md, out_md, third_md}, eng));
    dq_ = dnnl::matmul(dnnl::matmul::primitive_desc({scores_md, third_md, third_md}, scaled, eng));
    dk_ = dnnl::matmul(dnnl::matmul::primitive_desc({scores_t_md, third_md, third_md}, scaled, eng));

    q_ = memory(third_md, eng, nullptr), k_ = memory(third_md, eng, nullptr), v_ = memory(third_md, eng, nullptr);
    k_t_ = memory(third_t_md, eng, nullptr), v_t_ = memory(third_t_md, eng, nullptr);
    dq_mem_ = memory(third_md, eng, nullptr), dk_mem_ = memory(third_md, eng, nullptr), dv_mem_ = memory(third_md, eng, nullptr);
    o_ = memory(out_md, eng, nullptr), do_ = memory(out_md, eng, nullptr);
    p_ = memory(scores_md, eng, probs_.data());
    p_t_ = memory(scores_t_md, eng, probs_.data());
    qk_args_ = {{DNNL_ARG_SRC, q_}, {DNNL_ARG_WEIGHTS, k_t_}, {DNNL_ARG_DST, p_}};
    softmax_fwd_args_ = {{DNNL_ARG_SRC, p_}, {DNNL_ARG_DST, p_}};
    pv_args_ = {{DNNL_ARG_SRC, p_}, {DNNL_ARG_WEIGHTS, v_}, {DNNL_ARG_DST, o_}};
    dv_args_ = {{DNNL_ARG_SRC, p_t_}, {DNNL_ARG_WEIGHTS, do_}, {DNNL_ARG_DST, dv_mem_}};
  }

  void forward(const void* x, void* y) {
    set_qkv(x);
    o_.set_data_handle(y);
    exec_.run(qk_, qk_args_);
    apply_causal_mask();
    exec_.run(softmax_fwd_, softmax_fwd_args_);
    exec_.run(pv_, pv_args_);
  }

  // Reads P from the last forward of this plan (backward_reads_forward_state).
  void backward(const void* x, const void* dy, void* dx) {
    if (dscores_.size() == 0) {  // forward-only plans never pay for it
      dscores_ = lowsync::memory::TrackedBuffer<std::uint8_t>("attention.dscores", scores_bytes_);
      auto& eng = exec_.engine();
      ds_ = memory(p_.get_desc(), eng, dscores_.data());
      ds_t_ = memory(p_t_.get_desc(), eng, dscores_.data());
      dp_args_ = {{DNNL_ARG_SRC, do_}, {DNNL_ARG_WEIGHTS, v_t_}, {DNNL_ARG_DST, ds_}};
      softmax_bwd_args_ = {{DNNL_ARG_DST, p_}, {DNNL_ARG_DIFF_DST, ds_}, {DNNL_ARG_DIFF_SRC, ds_}};
      dq_args_ = {{DNNL_ARG_SRC, ds_}, {DNNL_ARG_WEIGHTS, k_}, {DNNL_ARG_DST, dq_mem_}};
      dk_args_ = {{DNNL_ARG_SRC, ds_t_}, {DNNL_ARG_WEIGHTS, q_}, {DNNL_ARG_DST, dk_mem_}};
    }
    set_qkv(x);
    auto* d = static_cast<std::uint8_t*>(dx);
    do_.set_data_handle(const_cast<void*>(dy));
    dq_mem_.set_data_handle(d);
    dk_mem_.set_data_handle(d + width_bytes_);
    dv_mem_.set_data_handle(d + 2 * width_bytes_);
    exec_.run(dp_, dp_args_);
    exec_.run(dv_, dv_args_);
    exec_.run(softmax_bwd_, softmax_bwd_args_);
    exec_.run(dq_, dq_args_);
    exec_.run(dk_, dk_args_);
  }

 private:
  // Scores above the diagonal (key after query) become -inf, so softmax gives them 0.
  void apply_causal_mask() {
    const std::size_t elem = memory::data_type_size(p_.get_desc().data_type());
    const std::int64_t t = ctx_, matrices = static_cast<std::int64_t>(scores_bytes_ / elem) / (t * t);
    if (elem == 4) {
      fill_upper(static_cast<float*>(p_.get_data_handle()), matrices, t, -std::numeric_limits<float>::infinity());
    } else {  // bf16 0xFF80 and fp16 0xFC00 are their formats' -inf
      const std::uint16_t neg_inf = p_.get_desc().data_type() == dt::bf16 ? 0xFF80u : 0xFC00u;
      fill_upper(static_cast<std::uint16_t*>(p_.get_data_handle()), matrices, t, neg_inf);
    }
  }
  template <class T>
  static void fill_upper(T* scores, std::int64_t matrices, std::int64_t t, T value) {
    for (std::int64_t m = 0; m < matrices; ++m)
      for (std::int64_t i = 0; i < t; ++i) std::fill(scores + (m * t + i) * t + i + 1, scores + (m * t + i + 1) * t, value);
  }

  void set_qkv(const void* x) {
    auto* base = static_cast<std::uint8_t*>(const_cast<void*>(x));
    q_.set_data_handle(base);
    k_.set_data_handle(base + width_bytes_);
    k_t_.set_data_handle(base + width_bytes_);
    v_.set_data_handle(base + 2 * width_bytes_);
    v_t_.set_data_handle(base + 2 * width_bytes_);
  }

  Executor& exec_;
  std::int64_t width_bytes_;  // byte offset of k (and 2x: of v) in a qkv row
  std::size_t scores_bytes_;
  lowsync::memory::TrackedBuffer<std::uint8_t> probs_;  // [B, H, T, T] P of the last forward
  std::int64_t ctx_;                                    // T
  lowsync::memory::TrackedBuffer<std::uint8_t> dscores_;  // [B, H, T, T] dP, then dS in place
  memory q_, k_, v_, k_t_, v_t_, o_, do_, dq_mem_, dk_mem_, dv_mem_, p_, p_t_, ds_, ds_t_;
  dnnl::primitive qk_, softmax_fwd_, softmax_bwd_, pv_, dp_, dv_, dq_, dk_;
  std::unordered_map<int, memory> qk_args_, softmax_fwd_args_, pv_args_, dp_args_, dv_args_, softmax_bwd_args_,
      dq_args_, dk_args_;
};

class AttentionPlan final : public LayerPlan {
 public:
  AttentionPlan(std::int64_t batch, std::int64_t ctx, std::int64_t width, std::int64_t heads, Executor& exec)
      : core_(batch, ctx, width, heads, exec, dt::f32) {}
  void forward(const float* x, float* y, bool) override { core_.forward(x, y); }
  void backward(const float* x, const float*, const float* dy, float* dx) override {
    if (dx != nullptr) core_.backward(x, dy, dx);  // no parameters: nothing to do without dx
  }

 private:
  AttentionCore core_;
};

class AttentionPlan16 final : public LayerPlan16 {
 public:
  AttentionPlan16(std::int64_t batch, std::int64_t ctx, std::int64_t width, std::int64_t heads, Executor& exec)
      : core_(batch, ctx, width, heads, exec, dt::bf16) {}
  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override { core_.forward(x, y); }
  void backward(const std::uint16_t* x, const std::uint16_t*, const std::uint16_t* dy, std::uint16_t* dx) override {
    if (dx != nullptr) core_.backward(x, dy, dx);
  }

 private:
  AttentionCore core_;
};

class CausalAttention final : public Layer {
 public:
  CausalAttention(std::int64_t ctx, std::int64_t width, std::int64_t heads) : ctx_(ctx), width_(width), heads_(heads) {}
  std::string name() const override { return "attention"; }
  Shape input_shape() const override { return {ctx_, 3 * width_}; }
  Shape output_shape() const override { return {ctx_, width_}; }
  bool backward_reads_forward_state() const override { return true; }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*>, std::vector<float*>) override {
    return std::make_unique<AttentionPlan>(batch, ctx_, width_, heads_, exec);
  }
  // bf16: the primitives on the bf16 activations in place (no staging); fp16: the default staging.
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    if (t.bf16 && t.bf16_primitives) {
      try {
        return std::make_unique<AttentionPlan16>(batch, ctx_, width_, heads_, exec);
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU
      }
    }
    return Layer::make_plan16(batch, exec, t, stage);
  }
  // The default's staging even with bf16 primitives: the fallback if oneDNN refuses them (one
  // sample's activations, small beside the other layers').
  // QK^T and PV: 2 * 2 * T * T * C multiply-adds x 2 per sample.
  double flops_per_sample() const override { return 4.0 * static_cast<double>(ctx_ * ctx_ * width_); }

 private:
  std::int64_t ctx_, width_, heads_;
};

}  // namespace

std::unique_ptr<Layer> make_causal_attention(std::int64_t ctx, std::int64_t width, std::int64_t heads) {
  if (ctx <= 0 || width <= 0 || heads <= 0 || width % heads != 0)
    fail("causal attention needs positive sizes and width divisible by heads, got T {} C {} H {}", ctx, width, heads);
  return std::make_unique<CausalAttention>(ctx, width, heads);
}

}  // namespace lowsync::layers
