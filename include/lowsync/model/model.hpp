// Model: a sequence of layers over ONE flat fp32 parameter buffer and ONE flat gradient buffer
// (named views into them), so one collective covers all parameters or all gradients.
// Architectures: mlp 784-512-256-10, cnn conv5x5(1->32)-pool-conv5x5(32->64)-pool-fc1024-512-10,
// gpt the byte-level causal transformer of ALGORITHMS.md §8 (T logit rows per sample).
#pragma once

#include "lowsync/data/batch.hpp"
#include "lowsync/layers/layer.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/model/architecture.hpp"
#include "lowsync/model/param_store.hpp"
#include "lowsync/tensor/tensor.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace lowsync::model {

struct ParamInfo {
  std::string name;                 // "fc1.weight"
  std::vector<std::int64_t> shape;  // weight [out, in] or [out, in, kh, kw]; bias [out]
  std::size_t offset = 0;           // into params() / grads()
  std::size_t count = 0;
};

// loss: mean cross-entropy per logit row (per position for gpt); accuracy: fraction of the
// samples * positions predictions whose argmax is the label; samples: samples evaluated.
struct EvalResult {
  double loss = 0.0;
  double accuracy = 0.0;
  std::int64_t samples = 0;
};

// precision.compute modes the model runs. fp8: fake quantization (layers::make_fp8_plan) of
// weights and GEMM/conv inputs (E4M3) and output gradients (E5M2); params() stay the fp32 master.
// bf16, fp16: standalone 16-bit numerics: parameters, activations and gradients are rounded to
// the 16-bit grid at every store. Storage::float32 keeps them in float buffers
// (layers::make_half_plan); Storage::native16 holds parameters, gradients, activations and
// activation gradients as u16 bit patterns (params16() / grads16(); params() / grads() do not
// exist then) and computes on bf16 primitives or through a small shared fp32 stage
// (Layer::make_plan16); only the logits meet the loss in fp32.
enum class Compute : std::uint8_t { fp32, fp8, bf16, fp16 };
Compute parse_compute(const std::string& name);  // fp32 | fp8 | bf16 | fp16, else lowsync::Error
constexpr bool is_16bit(Compute c) { return c == Compute::bf16 || c == Compute::fp16; }
enum class Storage : std::uint8_t { float32, native16 };

class Model {
 public:
  // arch = "mlp" | "cnn" | "gpt"; batch = training batch per rank (primitives are built for it
  // once). storage = native16 needs a 16-bit compute. options: the gpt sizes (arch_options()).
  // A batch holds batch.size samples of input_shape() and batch.size * positions() labels.
  Model(const std::string& arch, int batch, std::uint64_t seed, Compute compute = Compute::fp32,
        Storage storage = Storage::float32, const ArchOptions& options = {});
  Compute compute() const { return compute_; }
  bool native16() const { return storage_ == Storage::native16; }
  // 16-bit compute: round a buffer (parameters after an update or an average) to the 16-bit grid;
  // no-op otherwise.
  void round_to_compute(std::span<float> x) const;
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::string& arch() const { return arch_; }
  const layers::Shape& input_shape() const { return arch_spec_.input_shape; }  // one sample
  int num_classes() const { return arch_spec_.num_classes; }
  int positions() const { return arch_spec_.positions; }  // logit rows (labels) per sample
  std::span<float> params() { return float_storage(params_); }
  std::span<float> grads() { return float_storage(grads_); }
  // Native 16-bit storage: bf16 or fp16 bit patterns (precision.compute).
  std::span<std::uint16_t> params16() { return native_storage(params16_); }
  std::span<std::uint16_t> grads16() { return native_storage(grads16_); }
  // The parameters and gradients as stored (fp32, or bf16/fp16 bits under native storage): the
  // one entry point of optimizers, strategies and checkpoints.
  ParamStore param_store() {
    return native16() ? ParamStore(params16(), compute_ == Compute::bf16) : ParamStore(params());
  }
  ParamStore grad_store() { return native16() ? ParamStore(grads16(), compute_ == Compute::bf16) : ParamStore(grads()); }
  std::size_t num_params() const { return num_params_; }
  // Bytes of the shared fp32 staging buffer of native 16-bit layers (0 otherwise).
  std::size_t stage16_bytes() const { return stage16_.size() * sizeof(float); }
  // Bytes of the training batch's activation and activation-gradient buffers (the input copy and
  // the logits included): 4 per value with float storage, 2 with native 16-bit storage.
  std::size_t activation_bytes() const;
  const std::vector<ParamInfo>& param_infos() const { return infos_; }
  // Named views into params() / grads() with their shapes.
  std::vector<tensor::Tensor> param_tensors() { return views_of(params_); }
  std::vector<tensor::Tensor> grad_tensors() { return views_of(grads_); }
  int batch() const { return batch_; }

