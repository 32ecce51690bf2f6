// Model: builds the layer list of an architecture, lays all parameters out in one flat buffer
// (named views), and runs forward/backward through per-batch-size plans created once.
#include "lowsync/model/model.hpp"

#include "lowsync/model/architecture.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>
#include <cmath>

namespace lowsync::model {

struct Model::Plan {
  int batch = 0;
  bool backward = false;  // has gradient buffers (false: evaluation / forward-only)
  // Float storage: fp32 activations (16-bit compute: rounded to the 16-bit grid).
  std::vector<std::unique_ptr<layers::LayerPlan>> layer_plans;
  std::vector<memory::TrackedBuffer<float>> owned;  // activation and gradient storage
  std::vector<float*> acts;   // acts[i] = input of layer i, acts.back() = logits
  std::vector<float*> diffs;  // diffs[i] = d loss / d acts[i]
  memory::TrackedBuffer<float> input16;  // [N, 1, 28, 28] 16-bit compute: the rounded batch
  // Native 16-bit storage: activations and their gradients as u16 bit patterns; the loss reads
  // and writes the (tiny) logits in fp32.
  std::vector<std::unique_ptr<layers::LayerPlan16>> layer_plans16;  // null for aliasing layers
  std::vector<memory::TrackedBuffer<std::uint16_t>> owned16;
  std::vector<std::uint16_t*> acts16, diffs16;  // as acts / diffs; acts16[0] = the encoded batch
  memory::TrackedBuffer<float> logits, dlogits;  // [N, classes]
};

namespace {
const char* compute_name(Compute c) {
  switch (c) {
    case Compute::fp32: return "fp32";
    case Compute::fp8: return "fp8";
    case Compute::bf16: return "bf16";
    case Compute::fp16: return "fp16";
  }
  return "?";
}
}  // namespace

Compute parse_compute(const std::string& name) {
  if (name == "fp32") return Compute::fp32;
  if (name == "fp8") return Compute::fp8;
  if (name == "bf16") return Compute::bf16;
  if (name == "fp16") return Compute::fp16;
  fail("precision.compute = '{}' is not a model compute mode (fp32|fp8|bf16|fp16)", name);
}

void Model::round_to_compute(std::span<float> x) const {
  if (is_16bit(compute_)) tensor::round_to_16bit(x, compute_ == Compute::bf16);
}

Model::Model(const std::string& arch, int batch, std::uint64_t seed, Compute compute, Storage storage,
             const ArchOptions& options)
    : arch_(arch), batch_(batch), compute_(compute), storage_(storage) {
  if (batch < 1) fail("train.batch must be >= 1, got {}", batch);
  if (storage == Storage::native16 && !is_16bit(compute))
    fail("native 16-bit storage needs precision.compute = bf16 or fp16");
  arch_spec_ = find_architecture(arch, options);
  validate_arch_compute(arch_spec_.name, compute_name(compute));
  layers_ = arch_spec_.build(options);
  if (arch_spec_.positions > 1) eval_batch_ = batch;  // activations grow with T: evaluate at the training batch
  std::size_t offset = 0;
  int linear_index = 0, conv_index = 0, block_index = 0;
  for (const auto& layer : layers_) {
    const auto specs = layer->param_specs();
    if (specs.empty()) continue;
    // conv1.weight, fc1.bias (mlp, cnn; the gpt head is fc1); block0.qkv.weight; embedding.token;
    // layernorm.weight (the final LayerNorm of gpt).
    const std::string& kind = layer->name();
    const std::string prefix = kind.starts_with("conv")    ? fmt::format("conv{}", ++conv_index)
                               : kind.starts_with("linear") ? fmt::format("fc{}", ++linear_index)
                               : kind == "block"            ? fmt::format("block{}", block_index++)
                                                            : kind;
    for (const auto& spec : specs) {
      const auto count = static_cast<std::size_t>(layers::shape_size(spec.shape));
      infos_.push_back({prefix + "." + spec.name, spec.shape, offset, count});
      offset += count;
    }
  }
  num_params_ = offset;
  if (native16()) {
    params16_ = memory::TrackedBuffer<std::uint16_t>("model.params16", offset);
    grads16_ = memory::TrackedBuffer<std::uint16_t>("model.grads16", offset);
    // One staging buffer for all layers: only one layer computes at a time.
    std::size_t stage = 0;
    // bf16: Linear computes on oneDNN bf16 primitives in place and needs none.
    const bool bf16 = compute_ == Compute::bf16;
    for (const auto& layer : layers_)
      if (!layer->aliases_input()) stage = std::max(stage, layer->stage16_floats(batch, bf16));
    stage16_ = memory::TrackedBuffer<float>("model.stage16", stage);
  } else {
    params_ = memory::TrackedBuffer<float>("model.params", offset);
    grads_ = memory::TrackedBuffer<float>("model.grads", offset);
  }
  if (compute_ == Compute::fp8) params_fp8_ = memory::TrackedBuffer<float>("model.params_fp8", offset);
  initialize(seed);
  plan_for(batch_, true);
}

Model::~Model() = default;

void Model::initialize(std::uint64_t seed) {
  // Kaiming-uniform as in common frameworks: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in));
  // the transformer's tensors as ALGORITHMS.md §8 says (normal(0, 0.02), zero biases, LayerNorm
  // weight 1). Every tensor draws from its own stream of the seed.
  std::size_t info = 0;
  for (const auto& layer : layers_) {
    for (const auto& spec : layer->param_specs()) {
      const ParamInfo& p = infos_[info++];
      const float bound = 1.0f / std::sqrt(static_cast<float>(spec.fan_in));
      const std::uint64_t key = stream_key({seed, 0x1417ULL, static_cast<std::uint64_t>(info)});
      const auto value = [&](std::size_t i) {
        switch (spec.init) {
          case layers::ParamInit::normal_002: return 0.02f * normal01(key, i);
          case layers::ParamInit::zeros: return 0.0f;
          case layers::ParamInit::ones: return 1.0f;
          case layers::ParamInit::kaiming_uniform: break;
        }
        return (2.0f * uniform01(key, i) - 1.0f) * bound;
      };
      if (native16()) {
        std::uint16_t* w = params16_.data() + p.offset;
        const bool bf16 = compute_ == Compute::bf16;
        for (std::size_t i = 0; i < p.count; ++i) w[i] = tensor::encode_16bit(value(i), bf16);
      } else {
        float* w = params_.data() + p.offset;
        for (std::size_t i = 0; i < p.count; ++i) w[i] = value(i);
      }
    }
  }
  if (!native16()) round_to_compute(params_.span());
}

std::span<float> Model::float_storage(memory::TrackedBuffer<float>& b) {
  LOWSYNC_ASSERT(!native16(), "float parameter/gradient view of a model with native 16-bit storage");
  return b.span();
}

std::span<std::uint16_t> Model::native_storage(memory::TrackedBuffer<std::uint16_t>& b) {
  LOWSYNC_ASSERT(native16(), "16-bit parameter/gradient view of a model with float storage");
  return b.span();
}

Model::Plan& Model::plan_for(int batch, bool backward) {
  for (auto& p : plans_)
    if (p->batch == batch && (p->backward || !backward)) return *p;
  auto plan = std::make_unique<Plan>();
  plan->batch = batch;
  plan->backward = backward;
  if (native16())
    build_plan16(*plan);
  else
    build_plan(*plan);
  plans_.push_back(std::move(plan));
  return *plans_.back();
}

// Plans are made first to last, each given the layout the previous one writes (the batch's plain
// [N, C, H, W] for the first), so convolutions hand blocked activations to the pooling after them
// and only the layers that need plain data reorder (layers::Layer::make_layout_plan); every
// buffer is sized by its layout. The logits must come out plain for the loss.
void Model::build_plan(Plan& plan) {
  const int batch = plan.batch;
  const auto n = static_cast<std::size_t>(batch);
  // acts[0] is the caller's input; every non-aliasing layer owns its output and its input gradient.
  plan.acts.assign(layers_.size() + 1, nullptr);
  plan.diffs.assign(layers_.size() + 1, nullptr);
  layers::Layout in = layers::plain_layout(batch, arch_spec_.input_shape, dnnl::memory::data_type::f32);
  std::size_t info = 0;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const auto& layer = layers_[i];
    std::vector<float*> ps, gs;
    const std::size_t first = info;
    for (std::size_t k = 0; k < layer->param_specs().size(); ++k, ++info) {
      ps.push_back(params_.data() + infos_[info].offset);
      gs.push_back(grads_.data() + infos_[info].offset);
    }
    const std::size_t in_floats = in.get_size() / sizeof(float);
    if (compute_ == Compute::fp8 && !ps.empty()) {
      // The primitive reads the fake-quantized weight (param 0); the bias stays fp32. The wrapper
      // works elementwise, so it takes the inner plan's layouts as they are.
      const ParamInfo& w = infos_[first];
      ps[0] = params_fp8_.data() + w.offset;
      auto inner = layer->make_layout_plan(batch, exec_, ps, gs, in);
      plan.layer_plans.push_back(layers::make_fp8_plan(
          std::move(inner.plan), in_floats, inner.out.get_size() / sizeof(float),
          {{params_.data() + w.offset, w.count}, {params_fp8_.data() + w.offset, w.count},
           {grads_.data() + w.offset, w.count}}));
      in = inner.out;
    } else if (is_16bit(compute_) && !layer->aliases_input()) {
      std::vector<std::span<float>> grad_spans;
      for (std::size_t k = first; k < info; ++k) grad_spans.push_back({grads_.data() + infos_[k].offset, infos_[k].count});
      auto inner = layer->make_layout_plan(batch, exec_, ps, gs, in);
      plan.layer_plans.push_back(layers::make_half_plan(std::move(inner.plan), in_floats,
                                                        inner.out.get_size() / sizeof(float),
                                                        compute_ == Compute::bf16, std::move(grad_spans)));
      in = inner.out;
    } else {
      auto planned = layer->make_layout_plan(batch, exec_, ps, gs, in);
      plan.layer_plans.push_back(std::move(planned.plan));
      in = planned.out;
    }
    if (layer->aliases_input()) {
      plan.acts[i + 1] = plan.acts[i];  // patched at run time for i == 0
      plan.diffs[i + 1] = plan.diffs[i];  // Flatten after a real layer aliases its diff too
      continue;
    }
    const std::size_t floats = in.get_size() / sizeof(float);
    plan.owned.emplace_back(fmt::format("model.act{}", i), floats);
    plan.acts[i + 1] = plan.owned.back().data();
    if (plan.backward) {
      plan.owned.emplace_back(fmt::format("model.diff{}", i), floats);
      plan.diffs[i + 1] = plan.owned.back().data();
    }
  }
  LOWSYNC_ASSERT(layers::is_plain(in) && in.get_size() == n * arch_spec_.num_classes * arch_spec_.positions * sizeof(float),
                 "the last layer of {} does not write plain [N, classes] logits", arch_);
  if (is_16bit(compute_))
    plan.input16 = memory::TrackedBuffer<float>("model.input16", n * layers::shape_size(arch_spec_.input_shape));
}

