// Conv2d (stride 1, valid padding) on oneDNN convolution primitives: forward with bias and an
// optional fused ReLU, backward-data, backward-weights, in the blocked layouts oneDNN picks
// (activations stay blocked to the next layer; the flat OIHW weights and their gradient are
// reordered once per forward / backward). Native bf16 storage runs the same primitives in bf16
// on the u16 tensors; fp16 (no f16 convolution in oneDNN 2.6 on CPU) takes the default staged
// plan (native16_plan.cpp).
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"

#include <string_view>

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// Descriptors of one batch size in one data type: f32 (the float plan) or bf16 (native bf16
// storage: x, y, dy, dx, W, b, dW, db all bf16; fp32 accumulation inside oneDNN, nearest-even
// rounding on store). src is the layout the previous plan writes; weights, dst and the backward
// weights take format_tag::any, so oneDNN picks its blocked layouts (nChw16c, OIhw16i16o, ...) and
// its direct JIT kernels instead of im2col + GEMM on plain NCHW. The backward primitives read and
// write the activations in the forward's layouts. Throws dnnl::error where oneDNN refuses bf16.
struct ConvDescs {
  memory::desc w_plain, b;
  dnnl::convolution_forward::primitive_desc fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights;
  dnnl::eltwise_backward::primitive_desc relu_bwd;  // empty without the fused ReLU
};

ConvDescs make_conv_descs(const dnnl::engine& eng, int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu,
                          dt type, const Layout& src_in) {
  const std::int64_t ic = in[0], ih = in[1], iw = in[2], oh = ih - k + 1, ow = iw - k + 1;
  ConvDescs d;
  const memory::dims src_dims{n, ic, ih, iw};
  // A plain input of other dimensions with the same bytes (a [N, F] from a Linear) is NCHW.
  const memory::desc src = is_plain(src_in) && src_in.dims() != src_dims ? memory::desc(src_dims, type, tag::nchw) : src_in;
  if (src.dims() != src_dims || src.data_type() != type)
    fail("conv2d: input layout does not match [{}, {}, {}, {}]", n, ic, ih, iw);
  const memory::desc dst_any({n, oc, oh, ow}, type, tag::any), w_any({oc, ic, k, k}, type, tag::any);
  d.w_plain = memory::desc({oc, ic, k, k}, type, tag::oihw);
  d.b = memory::desc({oc}, type, tag::a);
  const memory::dims strides{1, 1}, pad{0, 0};
  dnnl::primitive_attr attr;
  if (relu) {
    dnnl::post_ops po;
    po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    attr.set_post_ops(po);
  }
  d.fwd = dnnl::convolution_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, w_any, d.b, dst_any, strides, pad,
       pad},
      attr, eng);
  const memory::desc dst = d.fwd.dst_desc();
  d.bwd_data = dnnl::convolution_backward_data::primitive_desc(
      {dnnl::algorithm::convolution_direct, src, w_any, dst, strides, pad, pad}, eng, d.fwd);
  // A plain dx of few channels (an NCHW image input) has only oneDNN's reference kernel, ~1000x
  // slower: let backward-data pick its dx layout then, and ConvPrimitives reorders dx back.
  if (std::string_view(d.bwd_data.impl_info_str()).starts_with("ref")) {
    const dnnl::convolution_backward_data::primitive_desc any_dx(
        {dnnl::algorithm::convolution_direct, memory::desc(src_dims, type, tag::any), w_any, dst, strides, pad, pad},
        eng, d.fwd);
    if (!std::string_view(any_dx.impl_info_str()).starts_with("ref")) d.bwd_data = any_dx;
  }
  d.bwd_weights = dnnl::convolution_backward_weights::primitive_desc(
      {dnnl::algorithm::convolution_direct, src, w_any, d.b, dst, strides, pad, pad}, eng, d.fwd);
  if (relu) {
    const dnnl::eltwise_forward::primitive_desc relu_fwd_pd(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst, 0.0f, 0.0f}, eng);
    d.relu_bwd = dnnl::eltwise_backward::primitive_desc(
        {dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst, dst, 0.0f, 0.0f}, eng, relu_fwd_pd);
  }
  return d;
}

