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
      {"sync.strategy", "demo", "optim.name", std::string("demo"),
       "DeMo is its own optimizer (a workload's optimizer default must not conflict with it)"},
      // Workload rules: the gpt workload (ALGORITHMS.md §8) trains on fortunes with AdamW.
      {"model.arch", "gpt", "data.name", std::string("fortunes"), "the gpt workload is byte-level text"},
      {"data.name", "fortunes", "data.dir", std::string("/usr/share/games/fortunes"), "where Debian's fortunes package installs"},
      {"model.arch", "gpt", "optim.name", std::string("adamw"), "transformers train with AdamW"},
      {"model.arch", "gpt", "optim.lr", 1e-3, "AdamW step size of the gpt reference (PyTorch, ALGORITHMS.md §8)"},
      {"model.arch", "gpt", "optim.beta1", 0.9, "AdamW betas 0.9 / 0.95 (the usual for transformers)"},
      {"model.arch", "gpt", "optim.beta2", 0.95, "AdamW betas 0.9 / 0.95 (the usual for transformers)"},
      {"model.arch", "gpt", "train.batch", std::int64_t{16}, "16 windows of model.gpt.ctx bytes per rank and step"},
      {"model.arch", "gpt", "eval.batch", std::int64_t{16}, "validation windows per forward pass (as train.batch)"},
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