void Model::build_plan16(Plan& plan) {
  const auto n = static_cast<std::size_t>(plan.batch);
  const bool bf16 = compute_ == Compute::bf16;
  plan.owned16.emplace_back("model.input16", n * layers::shape_size(arch_spec_.input_shape));
  plan.acts16.assign(layers_.size() + 1, nullptr);
  plan.diffs16.assign(layers_.size() + 1, nullptr);
  plan.acts16[0] = plan.owned16.back().data();
  const std::size_t logits = n * arch_spec_.num_classes * arch_spec_.positions;
  plan.logits = memory::TrackedBuffer<float>("model.logits", logits);
  if (plan.backward) plan.dlogits = memory::TrackedBuffer<float>("model.dlogits", logits);

  using dt = dnnl::memory::data_type;
  layers::Layout in = layers::plain_layout(plan.batch, arch_spec_.input_shape, bf16 ? dt::bf16 : dt::f16);
  std::size_t info = 0;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const auto& layer = layers_[i];
    layers::Native16Tensors t;
    t.bf16 = bf16;
    for (std::size_t k = 0; k < layer->param_specs().size(); ++k, ++info) {
      t.params.push_back(params16_.data() + infos_[info].offset);
      t.grads.push_back(grads16_.data() + infos_[info].offset);
    }
    if (layer->aliases_input()) {  // the layout passes through, as does the buffer
      plan.layer_plans16.push_back(nullptr);
      plan.acts16[i + 1] = plan.acts16[i];
      plan.diffs16[i + 1] = plan.diffs16[i];
      continue;
    }
    const std::size_t stage_floats = layer->stage16_floats(plan.batch, t.bf16 && t.bf16_primitives);
    LOWSYNC_ASSERT(stage_floats <= stage16_.size(), "16-bit staging of {} floats, {} allocated", stage_floats,
                   stage16_.size());
    auto planned = layer->make_layout_plan16(plan.batch, exec_, t, stage16_.span(), in);
    plan.layer_plans16.push_back(std::move(planned.plan));
    in = planned.out;
    const std::size_t size = in.get_size() / sizeof(std::uint16_t);
    plan.owned16.emplace_back(fmt::format("model.act{}", i), size);
    plan.acts16[i + 1] = plan.owned16.back().data();
    if (plan.backward) {
      plan.owned16.emplace_back(fmt::format("model.diff{}", i), size);
      plan.diffs16[i + 1] = plan.owned16.back().data();
    }
  }
  LOWSYNC_ASSERT(layers::is_plain(in) && in.get_size() == n * arch_spec_.num_classes * arch_spec_.positions * sizeof(std::uint16_t),
                 "the last layer of {} does not write plain [N, classes] logits", arch_);
}

