// Max pooling (window = stride) and standalone ReLU and Flatten layers.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

class MaxPoolPlan final : public LayerPlan {
 public:
  MaxPoolPlan(int n, const Shape& in, std::int64_t win, Executor& exec) : exec_(exec) {
    auto& eng = exec.engine();
    const std::int64_t c = in[0], h = in[1], w = in[2];
    const memory::desc src_md({n, c, h, w}, dt::f32, tag::nchw), dst_md({n, c, h / win, w / win}, dt::f32, tag::nchw);
    const memory::dims kernel{win, win}, pad{0, 0};
    const dnnl::pooling_forward::primitive_desc fwd_pd(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, src_md, dst_md, kernel, kernel, pad, pad},
        eng);
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
  void forward(const float* x, float* y, bool) override {
    src_.set_data_handle(const_cast<float*>(x));
    dst_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }
  void backward(const float*, const float*, const float* dy, float* dx) override {
    if (dx == nullptr) return;
    dy_.set_data_handle(const_cast<float*>(dy));
    dx_.set_data_handle(dx);
    exec_.run(bwd_, bwd_args_);
  }

 private:
  Executor& exec_;
  lowsync::memory::TrackedBuffer<std::uint8_t> workspace_;  // argmax positions from the training forward
  dnnl::memory src_, dst_, dx_, dy_, ws_;
  dnnl::primitive fwd_, bwd_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_args_;
};

class MaxPool2d final : public Layer {
 public:
  MaxPool2d(Shape in, std::int64_t win) : in_(std::move(in)), win_(win) {}
  std::string name() const override { return "maxpool2d"; }
  bool backward_reads_forward_state() const override { return true; }  // the argmax workspace
  Shape input_shape() const override { return in_; }
  Shape output_shape() const override { return {in_[0], in_[1] / win_, in_[2] / win_}; }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*>, std::vector<float*>) override {
    return std::make_unique<MaxPoolPlan>(batch, in_, win_, exec);
  }

 private:
  Shape in_;
  std::int64_t win_;
};

class ReluPlan final : public LayerPlan {
 public:
  ReluPlan(int n, const Shape& shape, Executor& exec) : exec_(exec) {
    auto& eng = exec.engine();
    const memory::desc md({n, shape_size(shape)}, dt::f32, tag::ab);
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
    return std::make_unique<ReluPlan>(batch, shape_, exec);
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
