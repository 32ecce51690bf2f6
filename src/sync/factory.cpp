// Strategy factory keyed by sync.strategy.
#include "lowsync/core/error.hpp"
#include "lowsync/sync/basic.hpp"
#include "lowsync/sync/demo.hpp"
#include "lowsync/sync/fda.hpp"

namespace lowsync::sync {

std::unique_ptr<Strategy> make_strategy(const config::Config& cfg) {
  const std::string& name = cfg.string("sync.strategy");
  if (name == "none") return std::make_unique<NoneStrategy>();
  if (name == "allreduce") return std::make_unique<AllreduceStrategy>();
  if (name == "periodic")
    return std::make_unique<PeriodicStrategy>(cfg.integer("sync.period"), cfg.boolean("sync.average_optimizer_state"));
  if (name == "fda") return std::make_unique<FdaStrategy>(cfg);
  if (name == "demo") return std::make_unique<DemoStrategy>(cfg);
  fail("sync.strategy = '{}' is not available in this build", name);
}

}  // namespace lowsync::sync