// A weight-shaped tensor in the layout a primitive wants: the flat plain tensor itself when the
// layouts agree, else a plan-owned buffer and the reorder between the two.
struct WeightView {
  lowsync::memory::TrackedBuffer<std::uint8_t> buf;
  memory plain, mem;
  dnnl::primitive reorder;
  bool reordered = false;

  WeightView() = default;
  WeightView(const dnnl::engine& eng, const memory::desc& plain_md, const memory::desc& want, void* flat, bool to_want,
             const char* label)
      : plain(plain_md, eng, flat) {
    if (want == plain_md) {
      mem = plain;
      return;
    }
    reordered = true;
    buf = lowsync::memory::TrackedBuffer<std::uint8_t>(label, want.get_size());
    mem = memory(want, eng, buf.data());
    reorder = to_want ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, plain_md, eng, want))
                      : dnnl::reorder(dnnl::reorder::primitive_desc(eng, want, eng, plain_md));
  }
  // plain -> mem (weights before use) or mem -> plain (weight gradients after); no-op if shared.
  void run(Executor& exec, bool to_want) {
    if (!reordered) return;
    if (to_want)
      exec.run(reorder, {{DNNL_ARG_FROM, plain}, {DNNL_ARG_TO, mem}});
    else
      exec.run(reorder, {{DNNL_ARG_FROM, mem}, {DNNL_ARG_TO, plain}});
  }
};

// The primitives and argument maps of one batch size in one data type. The flat weights are
// reordered into the forward's layout at every forward (parameters change between steps) and
// into the backward-data layout at every backward that computes dx (not trusting what the last
// forward left: a staged plan may have run other chunks in between); the weight gradient is
// computed in the backward-weights layout and reordered into the flat buffer.
class ConvPrimitives {
 public:
  ConvPrimitives(int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu, Executor& exec, dt type,
                 const Layout& src_in, void* w, void* b, void* dw, void* db)
      : exec_(exec), relu_(relu) {
    auto& eng = exec.engine();
    const ConvDescs d = make_conv_descs(eng, n, in, oc, k, relu, type, src_in);
    const memory::desc src_md = d.fwd.src_desc(), dst_md = d.fwd.dst_desc();
    in_ = src_md;
    out_ = dst_md;
    fwd_ = dnnl::convolution_forward(d.fwd);
    bwd_data_ = dnnl::convolution_backward_data(d.bwd_data);
    bwd_weights_ = dnnl::convolution_backward_weights(d.bwd_weights);

    w_fwd_ = WeightView(eng, d.w_plain, d.fwd.weights_desc(), w, true, "conv2d.w_blocked");
    if (d.bwd_data.weights_desc() != d.fwd.weights_desc())
      w_bwd_ = WeightView(eng, d.w_plain, d.bwd_data.weights_desc(), w, true, "conv2d.w_bwd_blocked");
    bwd_own_weights_ = d.bwd_data.weights_desc() != d.fwd.weights_desc();
    dw_ = WeightView(eng, d.w_plain, d.bwd_weights.diff_weights_desc(), dw, false, "conv2d.dw_blocked");

    src_ = memory(src_md, eng, nullptr);
    dst_ = memory(dst_md, eng, nullptr);
    dy_ = memory(dst_md, eng, nullptr);
    dx_ = memory(src_md, eng, nullptr);
    dx_reordered_ = d.bwd_data.diff_src_desc() != src_md;
    if (dx_reordered_) {  // backward-data writes its own layout, reordered
      dx_own_ = lowsync::memory::TrackedBuffer<std::uint8_t>("conv2d.dx_blocked", d.bwd_data.diff_src_desc().get_size());
      dx_own_mem_ = memory(d.bwd_data.diff_src_desc(), eng, dx_own_.data());
      dx_reorder_ = dnnl::reorder(dnnl::reorder::primitive_desc(eng, dx_own_mem_.get_desc(), eng, src_md));
    }
    const memory b_mem(d.b, eng, b), db_mem(d.b, eng, db);
    fwd_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_WEIGHTS, w_fwd_.mem}, {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, dst_}};
    if (relu) {
      dy_pre_ = lowsync::memory::TrackedBuffer<std::uint8_t>("conv2d.dy_pre", dst_md.get_size());
      dy_pre_mem_ = memory(dst_md, eng, dy_pre_.data());
      relu_bwd_ = dnnl::eltwise_backward(d.relu_bwd);
      relu_args_ = {{DNNL_ARG_DST, dst_}, {DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_SRC, dy_pre_mem_}};
    }
    const memory& grad_out = relu ? dy_pre_mem_ : dy_;
    bwd_data_args_ = {{DNNL_ARG_DIFF_DST, grad_out},
                      {DNNL_ARG_WEIGHTS, bwd_own_weights_ ? w_bwd_.mem : w_fwd_.mem},
                      {DNNL_ARG_DIFF_SRC, dx_reordered_ ? dx_own_mem_ : dx_}};
    bwd_w_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_DIFF_DST, grad_out}, {DNNL_ARG_DIFF_WEIGHTS, dw_.mem},
                   {DNNL_ARG_DIFF_BIAS, db_mem}};
  }

  const Layout& in() const { return in_; }
  const Layout& out() const { return out_; }

  void forward(const void* x, void* y) {
    w_fwd_.run(exec_, true);
    src_.set_data_handle(const_cast<void*>(x));
    dst_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }

  void backward(const void* x, const void* y, const void* dy, void* dx) {
    src_.set_data_handle(const_cast<void*>(x));
    dy_.set_data_handle(const_cast<void*>(dy));
    if (relu_) {
      dst_.set_data_handle(const_cast<void*>(y));
      exec_.run(relu_bwd_, relu_args_);
    }
    exec_.run(bwd_weights_, bwd_w_args_);
    dw_.run(exec_, false);
    if (dx != nullptr) {
      if (bwd_own_weights_)
        w_bwd_.run(exec_, true);
      else
        w_fwd_.run(exec_, true);
      dx_.set_data_handle(dx);
      exec_.run(bwd_data_, bwd_data_args_);
      if (dx_reordered_) exec_.run(dx_reorder_, {{DNNL_ARG_FROM, dx_own_mem_}, {DNNL_ARG_TO, dx_}});
    }
  }

 private:
  Executor& exec_;
  bool relu_;
  bool bwd_own_weights_ = false;
  bool dx_reordered_ = false;
  Layout in_, out_;
  WeightView w_fwd_, w_bwd_, dw_;
  lowsync::memory::TrackedBuffer<std::uint8_t> dy_pre_;  // the gradient before the fused ReLU
  lowsync::memory::TrackedBuffer<std::uint8_t> dx_own_;  // dx in backward-data's layout, if not src's
  dnnl::memory src_, dst_, dy_, dx_, dy_pre_mem_, dx_own_mem_;
  dnnl::primitive fwd_, bwd_data_, bwd_weights_, relu_bwd_, dx_reorder_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_data_args_, bwd_w_args_, relu_args_;
};

