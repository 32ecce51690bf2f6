// Max pooling (window = stride) and standalone ReLU and Flatten layers. All three keep the layout
// they receive (a convolution's blocked nChw16c stays blocked through them).
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// src: the layout of x (dimensions [n, C, H, W], or plain of the same bytes); dst follows it.
dnnl::pooling_forward::primitive_desc make_maxpool_fwd_desc(const dnnl::engine& eng, int n, const Shape& in,
                                                            std::int64_t win, dt type, const Layout& src) {
  const std::int64_t c = in[0], h = in[1], w = in[2];
  const memory::dims src_dims{n, c, h, w};
  const memory::desc src_md = is_plain(src) ? memory::desc(src_dims, type, tag::nchw) : src;
  if (src_md.dims() != src_dims || src_md.data_type() != type)
    fail("maxpool2d: input layout does not match [{}, {}, {}, {}]", n, c, h, w);
  const memory::desc dst_md({n, c, h / win, w / win}, type, is_plain(src) ? tag::nchw : tag::any);
  const memory::dims kernel{win, win}, pad{0, 0};
  return dnnl::pooling_forward::primitive_desc(
      {dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, src_md, dst_md, kernel, kernel, pad, pad}, eng);
}

// Max pooling primitives of one batch size in f32 (the float plan) or bf16 (native bf16 storage,
// on the u16 activations in place: pooling only moves values, so bf16 is exact).
class MaxPoolPrimitives {
 public:
  MaxPoolPrimitives(int n, const Shape& in, std::int64_t win, Executor& exec, dt type, const Layout& src)
      : exec_(exec) {
    auto& eng = exec.engine();
    const auto fwd_pd = make_maxpool_fwd_desc(eng, n, in, win, type, src);
    out_ = fwd_pd.dst_desc();
    const memory::desc src_md = fwd_pd.src_desc(), dst_md = fwd_pd.dst_desc();
    const memory::dims kernel{win, win}, pad{0, 0};
    fwd_ = dnnl::pooling_forward(fwd_pd);
    bwd_ = dnnl::pooling_backward(dnnl::pooling_backward::primitive_desc(
        {dnnl::algorithm::pooling_max, src_md, dst_md, kernel, kernel, pad, pad}, eng, fwd_pd));
    const auto ws_md = fwd_pd.workspace_desc();
    workspace_ = lowsync::memory::TrackedBuffer<std::uint8_t>("maxpool.workspace", ws_md.get_size());
    ws_ = memory(ws_md, eng, workspace_.data());
    src_ = memory(src_md, eng, nullptr);
    dst_ = memory(dst_md, eng, nullptr);
    dx_ = memory(src_md, eng, nullptr);
    dy_ = memory(dst_md, eng, nullptr);
    fwd_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_DST, dst_}, {DNNL_ARG_WORKSPACE, ws_}};
    bwd_args_ = {{DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_SRC, dx_}, {DNNL_ARG_WORKSPACE, ws_}};
  }
  void forward(const void* x, void* y) {
    src_.set_data_handle(const_cast<void*>(x));
    dst_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }
  void backward(const void* dy, void* dx) {
    if (dx == nullptr) return;
    dy_.set_data_handle(const_cast<void*>(dy));
    dx_.set_data_handle(dx);
    exec_.run(bwd_, bwd_args_);
  }
  const Layout& out() const { return out_; }

 private:
  Executor& exec_;
  Layout out_;
  lowsync::memory::TrackedBuffer<std::uint8_t> workspace_;  // argmax positions from the training forward
  dnnl::memory src_, dst_, dx_, dy_, ws_;
  dnnl::primitive fwd_, bwd_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_args_;
};

class MaxPoolPlan final : public LayerPlan {
 public:
  MaxPoolPlan(int n, const Shape& in, std::int64_t win, Executor& exec, const Layout& src)
      : prims_(n, in, win, exec, dt::f32, src) {}
  void forward(const float* x, float* y, bool) override { prims_.forward(x, y); }
  void backward(const float*, const float*, const float* dy, float* dx) override { prims_.backward(dy, dx); }
  const Layout& out() const { return prims_.out(); }

 private:
  MaxPoolPrimitives prims_;
};

class Bf16MaxPoolPlan16 final : public LayerPlan16 {
 public:
  Bf16MaxPoolPlan16(int n, const Shape& in, std::int64_t win, Executor& exec, const Layout& src)
      : prims_(n, in, win, exec, dt::bf16, src) {}
  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override { prims_.forward(x, y); }
  void backward(const std::uint16_t*, const std::uint16_t*, const std::uint16_t* dy, std::uint16_t* dx) override {
    prims_.backward(dy, dx);
  }
  const Layout& out() const { return prims_.out(); }

 private:
  MaxPoolPrimitives prims_;
};

