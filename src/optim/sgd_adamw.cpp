// SGD (momentum, L2 weight decay as in torch.optim.SGD) and AdamW (decoupled weight decay,
// bias-corrected moments, as in torch.optim.AdamW) as Kokkos kernels over the flat buffers.
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/tensor/half.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <Kokkos_Core.hpp>

#include <cmath>

namespace lowsync::optim {
namespace {

using Policy = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;

// Storage of parameters and optimizer state (precision.compute): fp32, or standalone 16-bit
// (ALGORITHMS.md §3): every stored value rounded to nearest-even on the 16-bit grid, the
// arithmetic of one update in fp32 registers, no fp32 master copy.
enum class Storage : std::uint8_t { fp32, bf16, fp16 };

inline float store(float x, Storage s) {
  if (s == Storage::bf16) return tensor::bf16_round(x);
  if (s == Storage::fp16) return tensor::fp16_round(x);
  return x;
}

class Sgd final : public Optimizer {
 public:
  Sgd(double lr, double momentum, double weight_decay, std::size_t n, Storage storage)
      : momentum_(static_cast<float>(momentum)), weight_decay_(static_cast<float>(weight_decay)), storage_(storage) {
    lr_ = lr;
    if (momentum > 0.0) velocity_ = memory::TrackedBuffer<float>("sgd.momentum", n);
  }
  std::string_view name() const override { return "sgd"; }
  void step(std::span<float> params, std::span<const float> grads) override {
    float* w = params.data();
    const float* g = grads.data();
    const float lr = static_cast<float>(lr_), wd = weight_decay_, mu = momentum_;
    const std::size_t n = params.size();
    const Storage st = storage_;
    if (velocity_.size() == 0) {
      Kokkos::parallel_for("sgd", Policy(0, n), [=](const std::size_t i) { w[i] = store(w[i] - lr * (g[i] + wd * w[i]), st); });
    } else {
      float* v = velocity_.data();
      Kokkos::parallel_for("sgd_momentum", Policy(0, n), [=](const std::size_t i) {
        v[i] = store(mu * v[i] + (g[i] + wd * w[i]), st);
        w[i] = store(w[i] - lr * v[i], st);
      });
    }
    ++step_count_;
  }
  std::vector<StateBuffer> state() override {
    if (velocity_.size() == 0) return {};
    return {{"momentum", velocity_.span()}};
  }

 private:
  float momentum_, weight_decay_;
  Storage storage_;
  memory::TrackedBuffer<float> velocity_;
};

class AdamW final : public Optimizer {
 public:
  AdamW(double lr, double beta1, double beta2, double eps, double weight_decay, std::size_t n, Storage storage)
      : beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay), storage_(storage),
        m_("adamw.m", n), v_("adamw.v", n) {
    lr_ = lr;
  }
  std::string_view name() const override { return "adamw"; }
  void step(std::span<float> params, std::span<const float> grads) override {
    ++step_count_;
    const double t = static_cast<double>(step_count_);
    const float b1 = static_cast<float>(beta1_), b2 = static_cast<float>(beta2_);
    const float lr = static_cast<float>(lr_), eps = static_cast<float>(eps_);
    const float decay = static_cast<float>(1.0 - lr_ * weight_decay_);
    const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(beta1_, t)));
    const float c2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(beta2_, t)));
    float* w = params.data();
    const float* g = grads.data();
    float* m = m_.data();
    float* v = v_.data();
    const Storage st = storage_;
    // sqrt(v) + eps and the division run in fp32 registers; only the stores are 16-bit.
    Kokkos::parallel_for("adamw", Policy(0, params.size()), [=](const std::size_t i) {
      m[i] = store(b1 * m[i] + (1.0f - b1) * g[i], st);
      v[i] = store(b2 * v[i] + (1.0f - b2) * g[i] * g[i], st);
      w[i] = store(w[i] * decay - lr * (m[i] * c1) / (std::sqrt(v[i]) * c2 + eps), st);
    });
  }
  std::vector<StateBuffer> state() override { return {{"adam_m", m_.span()}, {"adam_v", v_.span()}}; }

 private:
  double beta1_, beta2_, eps_, weight_decay_;
  Storage storage_;
  memory::TrackedBuffer<float> m_, v_;
};

// DeMo applies its own update (the strategy owns it); the trainer never calls this.
class NoUpdate final : public Optimizer {
 public:
  explicit NoUpdate(double lr) { lr_ = lr; }
  std::string_view name() const override { return "demo"; }
  void step(std::span<float>, std::span<const float>) override { ++step_count_; }
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const config::Config& cfg, std::size_t num_params) {
  const std::string& name = cfg.string("sync.strategy") == "demo" ? std::string("demo") : cfg.string("optim.name");
  const double lr = cfg.real("optim.lr");
  const std::string& compute = cfg.string("precision.compute");
  const Storage storage = compute == "bf16" ? Storage::bf16 : compute == "fp16" ? Storage::fp16 : Storage::fp32;
  if (name == "sgd")
    return std::make_unique<Sgd>(lr, cfg.real("optim.momentum"), cfg.real("optim.weight_decay"), num_params, storage);
  if (name == "adamw") {
    double eps = cfg.real("optim.eps");
    // 1e-8 is below the fp16 subnormal floor and v = g^2 underflows for |g| < 2.4e-4, so
    // m / (sqrt(v) + eps) explodes (ALGORITHMS.md §3): 16-bit Adam uses eps >= 1e-4.
    if (storage != Storage::fp32 && eps < 1e-4) {
      log::info("optim.eps = {} raised to 1e-4 for {} compute (16-bit Adam)", eps, compute);
      eps = 1e-4;
    }
    return std::make_unique<AdamW>(lr, cfg.real("optim.beta1"), cfg.real("optim.beta2"), eps,
                                   cfg.real("optim.weight_decay"), num_params, storage);
  }
  if (name == "demo") return std::make_unique<NoUpdate>(lr);
  fail("optim.name = '{}' is not available in this build", name);
}

std::unique_ptr<Optimizer> make_zo_update(const config::Config& cfg, std::size_t num_values) {
  const std::string& update = cfg.string("optim.zo.update");
  const double lr = cfg.real("optim.lr");
  if (update == "sgd")
    return std::make_unique<Sgd>(lr, cfg.real("optim.momentum"), cfg.real("optim.weight_decay"), num_values, Storage::fp32);
  return std::make_unique<AdamW>(lr, cfg.real("optim.beta1"), cfg.real("optim.beta2"), cfg.real("optim.eps"),
                                 cfg.real("optim.weight_decay"), num_values, Storage::fp32);  // zo is fp32 only
}

}  // namespace lowsync::optim