const float* Model::run_forward(Plan& plan, const data::Batch& batch, bool training) {
  LOWSYNC_ASSERT(batch.size == plan.batch, "batch of {} on a plan for {}", batch.size, plan.batch);
  const float* x = batch.images;
  if (is_16bit(compute_)) {  // inputs are cast to 16 bits (ALGORITHMS.md §3)
    std::copy(batch.images, batch.images + plan.input16.size(), plan.input16.data());
    round_to_compute(plan.input16.span());
    x = plan.input16.data();
  }
  const float* input = x;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    float* y = layers_[i]->aliases_input() ? const_cast<float*>(x) : plan.acts[i + 1];
    plan.layer_plans[i]->forward(x, y, training);
    x = y;
  }
  return input;
}

const float* Model::run_forward16(Plan& plan, const data::Batch& batch, bool training) {
  LOWSYNC_ASSERT(batch.size == plan.batch, "batch of {} on a plan for {}", batch.size, plan.batch);
  const bool bf16 = compute_ == Compute::bf16;
  const auto input_size = static_cast<std::size_t>(batch.size) * layers::shape_size(arch_spec_.input_shape);
  tensor::encode_16bit({batch.images, input_size}, {plan.acts16[0], input_size}, bf16);
  for (std::size_t i = 0; i < layers_.size(); ++i)
    if (!layers_[i]->aliases_input()) plan.layer_plans16[i]->forward(plan.acts16[i], plan.acts16[i + 1], training);
  tensor::decode_16bit({plan.acts16.back(), plan.logits.size()}, plan.logits.span(), bf16);
  return plan.logits.data();
}

