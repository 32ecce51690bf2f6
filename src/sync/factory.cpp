// Strategy factory keyed by sync.strategy.
#include "lowsync/core/error.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/sync/demo.hpp"
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
    fail("precision.wire = '{}' does not apply to sync.strategy = '{}' (use allreduce, periodic or fda{})",
         wire_format_name(wire), name, name == "demo" ? "; DeMo's values: optim.demo.value" : "");
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
  fail("sync.strategy = '{}' is not available in this build", name);
}

}  // namespace lowsync::sync