  // Forward + backward on the training batch (size == batch()); gradients are overwritten with
  // d(mean loss)/d(params). Returns the mean loss over batch.size * positions() rows.
  float forward_backward(const data::Batch& batch);
  // Forward only (no gradient); returns the mean loss. Used by zeroth-order training.
  float forward_loss(const data::Batch& batch);
  // Forward only: the fp32 logits [n * positions(), num_classes()] of n samples (valid until the
  // next call; native 16-bit storage: decoded from the 16-bit output).
  std::span<const float> logits(const float* inputs, int n);
  // Loss and accuracy over n samples (labels: n * positions()), in chunks of the evaluation batch
  // (default 1000 samples; for positions() > 1 the training batch, since the activations of a
  // transformer grow with T).
  EvalResult evaluate(const float* images, const std::int32_t* labels, std::int64_t n);
  void set_eval_batch(int n) { eval_batch_ = n; }
  // Re-draw all parameters from `seed`: each tensor as its layers::ParamSpec::init says
  // (Kaiming-uniform for mlp/cnn, like common frameworks; ALGORITHMS.md §8 for gpt).
  void initialize(std::uint64_t seed);
  // FLOPs of one forward pass of one sample (multiply-add = 2).
  double forward_flops_per_sample() const;
  // Primitive timing (benchmarks): accumulated seconds inside oneDNN primitives.
  void set_profiling(bool on);
  double profiled_primitive_seconds() const;
  void reset_profile();

 private:
  struct Plan;  // layer buffers and primitives for one batch size
  // The plan for `batch` samples; backward: with gradient buffers (a forward-only plan of the
  // same size is not reused for training).
  Plan& plan_for(int batch, bool backward);
  void build_plan(Plan& plan);    // float storage
  void build_plan16(Plan& plan);  // native 16-bit storage
  std::vector<tensor::Tensor> views_of(const memory::TrackedBuffer<float>& flat) const;
  std::span<float> float_storage(memory::TrackedBuffer<float>& b);
  std::span<std::uint16_t> native_storage(memory::TrackedBuffer<std::uint16_t>& b);
  // Returns the input the first layer read (the batch, or its 16-bit rounded copy).
  const float* run_forward(Plan& plan, const data::Batch& batch, bool keep_for_backward);
  // Native 16-bit storage: encodes the batch, runs the u16 plans, returns the logits decoded to fp32.
  const float* run_forward16(Plan& plan, const data::Batch& batch, bool training);
  const float* logits_of(Plan& plan, const data::Batch& batch);  // forward only, either storage

  std::string arch_;
  Architecture arch_spec_;  // shapes for the options the model was built with
  int batch_ = 0;
  std::vector<std::unique_ptr<layers::Layer>> layers_;
  std::vector<ParamInfo> infos_;
  std::size_t num_params_ = 0;
  memory::TrackedBuffer<float> params_;
  memory::TrackedBuffer<float> grads_;
  Compute compute_ = Compute::fp32;
  Storage storage_ = Storage::float32;
  memory::TrackedBuffer<std::uint16_t> params16_, grads16_;  // [d] native16 only
  memory::TrackedBuffer<float> stage16_;  // native16: fp32 staging shared by all layers
  memory::TrackedBuffer<float> params_fp8_;  // [d] fp8: fake-quantized weights (bias slots unused)
  layers::Executor exec_;
  std::vector<std::unique_ptr<Plan>> plans_;
  int eval_batch_ = 1000;
};

}  // namespace lowsync::model