float Model::forward_backward(const data::Batch& batch) {
  Plan& plan = plan_for(batch.size, true);
  const std::size_t n = layers_.size();
  const int rows = batch.size * arch_spec_.positions;  // logit rows, one label each
  // No layer before layer i has parameters or a gradient to receive: it needs no dx.
  auto dx_needed = [&](std::size_t i) {
    for (std::size_t j = 0; j < i; ++j)
      if (!layers_[j]->param_specs().empty()) return true;
    return false;
  };
  if (native16()) {
    const float* logits = run_forward16(plan, batch, true);
    const float loss = layers::softmax_cross_entropy(logits, batch.labels, rows, arch_spec_.num_classes, plan.dlogits.data());
    tensor::encode_16bit(plan.dlogits.span(), {plan.diffs16[n], plan.dlogits.size()}, compute_ == Compute::bf16);
    for (std::size_t i = n; i-- > 0;) {
      if (layers_[i]->aliases_input()) continue;
      plan.layer_plans16[i]->backward(plan.acts16[i], plan.acts16[i + 1], plan.diffs16[i + 1],
                                      dx_needed(i) ? plan.diffs16[i] : nullptr);
    }
    return loss;
  }
  const float* input = run_forward(plan, batch, true);
  // Resolve the aliases of this call (the first layers may alias the caller's images).
  std::vector<const float*> ins(n + 1);
  ins[0] = input;
  for (std::size_t i = 0; i < n; ++i) ins[i + 1] = layers_[i]->aliases_input() ? ins[i] : plan.acts[i + 1];
  const float loss = layers::softmax_cross_entropy(ins[n], batch.labels, rows, arch_spec_.num_classes, plan.diffs[n]);
  if (is_16bit(compute_)) round_to_compute({plan.diffs[n], static_cast<std::size_t>(rows) * arch_spec_.num_classes});
  for (std::size_t i = n; i-- > 0;) {
    if (layers_[i]->aliases_input()) continue;
    plan.layer_plans[i]->backward(ins[i], ins[i + 1], plan.diffs[i + 1], dx_needed(i) ? plan.diffs[i] : nullptr);
  }
  return loss;
}

