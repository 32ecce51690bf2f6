// LayerNorm over the last dimension of [rows, width] per sample on oneDNN's layer_normalization
// primitives (forward_training keeps mean and variance for backward; backward gives dx, dweight,
// dbias); GELU (tanh) on oneDNN eltwise primitives. ALGORITHMS.md §8. Native bf16 storage runs
// the same primitives on the bf16 activations in place; LayerNorm's weight and bias (and their
// gradients) are fp32 to oneDNN, so they are decoded (encoded) around each call.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/transformer.hpp"
#include "lowsync/tensor/half.hpp"

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// Primitives for one batch size on f32 or bf16 activations; w, b, dw, db are fp32 [width].
class LayerNormCore {
 public:
  LayerNormCore(std::int64_t rows, std::int64_t width, Executor& exec, dt type, float* w, float* b, float* dw, float* db)
      : exec_(exec), bytes_(static_cast<std::size_t>(rows * width) * memory::data_type_size(type)),
        mean_("layernorm.mean", static_cast<std::size_t>(rows)), var_("layernorm.variance", static_cast<std::size_t>(rows)) {
    auto& eng = exec.engine();
    const memory::desc data_md({rows, width}, type, tag::ab), stat_md({rows}, dt::f32, tag::a);
    const memory::desc param_md({width}, dt::f32, tag::a);
    const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    const dnnl::layer_normalization_forward::primitive_desc fwd_pd(
        {dnnl::prop_kind::forward_training, data_md, stat_md, kLayerNormEps, flags}, eng);
    const dnnl::layer_normalization_backward::primitive_desc bwd_pd(
        {dnnl::prop_kind::backward, data_md, data_md, stat_md, kLayerNormEps, flags}, eng, fwd_pd);
    fwd_ = dnnl::layer_normalization_forward(fwd_pd);
    bwd_ = dnnl::layer_normalization_backward(bwd_pd);
    x_ = memory(data_md, eng, nullptr);
    y_ = memory(data_md, eng, nullptr);
    dy_ = memory(data_md, eng, nullptr);
    dx_ = memory(data_md, eng, nullptr);
    const memory mean(stat_md, eng, mean_.data()), var(stat_md, eng, var_.data());
    const memory w_mem(param_md, eng, w), b_mem(param_md, eng, b), dw_mem(param_md, eng, dw), db_mem(param_md, eng, db);
    fwd_args_ = {{DNNL_ARG_SRC, x_},         {DNNL_ARG_DST, y_},      {DNNL_ARG_MEAN, mean},
                 {DNNL_ARG_VARIANCE, var},   {DNNL_ARG_SCALE, w_mem}, {DNNL_ARG_SHIFT, b_mem}};
    bwd_args_ = {{DNNL_ARG_SRC, x_},          {DNNL_ARG_DIFF_DST, dy_},         {DNNL_ARG_MEAN, mean},
                 {DNNL_ARG_VARIANCE, var},    {DNNL_ARG_SCALE, w_mem},          {DNNL_ARG_SHIFT, b_mem},
                 {DNNL_ARG_DIFF_SRC, dx_},    {DNNL_ARG_DIFF_SCALE, dw_mem},    {DNNL_ARG_DIFF_SHIFT, db_mem}};
  }

  void forward(const void* x, void* y) {
    x_.set_data_handle(const_cast<void*>(x));
    y_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }

  // Reads the mean and variance the last forward of this plan left (backward_reads_forward_state).
  void backward(const void* x, const void* dy, void* dx) {
    if (dx == nullptr) {  // the primitive always writes dx: give it a scratch buffer (first layer only)
      if (scratch_.size() == 0) scratch_ = lowsync::memory::TrackedBuffer<std::uint8_t>("layernorm.dx_scratch", bytes_);
      dx = scratch_.data();
    }
    x_.set_data_handle(const_cast<void*>(x));
    dy_.set_data_handle(const_cast<void*>(dy));
    dx_.set_data_handle(dx);
    exec_.run(bwd_, bwd_args_);
  }

