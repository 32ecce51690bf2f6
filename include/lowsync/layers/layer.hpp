// Layer interface. A Layer describes shapes and parameters; a LayerPlan holds the oneDNN
// primitives and buffers for one batch size, created once and reused every step (no allocation
// on the hot path). Tensors are fp32 (LayerPlan16, native 16-bit storage: u16 bf16 or fp16 bit
// patterns): activations [N, C, H, W] or [N, F], row-major through make_plan, in a layout the
// plans negotiate (oneDNN blocked formats between convolutions) through make_layout_plan.
#pragma once

#include "lowsync/core/memory.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace lowsync::layers {

using Shape = std::vector<std::int64_t>;  // per-sample shape: [C, H, W] or [F]

std::int64_t shape_size(const Shape& s);

// Input + output values of one chunk of the default native 16-bit plan (Layer::make_plan16):
// its activation staging is 2 * chunk * (input + output) floats, at most 512 KB.
inline constexpr std::size_t kStage16ChunkFloats = std::size_t{1} << 16;

// How Model::initialize draws a parameter tensor: Kaiming-uniform U(-1/sqrt(fan_in), +) (mlp, cnn),
// or the transformer scheme of ALGORITHMS.md §8 (normal(0, 0.02), zeros, ones).
enum class ParamInit : std::uint8_t { kaiming_uniform, normal_002, zeros, ones };

struct ParamSpec {
  std::string name;     // "weight" or "bias" ("ln1.weight", "qkv.bias" inside a transformer block)
  Shape shape;          // weight [out, in] or [out, in, kh, kw]; bias [out]
  std::int64_t fan_in;  // for Kaiming-uniform initialisation
  ParamInit init = ParamInit::kaiming_uniform;
};

// oneDNN engine + stream shared by all layers, with optional per-primitive timing.
class Executor {
 public:
  Executor();
  dnnl::engine& engine() { return engine_; }
  void run(const dnnl::primitive& p, const std::unordered_map<int, dnnl::memory>& args);
  void set_profiling(bool on) { profiling_ = on; }
  double primitive_seconds() const { return primitive_seconds_; }
  void reset_profile() { primitive_seconds_ = 0.0; }

 private:
  dnnl::engine engine_;
  dnnl::stream stream_;
  bool profiling_ = false;
  double primitive_seconds_ = 0.0;
};

class LayerPlan {
 public:
  virtual ~LayerPlan() = default;
  // y = f(x). training: keep what backward needs (pooling workspace).
  virtual void forward(const float* x, float* y, bool training) = 0;
  // Given x, y = f(x) and dy, accumulate nothing: overwrite the parameter gradients and write dx
  // (dx == nullptr: the input needs no gradient, skip that work).
  virtual void backward(const float* x, const float* y, const float* dy, float* dx) = 0;
};

// The same contract for native 16-bit storage: activations x, y and their gradients dy, dx are
// bf16 or fp16 bit patterns (the Model's buffers hold 2 bytes per value).
class LayerPlan16 {
 public:
  virtual ~LayerPlan16() = default;
  virtual void forward(const std::uint16_t* x, std::uint16_t* y, bool training) = 0;
  virtual void backward(const std::uint16_t* x, const std::uint16_t* y, const std::uint16_t* dy, std::uint16_t* dx) = 0;
};

// Parameter and gradient tensors of one layer in native 16-bit storage, one per param_specs() entry.
struct Native16Tensors {
  std::vector<std::uint16_t*> params;
  std::vector<std::uint16_t*> grads;
  bool bf16 = true;  // false: IEEE fp16
  // bf16 only: layers may compute on oneDNN bf16 primitives over the u16 tensors (Linear) instead
  // of staging them in fp32; false forces the fp32 staging (tests, comparisons).
  bool bf16_primitives = true;
};

// The layout of a whole batch of activations as the plans exchange it: a oneDNN memory descriptor
// ([N, C, H, W] or [N, F]; f32 for LayerPlan, bf16/f16 for LayerPlan16). Plain = dense row-major.
using Layout = dnnl::memory::desc;
Layout plain_layout(int batch, const Shape& shape, dnnl::memory::data_type type);
bool is_plain(const Layout& layout);
// The plain layout with the same dimensions as `layout` (same bytes as [N, shape_size] row-major).
Layout plain_like(const Layout& layout);

// A plan and the layout its forward writes y in (and its backward reads dy in).
template <class Plan>
struct Planned {
  std::unique_ptr<Plan> plan;
  Layout out;
};

// Wraps `inner`, which reads x / writes dx in `inner_in` and writes y / reads dy in `inner_out`,
// into a plan that reads x in `outer_in` and writes y in `outer_out` (same dimensions each):
// oneDNN reorders into plan-owned buffers where the two differ. Backward reorders x (and y, dy)
// again rather than trusting what the last forward left, so it holds for any call order.
std::unique_ptr<LayerPlan> make_reordered_plan(std::unique_ptr<LayerPlan> inner, Executor& exec,
                                               const Layout& outer_in, const Layout& inner_in,
                                               const Layout& inner_out, const Layout& outer_out);
