// Strategy factory keyed by sync.strategy.
#include "lowsync/core/error.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/sync/demo.hpp"
#include "lowsync/sync/diloco.hpp"
#include "lowsync/sync/fda.hpp"
#include "lowsync/sync/powersgd.hpp"

namespace lowsync::sync {

void validate_config(const config::Config& cfg) {
  const std::string& name = cfg.string("sync.strategy");
  const std::string& opt = cfg.string("optim.name");
  if (name == "powersgd") validate_powersgd_config(cfg);  // before the generic optim.name rules: its own message
  if (opt == "demo" && name != "demo")
    fail("optim.name = \"demo\" needs sync.strategy = \"demo\" (DeMo is both; sync.strategy = \"{}\" given){}",
         name, name == "fda" ? ": FDA cannot monitor DeMo, whose replicas never drift" : "");
  if (name == "demo" && !cfg.is_default("optim.name") && opt != "demo")
    fail("sync.strategy = \"demo\" sets the optimizer itself; optim.name = \"{}\" conflicts with it", opt);
  // ALGORITHMS.md "How these combine": the wire format applies to gradients (allreduce) and
  // models (periodic, fda). DeMo has its own value format (optim.demo.value); none sends nothing.
  const WireFormat wire = parse_wire_format(cfg.string("precision.wire"));
  if (wire != WireFormat::fp32 && (name == "none" || name == "demo"))
    fail("precision.wire = '{}' does not apply to sync.strategy = '{}' (use allreduce, periodic, fda or diloco{})",
         wire_format_name(wire), name, name == "demo" ? "; DeMo's values: optim.demo.value" : "");
  // DiLoCo (ALGORITHMS.md §6, "do not compose"): an inner optimizer that updates locally; DeMo and
  // ZO own what travels, and the inner state stays local by definition.
  if (name == "diloco" && opt != "sgd" && opt != "adamw")
    fail("sync.strategy = \"diloco\" needs an inner optimizer optim.name = sgd | adamw, not \"{}\"", opt);
  if (name == "diloco" && cfg.boolean("sync.average_optimizer_state"))
    fail("sync.average_optimizer_state = true does not apply to sync.strategy = \"diloco\" (its inner optimizer state stays local)");
  if (name == "diloco" && cfg.integer("sync.diloco.overlap") >= cfg.integer("sync.period"))
    fail("sync.diloco.overlap = {} needs to be < sync.period = {} (a fragment's round lands before its next starts)",
         cfg.integer("sync.diloco.overlap"), cfg.integer("sync.period"));
  if (name == "diloco" && cfg.integer("sync.diloco.fragments") > cfg.integer("sync.period"))
    fail("sync.diloco.fragments = {} needs sync.period >= {} (one distinct sync step per fragment)",
         cfg.integer("sync.diloco.fragments"), cfg.integer("sync.diloco.fragments"));
  if (name == "demo" && cfg.string("precision.update_rounding") == "stochastic")
    fail("precision.update_rounding = \"stochastic\" applies to optim.name = sgd | adamw, not sync.strategy = demo (DeMo "
         "keeps its parameters fp32)");
}

bool strategy_owns_update(const config::Config& cfg) { return cfg.string("sync.strategy") == "demo"; }

std::unique_ptr<Strategy> make_strategy(const config::Config& cfg) {
  validate_config(cfg);
  const std::string& name = cfg.string("sync.strategy");
  const WireFormat wire = parse_wire_format(cfg.string("precision.wire"));
  if (name == "none") return std::make_unique<NoneStrategy>();
  const auto seed = static_cast<std::uint64_t>(cfg.integer("train.seed"));
  if (name == "allreduce") return std::make_unique<AllreduceStrategy>(wire, seed);
  if (name == "periodic")
    return std::make_unique<PeriodicStrategy>(cfg.integer("sync.period"), cfg.boolean("sync.average_optimizer_state"),
                                              wire, seed);
  if (name == "fda") return std::make_unique<FdaStrategy>(cfg);
  if (name == "demo") return std::make_unique<DemoStrategy>(cfg);
  if (name == "powersgd") return std::make_unique<PowerSgdStrategy>(cfg);
  if (name == "diloco") return std::make_unique<DilocoStrategy>(cfg);
  fail("sync.strategy = '{}' is not available in this build", name);
}

}  // namespace lowsync::sync