 private:
  Executor& exec_;
  std::size_t bytes_;  // of one activation tensor
  lowsync::memory::TrackedBuffer<float> mean_, var_;  // [rows] statistics of the last forward
  lowsync::memory::TrackedBuffer<std::uint8_t> scratch_;
  memory x_, y_, dy_, dx_;
  dnnl::primitive fwd_, bwd_;
  std::unordered_map<int, memory> fwd_args_, bwd_args_;
};

class LayerNormPlan final : public LayerPlan {
 public:
  LayerNormPlan(std::int64_t rows, std::int64_t width, Executor& exec, float* w, float* b, float* dw, float* db)
      : core_(rows, width, exec, dt::f32, w, b, dw, db) {}
  void forward(const float* x, float* y, bool) override { core_.forward(x, y); }
  void backward(const float* x, const float*, const float* dy, float* dx) override { core_.backward(x, dy, dx); }

 private:
  LayerNormCore core_;
};

// bf16 activations in place; weight and bias decoded to fp32 for the primitive, their fp32
// gradients rounded (nearest-even) into the u16 gradient tensors.
class LayerNormPlan16 final : public LayerPlan16 {
 public:
  LayerNormPlan16(std::int64_t rows, std::int64_t width, Executor& exec, const Native16Tensors& t)
      : w16_(t.params[0]), b16_(t.params[1]), dw16_(t.grads[0]), db16_(t.grads[1]),
        params_("layernorm16.params", static_cast<std::size_t>(4 * width)), width_(static_cast<std::size_t>(width)),
        core_(rows, width, exec, dt::bf16, params_.data(), params_.data() + width, params_.data() + 2 * width,
              params_.data() + 3 * width) {}
  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override {
    stage_params();
    core_.forward(x, y);
  }
  void backward(const std::uint16_t* x, const std::uint16_t*, const std::uint16_t* dy, std::uint16_t* dx) override {
    stage_params();
    core_.backward(x, dy, dx);
    tensor::bf16_encode({params_.data() + 2 * width_, width_}, {dw16_, width_});
    tensor::bf16_encode({params_.data() + 3 * width_, width_}, {db16_, width_});
  }

 private:
  void stage_params() {
    tensor::bf16_decode({w16_, width_}, {params_.data(), width_});
    tensor::bf16_decode({b16_, width_}, {params_.data() + width_, width_});
  }
  std::uint16_t *w16_, *b16_, *dw16_, *db16_;
  lowsync::memory::TrackedBuffer<float> params_;  // [4, width] weight, bias, dweight, dbias in fp32
  std::size_t width_;
  LayerNormCore core_;
};

class LayerNorm final : public Layer {
 public:
  LayerNorm(std::int64_t rows, std::int64_t width) : rows_(rows), width_(width) {}
  std::string name() const override { return "layernorm"; }
  Shape input_shape() const override { return {rows_, width_}; }
  Shape output_shape() const override { return {rows_, width_}; }
  std::vector<ParamSpec> param_specs() const override {
    return {{"weight", {width_}, width_, ParamInit::ones}, {"bias", {width_}, width_, ParamInit::zeros}};
  }
  bool backward_reads_forward_state() const override { return true; }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*> p, std::vector<float*> g) override {
    return std::make_unique<LayerNormPlan>(batch * rows_, width_, exec, p[0], p[1], g[0], g[1]);
  }
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    if (t.bf16 && t.bf16_primitives) {
      try {
        return std::make_unique<LayerNormPlan16>(batch * rows_, width_, exec, t);
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU: the default staging
      }
    }
    return Layer::make_plan16(batch, exec, t, stage);
  }
  double flops_per_sample() const override { return 8.0 * static_cast<double>(rows_ * width_); }

 private:
  std::int64_t rows_, width_;
};

