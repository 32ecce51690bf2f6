// Strategies answer for themselves (STYLE.md §5): the rules between sync.strategy and the other
// keys (sync::validate_config), and what each strategy says of its replicas and storage, which
// the learners use instead of comparing strategy names.
#include "lowsync/sync/strategy.hpp"

#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace lowsync::sync {
namespace {

config::Config make_cfg(const std::vector<std::string>& sets) {
  config::Config c;
  for (const auto& s : sets) c.set_text(s);
  return c;
}

std::string error_of(const config::Config& c) {
  try {
    validate_config(c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(StrategyConfig, CrossKeyRules) {
  EXPECT_NE(error_of(make_cfg({"optim.name=demo", "sync.strategy=fda"})).find("FDA cannot monitor DeMo"), std::string::npos);
  EXPECT_NE(error_of(make_cfg({"sync.strategy=demo", "optim.name=adamw"})).find("conflicts"), std::string::npos);
  EXPECT_NE(error_of(make_cfg({"sync.strategy=none", "precision.wire=fp8_e4m3"})).find("does not apply"), std::string::npos);
  EXPECT_NE(error_of(make_cfg({"sync.strategy=demo", "precision.compute=bf16", "precision.update_rounding=stochastic"}))
                .find("DeMo keeps its parameters fp32"),
            std::string::npos);
  EXPECT_EQ(error_of(make_cfg({"sync.strategy=demo"})), "");
  EXPECT_EQ(error_of(make_cfg({"sync.strategy=periodic", "precision.wire=fp8_e4m3"})), "");
  // make_strategy applies the same rules.
  EXPECT_THROW(make_strategy(make_cfg({"sync.strategy=none", "precision.wire=bf16"})), Error);
}

TEST(StrategyConfig, StrategiesAnswerForThemselves) {
  struct Expect {
    const char* name;
    bool identical, fp32_master, native16, owns_update;
  };
  for (const Expect& e : {Expect{"none", false, false, true, false}, Expect{"allreduce", true, false, true, false},
                          Expect{"periodic", false, false, true, false}, Expect{"fda", false, false, true, false},
                          Expect{"demo", true, true, false, true}}) {
    const auto s = make_strategy(make_cfg({std::string("sync.strategy=") + e.name}));
    EXPECT_EQ(s->name(), e.name);
    EXPECT_EQ(s->replicas_identical(), e.identical) << e.name;
    EXPECT_EQ(s->keeps_fp32_parameters(), e.fp32_master) << e.name;
    EXPECT_EQ(s->supports_native16(), e.native16) << e.name;
    EXPECT_EQ(s->owns_update(), e.owns_update) << e.name;
    // The config-only answer (used on saved configs, which set every key) agrees with the object.
    EXPECT_EQ(strategy_owns_update(make_cfg({std::string("sync.strategy=") + e.name})), e.owns_update) << e.name;
  }
}

}  // namespace
}  // namespace lowsync::sync