std::unique_ptr<LayerPlan16> make_reordered_plan16(std::unique_ptr<LayerPlan16> inner, Executor& exec,
                                                   const Layout& outer_in, const Layout& inner_in,
                                                   const Layout& inner_out, const Layout& outer_out);

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string name() const = 0;
  // Per-sample input shape; the default make_plan16 sizes the dx it rounds from it.
  virtual Shape input_shape() const = 0;
  virtual Shape output_shape() const = 0;
  virtual std::vector<ParamSpec> param_specs() const { return {}; }
  // True when the output is the input reinterpreted (Flatten): no buffer, no work.
  virtual bool aliases_input() const { return false; }
  // params[i] / grads[i] point into the flat buffers, one per param_specs() entry.
  virtual std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*> params,
                                               std::vector<float*> grads) = 0;
  // Layout-aware plan (the Model's path): x arrives in layout `in` (f32, dimensions [N, input_shape]
  // or any with the same row-major bytes); the plan writes y in the layout it reports in .out.
  // Convolutions take blocked layouts (oneDNN format_tag::any) and pass them on; pooling, ReLU
  // and Flatten keep the layout they receive. Default: make_plan behind a reorder of x and dx to
  // plain when `in` is not plain; y plain.
  virtual Planned<LayerPlan> make_layout_plan(int batch, Executor& exec, std::vector<float*> params,
                                              std::vector<float*> grads, const Layout& in);
  // The same for native 16-bit storage (layouts of data type bf16 or f16); default: make_plan16
  // behind reorders when `in` is not plain.
  virtual Planned<LayerPlan16> make_layout_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                                  std::span<float> stage, const Layout& in);
  // Forward multiply-adds x 2 for one sample.
  virtual double flops_per_sample() const { return 0.0; }

  // True when backward reads state the last training forward left in the plan (the max-pool
  // argmax workspace), so a plan that runs the batch in chunks must redo the chunk's forward.
  virtual bool backward_reads_forward_state() const { return false; }

  // Native 16-bit storage (precision.storage = native, src/layers/native16_plan.cpp): parameters,
  // gradients and activations are u16 buffers (bf16 or fp16 bit patterns; t is empty for a layer
  // without parameters). Where a plan computes in fp32 it decodes into `stage`, shared by all
  // layers of a model (only one layer computes at a time; its content is garbage between calls),
  // and encodes its results back with round-to-nearest-even.
  // Default: make_plan's fp32 plan on the whole parameter and gradient tensors staged as floats,
  // run over the batch in chunks of kStage16ChunkFloats input+output values so the activation
  // staging stays small whatever the batch; the chunks' parameter gradients are summed in fp32.
  virtual std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                                   std::span<float> stage);
  // Floats of `stage` make_plan16 needs; bf16_primitives = t.bf16 && t.bf16_primitives of the
  // Native16Tensors the plan will be made with (bf16 primitives may need no staging). Never
  // larger for a smaller batch, so a stage sized for the training batch serves every plan.
  virtual std::size_t stage16_floats(int batch, bool bf16_primitives) const;
};

// Linear: y = x W^T + b, W [out, in]; `relu` fuses max(y, 0) into the primitive (and its
// backward into a oneDNN eltwise-backward on y).
std::unique_ptr<Layer> make_linear(std::int64_t in, std::int64_t out, bool relu);
// The same over `rows` rows per sample: input [rows, in] -> [rows, out], one GEMM over all
// batch * rows rows (a transformer's [B*T, C] activations). bias = false: y = x W^T, no bias
// tensor. init: the weight's ParamInit (the bias, if any, is zeros unless kaiming_uniform).
std::unique_ptr<Layer> make_linear_rows(std::int64_t rows, std::int64_t in, std::int64_t out, bool bias,
                                        ParamInit init = ParamInit::normal_002);
// Conv2d, stride 1, no padding ("valid"), input [C, H, W]; optional fused ReLU.
std::unique_ptr<Layer> make_conv2d(Shape input, std::int64_t out_channels, std::int64_t kernel, bool relu);
// Max pooling, window = stride = `window`, input [C, H, W].
std::unique_ptr<Layer> make_maxpool2d(Shape input, std::int64_t window);
std::unique_ptr<Layer> make_relu(Shape shape);
std::unique_ptr<Layer> make_flatten(Shape input);

// FP8 compute (precision.compute = fp8, ALGORITHMS.md §1): wraps the plan of a GEMM/conv layer
// whose weight pointer is `quantized`. Forward: quantized = fake_quant_E4M3(master); the input is
// fake-quantized to E4M3 (kept for backward); the inner plan runs on both. Backward: dy is
// fake-quantized to E5M2, the inner plan writes grads (into `grad` for the weight), then the
// straight-through estimator zeroes the weight and input gradients where the forward clamped.
struct Fp8Tensors {
  std::span<const float> master;  // [weights] fp32 shadow weights (the model's flat parameters)
  std::span<float> quantized;     // [weights] what the primitive reads
  std::span<float> grad;          // [weights] gradient of the weight
};
std::unique_ptr<LayerPlan> make_fp8_plan(std::unique_ptr<LayerPlan> inner, std::size_t input_size,
                                         std::size_t output_size, Fp8Tensors weight);

// Emulated standalone 16-bit compute (precision.compute = bf16 | fp16): after the inner plan runs,
// its output (forward), input gradient and parameter gradients (backward) are rounded to the
// 16-bit grid in place. input_size / output_size: elements of x / y for the plan's batch.
std::unique_ptr<LayerPlan> make_half_plan(std::unique_ptr<LayerPlan> inner, std::size_t input_size,
                                          std::size_t output_size, bool bf16, std::vector<std::span<float>> grads);

// Softmax cross-entropy over logits [N, C] and labels [N]: returns the mean loss; writes
// dlogits = (softmax - onehot) / N when dlogits != nullptr. Log-sum-exp subtracts the row max.
// Accuracy helper: number of rows whose argmax equals the label.
float softmax_cross_entropy(const float* logits, const std::int32_t* labels, int n, int classes,
                            float* dlogits);
std::int64_t count_correct(const float* logits, const std::int32_t* labels, int n, int classes);

}  // namespace lowsync::layers