class GeluCore {
 public:
  GeluCore(std::int64_t count, Executor& exec, dt type) : exec_(exec) {
    auto& eng = exec.engine();
    const memory::desc md({count}, type, tag::a);
    const dnnl::eltwise_forward::primitive_desc fwd_pd(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_gelu_tanh, md, 0.0f, 0.0f}, eng);
    const dnnl::eltwise_backward::primitive_desc bwd_pd({dnnl::algorithm::eltwise_gelu_tanh, md, md, 0.0f, 0.0f}, eng,
                                                        fwd_pd);
    fwd_ = dnnl::eltwise_forward(fwd_pd);
    bwd_ = dnnl::eltwise_backward(bwd_pd);
    x_ = memory(md, eng, nullptr), y_ = memory(md, eng, nullptr), dy_ = memory(md, eng, nullptr),
    dx_ = memory(md, eng, nullptr);
    fwd_args_ = {{DNNL_ARG_SRC, x_}, {DNNL_ARG_DST, y_}};
    bwd_args_ = {{DNNL_ARG_SRC, x_}, {DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_SRC, dx_}};
  }
  void forward(const void* x, void* y) {
    x_.set_data_handle(const_cast<void*>(x));
    y_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }
  // dx may be dy (oneDNN eltwise backward works in place).
  void backward(const void* x, const void* dy, void* dx) {
    if (dx == nullptr) return;
    x_.set_data_handle(const_cast<void*>(x));
    x_.set_data_handle(const_cast<void*>(x));
    dy_.set_data_handle(const_cast<void*>(dy));
    dx_.set_data_handle(dx);
    exec_.run(bwd_, bwd_args_);
  }

 private:
  Executor& exec_;
  memory x_, y_, dy_, dx_;
  dnnl::primitive fwd_, bwd_;
  std::unordered_map<int, memory> fwd_args_, bwd_args_;
};

class GeluPlan final : public LayerPlan {
 public:
  GeluPlan(std::int64_t count, Executor& exec) : core_(count, exec, dt::f32) {}
  void forward(const float* x, float* y, bool) override { core_.forward(x, y); }
  void backward(const float* x, const float*, const float* dy, float* dx) override { core_.backward(x, dy, dx); }

 private:
  GeluCore core_;
};

class GeluPlan16 final : public LayerPlan16 {
 public:
  GeluPlan16(std::int64_t count, Executor& exec) : core_(count, exec, dt::bf16) {}
  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override { core_.forward(x, y); }
  void backward(const std::uint16_t* x, const std::uint16_t*, const std::uint16_t* dy, std::uint16_t* dx) override {
    core_.backward(x, dy, dx);
  }

 private:
  GeluCore core_;
};

class Gelu final : public Layer {
 public:
  explicit Gelu(Shape shape) : shape_(std::move(shape)) {}
  std::string name() const override { return "gelu"; }
  Shape input_shape() const override { return shape_; }
  Shape output_shape() const override { return shape_; }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*>, std::vector<float*>) override {
    return std::make_unique<GeluPlan>(batch * shape_size(shape_), exec);
  }
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    if (t.bf16 && t.bf16_primitives) {
      try {
        return std::make_unique<GeluPlan16>(batch * shape_size(shape_), exec);
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU: the default staging
      }
    }
    return Layer::make_plan16(batch, exec, t, stage);
  }

 private:
  Shape shape_;
};

}  // namespace

std::unique_ptr<Layer> make_layernorm(std::int64_t rows, std::int64_t width) {
  if (rows <= 0 || width <= 0) fail("layernorm needs positive sizes, got [{}, {}]", rows, width);
  return std::make_unique<LayerNorm>(rows, width);
}

std::unique_ptr<Layer> make_gelu(Shape shape) {
  if (shape.empty() || shape_size(shape) <= 0) fail("gelu needs a non-empty shape");
  return std::make_unique<Gelu>(std::move(shape));
}

}  // namespace lowsync::layers
