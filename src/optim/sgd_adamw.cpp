// SGD (momentum, L2 weight decay as in torch.optim.SGD) and AdamW (decoupled weight decay,
// bias-corrected moments, as in torch.optim.AdamW) as Kokkos kernels over the flat buffers.
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/tensor/half.hpp"
#include "lowsync/optim/optimizer.hpp"

#include <Kokkos_Core.hpp>

#include <cmath>

namespace lowsync::optim {
namespace {

using Policy = Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>;

// Storage of parameters and optimizer state (precision.compute, precision.storage): fp32, or
// standalone 16-bit (ALGORITHMS.md §3) with no fp32 master copy: every stored value rounded to
// nearest-even on the 16-bit grid, the arithmetic of one update in fp32 registers. The 16-bit
// values live either in float buffers (emulated: `Rounded`) or as u16 bit patterns (native:
// `Bits`); both run the same kernel, so the two storages give bitwise the same values.
// precision.update_rounding = stochastic rounds the updated parameter (only it: the state keeps
// nearest-even) stochastically, so an update below half an ulp of the weight survives in
// expectation; the uniform of element i is drawn from (train.seed, step, i), the same on every
// rank, so replicas that agree (allreduce) stay bitwise identical.
enum class Storage : std::uint8_t { fp32, bf16, fp16 };

struct StochasticParams {
  bool on = false;
  std::uint64_t key = 0;  // stream of this step
  // SplitMix64 at counter i of the step's stream: one mix per parameter (uniform01's two mixes
  // cost as much as the rest of the update), 24 bits of u.
  float u(std::size_t i) const {
    return static_cast<float>(mix64(key + static_cast<std::uint64_t>(i) * 0x9e3779b97f4a7c15ULL) >> 40) *
           (1.0f / 16777216.0f);
  }
};

// precision.update_rounding of one optimizer: the stream of a step is keyed by the steps taken
// before it (a checkpointed count, so a resumed run draws the same uniforms).
struct UpdateRounding {
  bool stochastic = false;
  std::uint64_t seed = 0;
  StochasticParams at(std::int64_t steps_before) const {
    return {stochastic, stream_key({seed, 0x5352ULL, static_cast<std::uint64_t>(steps_before)})};
  }
};

// Stochastic: whether put_param rounds stochastically (a template parameter, so the nearest-even
// kernels stay as tight as before).
template <bool Stochastic>
struct Rounded {  // float buffers, rounded to the 16-bit grid at every store (or not, for fp32)
  using T = float;
  Storage s;
  StochasticParams sr;
  float load(float x) const { return x; }
  float put(float x) const {
    if (s == Storage::bf16) return tensor::bf16_round(x);
    if (s == Storage::fp16) return tensor::fp16_round(x);
    return x;
  }
  float put_param(float x, std::size_t i) const {
    if constexpr (!Stochastic) {
      return put(x);
    } else {
      const bool bf16 = s == Storage::bf16;
      const std::uint16_t h = tensor::encode_16bit_stochastic(x, sr.u(i), bf16);
      return tensor::decode_16bit(h, bf16);
    }
  }
};

// Native 16-bit storage: bf16 or fp16 bit patterns. The format is a template parameter, not a
// per-element flag, so the update loops have no branch in them and vectorise (with
// -fno-math-errno for the sqrt, CMakeLists.txt): the scalar bf16 AdamW was 8.5% of a gpt step.
template <bool Stochastic, bool Bf16>
struct Bits {
  using T = std::uint16_t;
  StochasticParams sr;
  float load(T h) const {
    if constexpr (Bf16)
      return tensor::bf16_decode(h);
    else
      return tensor::fp16_decode(h);
  }
  T put(float x) const {
    if constexpr (Bf16)
      return tensor::bf16_encode(x);
    else
      return tensor::fp16_encode(x);
  }
  T put_param(float x, std::size_t i) const {
    if constexpr (!Stochastic)
      return put(x);
    else
      return tensor::encode_16bit_stochastic(x, sr.u(i), Bf16);
  }
};
template <bool Stochastic>
using BitsBf16 = Bits<Stochastic, true>;
template <bool Stochastic>
using BitsFp16 = Bits<Stochastic, false>;

// Runs f with the storage policy P<false> or P<true> (stochastic parameter rounding).
template <template <bool> class P, class... Args, class F>
void with_rounding(const StochasticParams& sr, F&& f, Args... args) {
  if (sr.on)
    f(P<true>{args..., sr});
  else
    f(P<false>{args..., sr});
}

// SGD with momentum mu and L2 weight decay wd (torch.optim.SGD); v == nullptr: no momentum.
template <class S>
void sgd_update(S st, typename S::T* w, const typename S::T* g, typename S::T* v, std::size_t n, float lr, float wd,
                float mu) {
  if (v == nullptr) {
    Kokkos::parallel_for("sgd", Policy(0, n), [=](const std::size_t i) {
      const float wi = st.load(w[i]);
      w[i] = st.put_param(wi - lr * (st.load(g[i]) + wd * wi), i);
    });
    return;
  }
  Kokkos::parallel_for("sgd_momentum", Policy(0, n), [=](const std::size_t i) {
    const float wi = st.load(w[i]);
    const auto vi = st.put(mu * st.load(v[i]) + (st.load(g[i]) + wd * wi));
    v[i] = vi;
    w[i] = st.put_param(wi - lr * st.load(vi), i);
  });
}

struct AdamCoeffs {
  float b1, b2, lr, eps, decay, c1, c2;
};

// AdamW (torch.optim.AdamW): sqrt(v) + eps and the division run in fp32 registers; only the
// stores are 16-bit.
template <class S>
void adamw_update(S st, typename S::T* w, const typename S::T* g, typename S::T* m, typename S::T* v, std::size_t n,
                  AdamCoeffs k) {
  Kokkos::parallel_for("adamw", Policy(0, n), [=](const std::size_t i) {
    const float gi = st.load(g[i]);
    const auto mi = st.put(k.b1 * st.load(m[i]) + (1.0f - k.b1) * gi);
    const auto vi = st.put(k.b2 * st.load(v[i]) + (1.0f - k.b2) * gi * gi);
    m[i] = mi;
    v[i] = vi;
    w[i] = st.put_param(st.load(w[i]) * k.decay - k.lr * (st.load(mi) * k.c1) / (std::sqrt(st.load(vi)) * k.c2 + k.eps),
                        i);
  });
}

// A state buffer in whichever storage the optimizer was made for.
struct StateStore {
  memory::TrackedBuffer<float> f;
  memory::TrackedBuffer<std::uint16_t> h;
  StateStore() = default;
  StateStore(const char* name, std::size_t n, bool native16) {
    if (native16)
      h = memory::TrackedBuffer<std::uint16_t>(name, n);  // zero bits = +0 in bf16 and fp16
    else
      f = memory::TrackedBuffer<float>(name, n);
  }
  model::ParamStore store(Storage s) {
    return h.size() > 0 ? model::ParamStore(h.span(), s == Storage::bf16) : model::ParamStore(f.span());
  }
};

// The stores an optimizer gets must be the storage it was made for (native16: bit patterns of
// its compute dtype), and of one length.
void check_storage(const model::ParamStore& params, const model::ParamStore& grads, bool native16, Storage storage) {
  const auto expected = !native16 ? model::StoreDType::fp32
                        : storage == Storage::bf16 ? model::StoreDType::bf16 : model::StoreDType::fp16;
  if (params.dtype() != expected || grads.dtype() != expected)
    fail("optimizer made for {} storage stepped with {} parameters and {} gradients", model::store_dtype_name(expected),
         model::store_dtype_name(params.dtype()), model::store_dtype_name(grads.dtype()));
  if (params.size() != grads.size()) fail("optimizer step: {} parameters but {} gradients", params.size(), grads.size());
}

class Sgd final : public Optimizer {
 public:
  Sgd(double lr, double momentum, double weight_decay, std::size_t n, Storage storage, bool native16,
      UpdateRounding rounding = {})
      : momentum_(static_cast<float>(momentum)), weight_decay_(static_cast<float>(weight_decay)), storage_(storage),
        native16_(native16), rounding_(rounding) {
    lr_ = lr;
    if (momentum > 0.0) velocity_ = StateStore("sgd.momentum", n, native16);
  }
  std::string_view name() const override { return "sgd"; }
  void step(model::ParamStore params, model::ParamStore grads) override {
    check_storage(params, grads, native16_, storage_);
    const float lr = static_cast<float>(lr_);
    if (native16_) {
      std::uint16_t* v = momentum() ? velocity_.h.data() : nullptr;
      const auto update = [&](auto st) {
        sgd_update(st, params.bits().data(), grads.bits().data(), v, params.size(), lr, weight_decay_, momentum_);
      };
      if (storage_ == Storage::bf16)
        with_rounding<BitsBf16>(rounding_.at(step_count_), update);
      else
        with_rounding<BitsFp16>(rounding_.at(step_count_), update);
    } else {
      float* v = momentum() ? velocity_.f.data() : nullptr;
      with_rounding<Rounded>(rounding_.at(step_count_), [&](auto st) {
        sgd_update(st, params.fp32().data(), grads.fp32().data(), v, params.size(), lr, weight_decay_, momentum_);
      }, storage_);
    }
    ++step_count_;
  }
  std::vector<StateBuffer> state() override {
    if (!momentum()) return {};
    return {{"momentum", velocity_.store(storage_)}};
  }