float Model::forward_loss(const data::Batch& batch) {
  Plan& plan = plan_for(batch.size, false);
  const float* logits = logits_of(plan, batch);
  return layers::softmax_cross_entropy(logits, batch.labels, batch.size * arch_spec_.positions, arch_spec_.num_classes,
                                      nullptr);
}

const float* Model::logits_of(Plan& plan, const data::Batch& batch) {
  if (native16()) return run_forward16(plan, batch, false);
  const float* input = run_forward(plan, batch, false);
  return plan.acts.back() != nullptr ? plan.acts.back() : input;
}

std::span<const float> Model::logits(const float* inputs, int n) {
  if (n < 1 || (native16() && n > batch_))  // native 16-bit: the stage is sized for the training batch
    fail("logits of {} samples (1..{})", n, native16() ? batch_ : n);
  Plan& plan = plan_for(n, false);
  const float* out = logits_of(plan, {inputs, nullptr, n});
  return {out, static_cast<std::size_t>(n) * arch_spec_.positions * arch_spec_.num_classes};
}

EvalResult Model::evaluate(const float* images, const std::int32_t* labels, std::int64_t n) {
  EvalResult r;
  if (n <= 0) return r;
  double loss_sum = 0.0;
  std::int64_t correct = 0;
  const std::int64_t sample = layers::shape_size(arch_spec_.input_shape);
  const std::int64_t positions = arch_spec_.positions;
  // Native 16-bit storage: the stage is sized for the training batch (plans of up to that size).
  const int eval_chunk = native16() ? std::min(eval_batch_, batch_) : eval_batch_;
  for (std::int64_t first = 0; first < n;) {
    const int chunk = static_cast<int>(std::min<std::int64_t>(n - first, eval_chunk));
    Plan& plan = plan_for(chunk, false);
    const data::Batch b{images + first * sample, labels + first * positions, chunk};
    const float* logits = logits_of(plan, b);
    const int rows = chunk * positions;
    // Every sample has the same number of rows: the mean over chunks weighted by samples is the
    // mean per row.
    loss_sum += static_cast<double>(layers::softmax_cross_entropy(logits, b.labels, rows, arch_spec_.num_classes, nullptr)) * chunk;
    correct += layers::count_correct(logits, b.labels, rows, arch_spec_.num_classes);
    first += chunk;
  }
  r.samples = n;
  r.loss = loss_sum / static_cast<double>(n);
  r.accuracy = static_cast<double>(correct) / (static_cast<double>(n) * positions);
  return r;
}

std::size_t Model::activation_bytes() const {
  const Plan& plan = *plans_.front();  // the training batch's, made by the constructor
  std::size_t bytes = (plan.input16.size() + plan.logits.size() + plan.dlogits.size()) * sizeof(float);
  for (const auto& b : plan.owned) bytes += b.size() * sizeof(float);
  for (const auto& b : plan.owned16) bytes += b.size() * sizeof(std::uint16_t);
  return bytes;
}

double Model::forward_flops_per_sample() const {
  double f = 0.0;
  for (const auto& l : layers_) f += l->flops_per_sample();
  return f;
}

std::vector<tensor::Tensor> Model::views_of(const memory::TrackedBuffer<float>& flat) const {
  LOWSYNC_ASSERT(!native16(), "float tensor views of a model with native 16-bit storage");
  std::vector<tensor::Tensor> out;
  for (const auto& p : infos_)
    out.push_back({p.name, tensor::Tensor::View(flat.data() + p.offset, p.count), p.shape, DType::f32});
  return out;
}

void Model::set_profiling(bool on) { exec_.set_profiling(on); }
double Model::profiled_primitive_seconds() const { return exec_.primitive_seconds(); }
void Model::reset_profile() { exec_.reset_profile(); }

}  // namespace lowsync::model
