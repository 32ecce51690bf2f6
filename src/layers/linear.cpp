// Linear layer on oneDNN inner-product primitives: forward (bias + optional fused ReLU),
// backward-data and backward-weights (with bias). Argument maps are built once per plan; each
// call only swaps data handles.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

class LinearPlan final : public LayerPlan {
 public:
  LinearPlan(int n, std::int64_t in, std::int64_t out, bool relu, Executor& exec, float* w, float* b, float* dw,
             float* db)
      : exec_(exec), relu_(relu), dy_pre_(relu ? lowsync::memory::TrackedBuffer<float>("linear.dy_pre", static_cast<std::size_t>(n) * out)
                                             : lowsync::memory::TrackedBuffer<float>()) {
    auto& eng = exec.engine();
    const memory::desc src_md({n, in}, dt::f32, tag::ab), dst_md({n, out}, dt::f32, tag::ab);
    const memory::desc w_md({out, in}, dt::f32, tag::ab), b_md({out}, dt::f32, tag::a);
    dnnl::primitive_attr attr;
    if (relu) {
      dnnl::post_ops po;
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      attr.set_post_ops(po);
    }
    const dnnl::inner_product_forward::primitive_desc fwd_pd(
        {dnnl::prop_kind::forward_training, src_md, w_md, b_md, dst_md}, attr, eng);
    fwd_ = dnnl::inner_product_forward(fwd_pd);
    const dnnl::inner_product_backward_data::primitive_desc bwd_data_pd({src_md, w_md, dst_md}, eng, fwd_pd);
    bwd_data_ = dnnl::inner_product_backward_data(bwd_data_pd);
    const dnnl::inner_product_backward_weights::primitive_desc bwd_w_pd({src_md, w_md, b_md, dst_md}, eng, fwd_pd);
    bwd_weights_ = dnnl::inner_product_backward_weights(bwd_w_pd);

    src_ = memory(src_md, eng, nullptr);
    dst_ = memory(dst_md, eng, nullptr);
    dy_ = memory(dst_md, eng, nullptr);
    dx_ = memory(src_md, eng, nullptr);
    const memory w_mem(w_md, eng, w), b_mem(b_md, eng, b), dw_mem(w_md, eng, dw), db_mem(b_md, eng, db);
    fwd_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, dst_}};
    if (relu) {
      dy_pre_mem_ = memory(dst_md, eng, dy_pre_.data());
      const dnnl::eltwise_forward::primitive_desc relu_fwd_pd(
          {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst_md, 0.0f, 0.0f}, eng);
      const dnnl::eltwise_backward::primitive_desc relu_bwd_pd(
          {dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst_md, dst_md, 0.0f, 0.0f}, eng, relu_fwd_pd);
      relu_bwd_ = dnnl::eltwise_backward(relu_bwd_pd);
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
  lowsync::memory::TrackedBuffer<float> dy_pre_;  // [N, out] gradient before the fused ReLU
  dnnl::memory src_, dst_, dy_, dx_, dy_pre_mem_;
  dnnl::primitive fwd_, bwd_data_, bwd_weights_, relu_bwd_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_data_args_, bwd_w_args_, relu_args_;
};

class Linear final : public Layer {
 public:
  Linear(std::int64_t in, std::int64_t out, bool relu) : in_(in), out_(out), relu_(relu) {}
  std::string name() const override { return relu_ ? "linear+relu" : "linear"; }
  Shape input_shape() const override { return {in_}; }
  Shape output_shape() const override { return {out_}; }
  std::vector<ParamSpec> param_specs() const override {
    return {{"weight", {out_, in_}, in_}, {"bias", {out_}, in_}};
  }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*> p,
                                       std::vector<float*> g) override {
    return std::make_unique<LinearPlan>(batch, in_, out_, relu_, exec, p[0], p[1], g[0], g[1]);
  }
  double flops_per_sample() const override { return 2.0 * static_cast<double>(in_ * out_); }

 private:
  std::int64_t in_, out_;
  bool relu_;
};

}  // namespace

std::unique_ptr<Layer> make_linear(std::int64_t in, std::int64_t out, bool relu) {
  if (in <= 0 || out <= 0) fail("linear layer needs positive sizes, got {} -> {}", in, out);
  return std::make_unique<Linear>(in, out, relu);
}

}  // namespace lowsync::layers