 private:
  bool momentum() const { return momentum_ > 0.0f; }
  float momentum_, weight_decay_;
  Storage storage_;
  bool native16_;
  UpdateRounding rounding_;
  StateStore velocity_;
};

class AdamW final : public Optimizer {
 public:
  AdamW(double lr, double beta1, double beta2, double eps, double weight_decay, std::size_t n, Storage storage,
        bool native16, UpdateRounding rounding = {})
      : beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay), storage_(storage), native16_(native16),
        rounding_(rounding), m_("adamw.m", n, native16), v_("adamw.v", n, native16) {
    lr_ = lr;
  }
  std::string_view name() const override { return "adamw"; }
  void step(model::ParamStore params, model::ParamStore grads) override {
    check_storage(params, grads, native16_, storage_);
    const StochasticParams sr = rounding_.at(step_count_);  // before next_coeffs counts this step
    const AdamCoeffs k = next_coeffs();
    if (native16_) {
      const auto update = [&](auto st) {
        adamw_update(st, params.bits().data(), grads.bits().data(), m_.h.data(), v_.h.data(), params.size(), k);
      };
      if (storage_ == Storage::bf16)
        with_rounding<BitsBf16>(sr, update);
      else
        with_rounding<BitsFp16>(sr, update);
    } else {
      with_rounding<Rounded>(sr, [&](auto st) {
        adamw_update(st, params.fp32().data(), grads.fp32().data(), m_.f.data(), v_.f.data(), params.size(), k);
      }, storage_);
    }
  }
  std::vector<StateBuffer> state() override {
    return {{"adam_m", m_.store(storage_)}, {"adam_v", v_.store(storage_)}};
  }

