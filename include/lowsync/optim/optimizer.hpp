// Optimizer interface: one update of the flat parameter buffer from the flat gradient buffer, as
// Kokkos kernels. State lives in flat buffers of the same length, exposed by name so that
// strategies (periodic averaging) and checkpoints can reach it without knowing the optimizer.
#pragma once

#include "lowsync/config/config.hpp"
#include "lowsync/model/param_store.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::optim {

// A state buffer by name ("momentum", "adam_m", "adam_v"), as stored: same length and dtype as
// the parameters.
using StateBuffer = model::NamedStore;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string_view name() const = 0;
  // params[i] -= update(grads[i]); grads is the (already synchronised) gradient. Both stores
  // have the storage the optimizer was made for (make_optimizer's native16: 16-bit bit patterns).
  virtual void step(model::ParamStore params, model::ParamStore grads) = 0;
  // The state buffers, stored like the parameters.
  virtual std::vector<StateBuffer> state() { return {}; }
  std::int64_t step_count() const { return step_count_; }
  void set_step_count(std::int64_t n) { step_count_ = n; }
  double learning_rate() const { return lr_; }
  void set_learning_rate(double lr) { lr_ = lr; }

 protected:
  std::int64_t step_count_ = 0;
  double lr_ = 0.0;
};

// optim.name = sgd | adamw (later issues add more); num_params sizes the state buffers.
// native16: state stored as 16-bit values of precision.compute (bf16 | fp16), step16 updates.
std::unique_ptr<Optimizer> make_optimizer(const config::Config& cfg, std::size_t num_params, bool native16 = false);
// The optimizer of a run whose strategy applies the update itself (Strategy::owns_update, e.g.
// DeMo): it keeps the learning rate and the strategy's name for reports and never updates.
std::unique_ptr<Optimizer> make_no_update(double lr, std::string_view name);
// The update applied to a zeroth-order estimate (optim.zo.update = sgd | adam, the latter as
// AdamW with optim.beta1/beta2/eps/weight_decay) over num_values entries: the compressed kept
// values of a pruned model, so its state is stored compressed too.
std::unique_ptr<Optimizer> make_zo_update(const config::Config& cfg, std::size_t num_values);

}  // namespace lowsync::optim
