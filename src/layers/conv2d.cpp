// Conv2d (stride 1, valid padding) on oneDNN convolution primitives: forward with bias and an
// optional fused ReLU, backward-data, backward-weights. Plain NCHW / OIHW layouts so the weights
// are the flat buffer itself (no reorders). Native bf16 storage runs the same primitives in bf16
// on the u16 tensors in place; fp16 (no f16 convolution in oneDNN 2.6 on CPU) takes the default
// staged plan (native16_plan.cpp).
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// The primitives and argument maps of one batch size in one data type: f32 (the float plan) or
// bf16 (native bf16 storage: x, y, dy, dx, W, b, dW, db all bf16 in place; fp32 accumulation
// inside oneDNN, nearest-even rounding on store). Throws dnnl::error where oneDNN refuses bf16.
struct ConvDescs {
  memory::desc src, dst, w, b;
  dnnl::convolution_forward::primitive_desc fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights;
  dnnl::eltwise_backward::primitive_desc relu_bwd;  // empty without the fused ReLU
};

ConvDescs make_conv_descs(const dnnl::engine& eng, int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu,
                          dt type) {
  const std::int64_t ic = in[0], ih = in[1], iw = in[2], oh = ih - k + 1, ow = iw - k + 1;
  ConvDescs d;
  d.src = memory::desc({n, ic, ih, iw}, type, tag::nchw);
  d.dst = memory::desc({n, oc, oh, ow}, type, tag::nchw);
  d.w = memory::desc({oc, ic, k, k}, type, tag::oihw);
  d.b = memory::desc({oc}, type, tag::a);
  const memory::dims strides{1, 1}, pad{0, 0};
  dnnl::primitive_attr attr;
  if (relu) {
    dnnl::post_ops po;
    po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    attr.set_post_ops(po);
  }
  d.fwd = dnnl::convolution_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src, d.w, d.b, d.dst, strides, pad, pad},
      attr, eng);
  d.bwd_data = dnnl::convolution_backward_data::primitive_desc(
      {dnnl::algorithm::convolution_direct, d.src, d.w, d.dst, strides, pad, pad}, eng, d.fwd);
  d.bwd_weights = dnnl::convolution_backward_weights::primitive_desc(
      {dnnl::algorithm::convolution_direct, d.src, d.w, d.b, d.dst, strides, pad, pad}, eng, d.fwd);
  if (relu) {
    const dnnl::eltwise_forward::primitive_desc relu_fwd_pd(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd, d.dst, 0.0f, 0.0f}, eng);
    d.relu_bwd = dnnl::eltwise_backward::primitive_desc(
        {dnnl::algorithm::eltwise_relu_use_dst_for_bwd, d.dst, d.dst, 0.0f, 0.0f}, eng, relu_fwd_pd);
  }
  return d;
}