 private:
  AdamCoeffs next_coeffs() {
    ++step_count_;
    const double t = static_cast<double>(step_count_);
    return {static_cast<float>(beta1_),
            static_cast<float>(beta2_),
            static_cast<float>(lr_),
            static_cast<float>(eps_),
            static_cast<float>(1.0 - lr_ * weight_decay_),
            static_cast<float>(1.0 / (1.0 - std::pow(beta1_, t))),
            static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(beta2_, t)))};
  }
  double beta1_, beta2_, eps_, weight_decay_;
  Storage storage_;
  bool native16_;
  UpdateRounding rounding_;
  StateStore m_, v_;
};

// A strategy that owns the update (DeMo) applies it itself; the learner never calls this.
class NoUpdate final : public Optimizer {
 public:
  NoUpdate(double lr, std::string_view name) : name_(name) { lr_ = lr; }
  std::string_view name() const override { return name_; }
  void step(model::ParamStore, model::ParamStore) override { ++step_count_; }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const config::Config& cfg, std::size_t num_params, bool native16) {
  const std::string& name = cfg.string("optim.name");
  const double lr = cfg.real("optim.lr");
  const std::string& compute = cfg.string("precision.compute");
  const Storage storage = compute == "bf16" ? Storage::bf16 : compute == "fp16" ? Storage::fp16 : Storage::fp32;
  if (native16 && storage == Storage::fp32) fail("native 16-bit optimizer state needs precision.compute = bf16 or fp16");
  if (native16 && name != "sgd" && name != "adamw") fail("optim.name = '{}' has no native 16-bit storage", name);
  const UpdateRounding rounding{cfg.string("precision.update_rounding") == "stochastic",
                                static_cast<std::uint64_t>(cfg.integer("train.seed"))};
  if (rounding.stochastic && storage == Storage::fp32)
    fail("precision.update_rounding = \"stochastic\" rounds 16-bit parameters: it needs precision.compute = bf16 or "
         "fp16, not {}", compute);
  if (rounding.stochastic && name != "sgd" && name != "adamw")
    fail("precision.update_rounding = \"stochastic\" applies to optim.name = sgd | adamw, not {} (DeMo keeps its "
         "parameters fp32)", name);
  if (name == "sgd")
    return std::make_unique<Sgd>(lr, cfg.real("optim.momentum"), cfg.real("optim.weight_decay"), num_params, storage,
                                 native16, rounding);
  if (name == "adamw") {
    double eps = cfg.real("optim.eps");
    // 1e-8 is below the fp16 subnormal floor and v = g^2 underflows for |g| < 2.4e-4, so
    // m / (sqrt(v) + eps) explodes (ALGORITHMS.md §3): 16-bit Adam uses eps >= 1e-4.
    if (storage != Storage::fp32 && eps < 1e-4) {
      log::info("optim.eps = {} raised to 1e-4 for {} compute (16-bit Adam)", eps, compute);
      eps = 1e-4;
    }
    return std::make_unique<AdamW>(lr, cfg.real("optim.beta1"), cfg.real("optim.beta2"), eps,
                                   cfg.real("optim.weight_decay"), num_params, storage, native16, rounding);
  }
  fail("optim.name = '{}' is not available in this build", name);
}

std::unique_ptr<Optimizer> make_no_update(double lr, std::string_view name) {
  return std::make_unique<NoUpdate>(lr, name);
}

std::unique_ptr<Optimizer> make_zo_update(const config::Config& cfg, std::size_t num_values) {
  const std::string& update = cfg.string("optim.zo.update");
  const double lr = cfg.real("optim.lr");
  if (update == "sgd")
    return std::make_unique<Sgd>(lr, cfg.real("optim.momentum"), cfg.real("optim.weight_decay"), num_values, Storage::fp32,
                                 false);
  return std::make_unique<AdamW>(lr, cfg.real("optim.beta1"), cfg.real("optim.beta2"), cfg.real("optim.eps"),
                                 cfg.real("optim.weight_decay"), num_values, Storage::fp32, false);  // zo is fp32 only
}

}  // namespace lowsync::optim