class Conv2dPlan final : public LayerPlan {
 public:
  Conv2dPlan(int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu, Executor& exec, const Layout& src,
             float* w, float* b, float* dw, float* db)
      : prims_(n, in, oc, k, relu, exec, dt::f32, src, w, b, dw, db) {}
  void forward(const float* x, float* y, bool) override { prims_.forward(x, y); }
  void backward(const float* x, const float* y, const float* dy, float* dx) override { prims_.backward(x, y, dy, dx); }
  const Layout& out() const { return prims_.out(); }

 private:
  ConvPrimitives prims_;
};

// Native bf16 storage on oneDNN bf16 convolutions: no staging at all.
class Bf16Conv2dPlan16 final : public LayerPlan16 {
 public:
  Bf16Conv2dPlan16(int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu, Executor& exec,
                   const Native16Tensors& t, const Layout& src)
      : prims_(n, in, oc, k, relu, exec, dt::bf16, src, t.params[0], t.params[1], t.grads[0], t.grads[1]) {}
  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override { prims_.forward(x, y); }
  void backward(const std::uint16_t* x, const std::uint16_t* y, const std::uint16_t* dy, std::uint16_t* dx) override {
    prims_.backward(x, y, dy, dx);
  }
  const Layout& out() const { return prims_.out(); }

 private:
  ConvPrimitives prims_;
};

