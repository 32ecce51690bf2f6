// Context defaults (config/defaults.hpp): rules "when K = V, a default key X becomes Y".
#include "lowsync/config/defaults.hpp"

namespace lowsync::config {

const std::vector<ContextDefault>& context_defaults() {
  // Strategy rules first, then workload rules (a strategy's own optimizer settings win).
  static const std::vector<ContextDefault> table = {
      // DeMo's step is lr * sign(Q): every parameter moves by lr, so SGD's 0.05 diverges (0.10
      // accuracy on the MLP). 1e-3 is the reference optimizer's own default (bloc97/DeMo subclasses
      // torch.optim.SGD, lr 1e-3; ALGORITHMS.md section 5); the paper's OLMo runs use 4e-4 with a
      // schedule. docs/strategies.md: on the MLP/CNN the lr grid chose 3e-3 / 9e-3.
      {"sync.strategy", "demo", "optim.lr", 1e-3, "sync.strategy = demo: DeMo's own step size, 1e-3"},
      // DiLoCo's inner optimizer is AdamW (ALGORITHMS.md §6); SGD's 0.05 would be far too large
      // for it. 1e-3 is AdamW's usual step (not yet tuned on a grid here; docs/strategies.md).
      {"sync.strategy", "diloco", "optim.name", std::string("adamw"), "DiLoCo's inner optimizer is AdamW"},
      {"sync.strategy", "diloco", "optim.lr", 1e-3, "AdamW's step size for DiLoCo's inner steps"},
  };
  return table;
}

void apply_context_defaults(Config& cfg) {
  for (const auto& rule : context_defaults()) {
    if (cfg.string(rule.when_key) != rule.when_value || !cfg.is_default(rule.key)) continue;
    cfg.set(rule.key, rule.value);
  }
}

}  // namespace lowsync::config
