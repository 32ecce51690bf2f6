// Context defaults (config/defaults.hpp): rules "when K = V, a default key X becomes Y".
#include "lowsync/config/defaults.hpp"

namespace lowsync::config {

const std::vector<ContextDefault>& context_defaults() {
  // Strategy rules first, then workload rules (a strategy's own optimizer settings win).
  static const std::vector<ContextDefault> table = {
      // Strategy rules.
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