class Conv2d final : public Layer {
 public:
  Conv2d(Shape in, std::int64_t oc, std::int64_t k, bool relu) : in_(std::move(in)), oc_(oc), k_(k), relu_(relu) {}
  std::string name() const override { return relu_ ? "conv2d+relu" : "conv2d"; }
  Shape input_shape() const override { return in_; }
  Shape output_shape() const override { return {oc_, in_[1] - k_ + 1, in_[2] - k_ + 1}; }
  std::vector<ParamSpec> param_specs() const override {
    const std::int64_t fan_in = in_[0] * k_ * k_;
    return {{"weight", {oc_, in_[0], k_, k_}, fan_in}, {"bias", {oc_}, fan_in}};
  }
  // Plain x and y: the blocked plan behind a reorder of y (and dy) to NCHW.
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*> p,
                                       std::vector<float*> g) override {
    const Layout plain_in = plain_layout(batch, in_, dt::f32), plain_out = plain_layout(batch, output_shape(), dt::f32);
    auto planned = make_layout_plan(batch, exec, std::move(p), std::move(g), plain_in);
    return make_reordered_plan(std::move(planned.plan), exec, plain_in, plain_in, planned.out, plain_out);
  }
  Planned<LayerPlan> make_layout_plan(int batch, Executor& exec, std::vector<float*> p, std::vector<float*> g,
                                      const Layout& in) override {
    check_tensors(p.size(), g.size());
    auto plan = std::make_unique<Conv2dPlan>(batch, in_, oc_, k_, relu_, exec, in, p[0], p[1], g[0], g[1]);
    const Layout out = plan->out();
    return {std::move(plan), out};
  }
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    check_tensors(t.params.size(), t.grads.size());
    if (t.bf16 && t.bf16_primitives) {
      const Layout plain_in = plain_layout(batch, in_, dt::bf16), plain_out = plain_layout(batch, output_shape(), dt::bf16);
      try {
        auto plan = std::make_unique<Bf16Conv2dPlan16>(batch, in_, oc_, k_, relu_, exec, t, plain_in);
        const Layout out = plan->out();
        return make_reordered_plan16(std::move(plan), exec, plain_in, plain_in, out, plain_out);
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU: the staged fp32 plan below
      }
    }
    return Layer::make_plan16(batch, exec, t, stage);
  }
  // bf16 primitives take (and give) blocked layouts; otherwise the staged plan behind reorders.
  Planned<LayerPlan16> make_layout_plan16(int batch, Executor& exec, const Native16Tensors& t, std::span<float> stage,
                                          const Layout& in) override {
    check_tensors(t.params.size(), t.grads.size());
    if (t.bf16 && t.bf16_primitives && in.data_type() == dt::bf16) {
      try {
        auto plan = std::make_unique<Bf16Conv2dPlan16>(batch, in_, oc_, k_, relu_, exec, t, in);
        const Layout out = plan->out();
        return {std::move(plan), out};
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU
      }
    }
    return Layer::make_layout_plan16(batch, exec, t, stage, in);
  }
  // bf16 primitives: no staging; otherwise the default staged plan's.
  std::size_t stage16_floats(int batch, bool bf16_primitives) const override {
    if (bf16_primitives && bf16_supported(batch)) return 0;
    return Layer::stage16_floats(batch, false);
  }
  double flops_per_sample() const override {
    const Shape o = output_shape();
    return 2.0 * static_cast<double>(shape_size(o) * in_[0] * k_ * k_);
  }

 private:
  void check_tensors(std::size_t params, std::size_t grads) const {
    if (params != 2 || grads != 2)
      fail("{}: plan needs weight and bias tensors, got {} params / {} grads", name(), params, grads);
  }
  // Whether oneDNN makes the bf16 primitives for this batch (probed on a CPU engine of its own).
  bool bf16_supported(int batch) const {
    try {
      static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
      make_conv_descs(eng, batch, in_, oc_, k_, relu_, dt::bf16, plain_layout(batch, in_, dt::bf16));
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }

  Shape in_;
  std::int64_t oc_, k_;
  bool relu_;
};

}  // namespace

std::unique_ptr<Layer> make_conv2d(Shape input, std::int64_t out_channels, std::int64_t kernel, bool relu) {
  if (input.size() != 3) fail("conv2d expects a [C, H, W] input, got {} dimensions", input.size());
  if (kernel < 1 || kernel > input[1] || kernel > input[2] || out_channels < 1)
    fail("conv2d: kernel {} with {} output channels does not fit input {}x{}x{}", kernel, out_channels,
         input[0], input[1], input[2]);
  return std::make_unique<Conv2d>(std::move(input), out_channels, kernel, relu);
}

}  // namespace lowsync::layers