// The primitives and argument maps of one batch size in one data type: f32 (the float plan) or
// bf16 (native bf16 storage: x, y, dy, dx, W, b, dW, db all bf16 in place; fp32 accumulation
// inside oneDNN, nearest-even rounding on store). Throws dnnl::error where oneDNN refuses bf16.
class ConvPrimitives {
 public:
  ConvPrimitives(int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu, Executor& exec, dt type, void* w,
                 void* b, void* dw, void* db)
      : exec_(exec), relu_(relu) {
    auto& eng = exec.engine();
    const ConvDescs d = make_conv_descs(eng, n, in, oc, k, relu, type);
    const memory::desc &src_md = d.src, &dst_md = d.dst, &w_md = d.w, &b_md = d.b;
    fwd_ = dnnl::convolution_forward(d.fwd);
    bwd_data_ = dnnl::convolution_backward_data(d.bwd_data);
    bwd_weights_ = dnnl::convolution_backward_weights(d.bwd_weights);

    src_ = memory(src_md, eng, nullptr);
    dst_ = memory(dst_md, eng, nullptr);
    dy_ = memory(dst_md, eng, nullptr);
    dx_ = memory(src_md, eng, nullptr);
    const memory w_mem(w_md, eng, w), b_mem(b_md, eng, b), dw_mem(w_md, eng, dw), db_mem(b_md, eng, db);
    fwd_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, dst_}};
    if (relu) {
      dy_pre_ = lowsync::memory::TrackedBuffer<std::uint8_t>("conv2d.dy_pre", dst_md.get_size());
      dy_pre_mem_ = memory(dst_md, eng, dy_pre_.data());
      relu_bwd_ = dnnl::eltwise_backward(d.relu_bwd);
      relu_args_ = {{DNNL_ARG_DST, dst_}, {DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_SRC, dy_pre_mem_}};
    }
    const memory& grad_out = relu ? dy_pre_mem_ : dy_;
    bwd_data_args_ = {{DNNL_ARG_DIFF_DST, grad_out}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DIFF_SRC, dx_}};
    bwd_w_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_DIFF_DST, grad_out}, {DNNL_ARG_DIFF_WEIGHTS, dw_mem},
                   {DNNL_ARG_DIFF_BIAS, db_mem}};
  }

  void forward(const void* x, void* y) {
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
    if (dx != nullptr) {
      dx_.set_data_handle(dx);
      exec_.run(bwd_data_, bwd_data_args_);
    }
  }

 private:
  Executor& exec_;
  bool relu_;
  lowsync::memory::TrackedBuffer<std::uint8_t> dy_pre_;  // the gradient before the fused ReLU
  dnnl::memory src_, dst_, dy_, dx_, dy_pre_mem_;
  dnnl::primitive fwd_, bwd_data_, bwd_weights_, relu_bwd_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_data_args_, bwd_w_args_, relu_args_;
};

class Conv2dPlan final : public LayerPlan {
 public:
  Conv2dPlan(int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu, Executor& exec, float* w,
             float* b, float* dw, float* db)
      : prims_(n, in, oc, k, relu, exec, dt::f32, w, b, dw, db) {}
  void forward(const float* x, float* y, bool) override { prims_.forward(x, y); }
  void backward(const float* x, const float* y, const float* dy, float* dx) override { prims_.backward(x, y, dy, dx); }

 private:
  ConvPrimitives prims_;
};

// Native bf16 storage on oneDNN bf16 convolutions: no staging at all.
class Bf16Conv2dPlan16 final : public LayerPlan16 {
 public:
  Bf16Conv2dPlan16(int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu, Executor& exec,
                   const Native16Tensors& t)
      : prims_(n, in, oc, k, relu, exec, dt::bf16, t.params[0], t.params[1], t.grads[0], t.grads[1]) {}
  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override { prims_.forward(x, y); }
  void backward(const std::uint16_t* x, const std::uint16_t* y, const std::uint16_t* dy, std::uint16_t* dx) override {
    prims_.backward(x, y, dy, dx);
  }

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
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*> p,
                                       std::vector<float*> g) override {
    return std::make_unique<Conv2dPlan>(batch, in_, oc_, k_, relu_, exec, p[0], p[1], g[0], g[1]);
  }
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    if (t.params.size() != 2 || t.grads.size() != 2)
      fail("{}: native 16-bit plan needs weight and bias tensors, got {} params / {} grads", name(),
           t.params.size(), t.grads.size());
    if (t.bf16 && t.bf16_primitives) {
      try {
        return std::make_unique<Bf16Conv2dPlan16>(batch, in_, oc_, k_, relu_, exec, t);
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU: the staged fp32 plan below
      }
    }
    return Layer::make_plan16(batch, exec, t, stage);
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
  // Whether oneDNN makes the bf16 primitives for this batch (probed on a CPU engine of its own).
  bool bf16_supported(int batch) const {
    try {
      static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
      make_conv_descs(eng, batch, in_, oc_, k_, relu_, dt::bf16);
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