class MaxPool2d final : public Layer {
 public:
  MaxPool2d(Shape in, std::int64_t win) : in_(std::move(in)), win_(win) {}
  std::string name() const override { return "maxpool2d"; }
  bool backward_reads_forward_state() const override { return true; }  // the argmax workspace
  Shape input_shape() const override { return in_; }
  Shape output_shape() const override { return {in_[0], in_[1] / win_, in_[2] / win_}; }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*>, std::vector<float*>) override {
    return std::make_unique<MaxPoolPlan>(batch, in_, win_, exec, plain_layout(batch, in_, dt::f32));
  }
  Planned<LayerPlan> make_layout_plan(int batch, Executor& exec, std::vector<float*>, std::vector<float*>,
                                      const Layout& in) override {
    auto plan = std::make_unique<MaxPoolPlan>(batch, in_, win_, exec, in);
    const Layout out = plan->out();
    return {std::move(plan), out};
  }
  // bf16: oneDNN bf16 pooling on the u16 activations, no staging; fp16: the default staged plan.
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    if (t.bf16 && t.bf16_primitives) {
      try {
        return std::make_unique<Bf16MaxPoolPlan16>(batch, in_, win_, exec, plain_layout(batch, in_, dt::bf16));
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU
      }
    }
    return Layer::make_plan16(batch, exec, t, stage);
  }
  Planned<LayerPlan16> make_layout_plan16(int batch, Executor& exec, const Native16Tensors& t, std::span<float> stage,
                                          const Layout& in) override {
    if (t.bf16 && t.bf16_primitives && in.data_type() == dt::bf16) {
      try {
        auto plan = std::make_unique<Bf16MaxPoolPlan16>(batch, in_, win_, exec, in);
        const Layout out = plan->out();
        return {std::move(plan), out};
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU
      }
    }
    return Layer::make_layout_plan16(batch, exec, t, stage, in);
  }
  std::size_t stage16_floats(int batch, bool bf16_primitives) const override {
    if (bf16_primitives && bf16_supported(batch)) return 0;
    return Layer::stage16_floats(batch, false);
  }

 private:
  bool bf16_supported(int batch) const {
    try {
      static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
      make_maxpool_fwd_desc(eng, batch, in_, win_, dt::bf16, plain_layout(batch, in_, dt::bf16));
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }

  Shape in_;
  std::int64_t win_;
};

class ReluPlan final : public LayerPlan {
 public:
  // md: the layout of x, kept for y (an elementwise op works on any layout).
  ReluPlan(const memory::desc& md, Executor& exec) : exec_(exec) {
    auto& eng = exec.engine();
    const dnnl::eltwise_forward::primitive_desc fwd_pd(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd, md, 0.0f, 0.0f}, eng);
    fwd_ = dnnl::eltwise_forward(fwd_pd);
    bwd_ = dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(
        {dnnl::algorithm::eltwise_relu_use_dst_for_bwd, md, md, 0.0f, 0.0f}, eng, fwd_pd));
    src_ = memory(md, eng, nullptr);
    dst_ = memory(md, eng, nullptr);
    dy_ = memory(md, eng, nullptr);
    dx_ = memory(md, eng, nullptr);
    fwd_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_DST, dst_}};
    bwd_args_ = {{DNNL_ARG_DST, dst_}, {DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_SRC, dx_}};
  }
  void forward(const float* x, float* y, bool) override {
    src_.set_data_handle(const_cast<float*>(x));
    dst_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }
  void backward(const float*, const float* y, const float* dy, float* dx) override {
    if (dx == nullptr) return;
    dst_.set_data_handle(const_cast<float*>(y));
    dy_.set_data_handle(const_cast<float*>(dy));
    dx_.set_data_handle(dx);
    exec_.run(bwd_, bwd_args_);
  }

 private:
  Executor& exec_;
  dnnl::memory src_, dst_, dy_, dx_;
  dnnl::primitive fwd_, bwd_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_args_;
};

class Relu final : public Layer {
 public:
  explicit Relu(Shape s) : shape_(std::move(s)) {}
  std::string name() const override { return "relu"; }
  Shape input_shape() const override { return shape_; }
  Shape output_shape() const override { return shape_; }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*>, std::vector<float*>) override {
    return std::make_unique<ReluPlan>(memory::desc({batch, shape_size(shape_)}, dt::f32, tag::ab), exec);
  }
  Planned<LayerPlan> make_layout_plan(int, Executor& exec, std::vector<float*>, std::vector<float*>,
                                      const Layout& in) override {
    return {std::make_unique<ReluPlan>(in, exec), in};
  }

 private:
  Shape shape_;
};

class NoopPlan final : public LayerPlan {
 public:
  void forward(const float*, float*, bool) override {}
  void backward(const float*, const float*, const float*, float*) override {}
};

// Row-major [N, C, H, W] is already [N, C*H*W]: Flatten only changes the shape.
class Flatten final : public Layer {
 public:
  explicit Flatten(Shape in) : in_(std::move(in)) {}
  std::string name() const override { return "flatten"; }
  Shape input_shape() const override { return in_; }
  Shape output_shape() const override { return {shape_size(in_)}; }
  bool aliases_input() const override { return true; }
  std::unique_ptr<LayerPlan> make_plan(int, Executor&, std::vector<float*>, std::vector<float*>) override {
    return std::make_unique<NoopPlan>();
  }
  // The input's layout passes through (blocked activations are reordered by the consumer).
  Planned<LayerPlan> make_layout_plan(int, Executor&, std::vector<float*>, std::vector<float*>,
                                      const Layout& in) override {
    return {std::make_unique<NoopPlan>(), in};
  }

 private:
  Shape in_;
};

}  // namespace

std::unique_ptr<Layer> make_maxpool2d(Shape input, std::int64_t window) {
  if (input.size() != 3) fail("maxpool2d expects a [C, H, W] input, got {} dimensions", input.size());
  if (window < 1 || input[1] % window != 0 || input[2] % window != 0)
    fail("maxpool2d: window {} does not divide input {}x{}", window, input[1], input[2]);
  return std::make_unique<MaxPool2d>(std::move(input), window);
}
std::unique_ptr<Layer> make_relu(Shape shape) { return std::make_unique<Relu>(std::move(shape)); }
std::unique_ptr<Layer> make_flatten(Shape input) { return std::make_unique<Flatten>(std::move(input)); }

}  // namespace lowsync::layers
