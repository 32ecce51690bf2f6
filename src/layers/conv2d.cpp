// Conv2d (stride 1, valid padding) on oneDNN convolution primitives: forward with bias and an
// optional fused ReLU, backward-data, backward-weights. Plain NCHW / OIHW layouts so the weights
// are the flat buffer itself (no reorders).
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

class Conv2dPlan final : public LayerPlan {
 public:
  Conv2dPlan(int n, const Shape& in, std::int64_t oc, std::int64_t k, bool relu, Executor& exec, float* w,
             float* b, float* dw, float* db)
      : exec_(exec), relu_(relu) {
    auto& eng = exec.engine();
    const std::int64_t ic = in[0], ih = in[1], iw = in[2], oh = ih - k + 1, ow = iw - k + 1;
    const memory::desc src_md({n, ic, ih, iw}, dt::f32, tag::nchw), dst_md({n, oc, oh, ow}, dt::f32, tag::nchw);
    const memory::desc w_md({oc, ic, k, k}, dt::f32, tag::oihw), b_md({oc}, dt::f32, tag::a);
    const memory::dims strides{1, 1}, pad{0, 0};
    dnnl::primitive_attr attr;
    if (relu) {
      dnnl::post_ops po;
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      attr.set_post_ops(po);
    }
    const dnnl::convolution_forward::primitive_desc fwd_pd(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src_md, w_md, b_md, dst_md,
         strides, pad, pad},
        attr, eng);
    fwd_ = dnnl::convolution_forward(fwd_pd);
    const dnnl::convolution_backward_data::primitive_desc bwd_data_pd(
        {dnnl::algorithm::convolution_direct, src_md, w_md, dst_md, strides, pad, pad}, eng, fwd_pd);
    bwd_data_ = dnnl::convolution_backward_data(bwd_data_pd);
    const dnnl::convolution_backward_weights::primitive_desc bwd_w_pd(
        {dnnl::algorithm::convolution_direct, src_md, w_md, b_md, dst_md, strides, pad, pad}, eng, fwd_pd);
    bwd_weights_ = dnnl::convolution_backward_weights(bwd_w_pd);

    src_ = memory(src_md, eng, nullptr);
    dst_ = memory(dst_md, eng, nullptr);
    dy_ = memory(dst_md, eng, nullptr);
    dx_ = memory(src_md, eng, nullptr);
    const memory w_mem(w_md, eng, w), b_mem(b_md, eng, b), dw_mem(w_md, eng, dw), db_mem(b_md, eng, db);
    fwd_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, dst_}};
    if (relu) {
      dy_pre_ = lowsync::memory::TrackedBuffer<float>("conv2d.dy_pre", static_cast<std::size_t>(n * oc * oh * ow));
      dy_pre_mem_ = memory(dst_md, eng, dy_pre_.data());
      const dnnl::eltwise_forward::primitive_desc relu_fwd_pd(
          {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst_md, 0.0f, 0.0f}, eng);
      relu_bwd_ = dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(
          {dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst_md, dst_md, 0.0f, 0.0f}, eng, relu_fwd_pd));
      relu_args_ = {{DNNL_ARG_DST, dst_}, {DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_SRC, dy_pre_mem_}};
    }
    const memory& grad_out = relu ? dy_pre_mem_ : dy_;
    bwd_data_args_ = {{DNNL_ARG_DIFF_DST, grad_out}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DIFF_SRC, dx_}};
    bwd_w_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_DIFF_DST, grad_out}, {DNNL_ARG_DIFF_WEIGHTS, dw_mem},
                   {DNNL_ARG_DIFF_BIAS, db_mem}};
  }

  void forward(const float* x, float* y, bool) override {
    src_.set_data_handle(const_cast<float*>(x));
    dst_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }

  void backward(const float* x, const float* y, const float* dy, float* dx) override {
    src_.set_data_handle(const_cast<float*>(x));
    dy_.set_data_handle(const_cast<float*>(dy));
    if (relu_) {
      dst_.set_data_handle(const_cast<float*>(y));
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
  lowsync::memory::TrackedBuffer<float> dy_pre_;
  dnnl::memory src_, dst_, dy_, dx_, dy_pre_mem_;
  dnnl::primitive fwd_, bwd_data_, bwd_weights_, relu_bwd_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_data_args_, bwd_w_args_, relu_args_;
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
  double flops_per_sample() const override {
    const Shape o = output_shape();
    return 2.0 * static_cast<double>(shape_size(o) * in_[0] * k_ * k_);
  }

 private:
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
