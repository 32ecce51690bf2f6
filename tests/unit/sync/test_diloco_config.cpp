// DiLoCo's configuration (sync/diloco.hpp, config/defaults.cpp): the combinations it refuses with
// one line naming the keys, its context defaults (AdamW inner optimizer with its own step size),
// and the keys reaching the strategy.
#include "lowsync/sync/diloco.hpp"

#include "lowsync/config/config.hpp"
#include "lowsync/config/defaults.hpp"
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

TEST(DilocoConfig, RefusesWhatDoesNotCompose) {
  EXPECT_NE(error_of(make_cfg({"sync.strategy=diloco", "optim.name=zo"})).find("optim.name = sgd | adamw"), std::string::npos);
  // DeMo owns what travels: refused (by the DeMo rule, which names both keys).
  const std::string demo = error_of(make_cfg({"sync.strategy=diloco", "optim.name=demo"}));
  EXPECT_NE(demo.find("optim.name"), std::string::npos);
  EXPECT_NE(demo.find("diloco"), std::string::npos);
  EXPECT_NE(error_of(make_cfg({"sync.strategy=diloco", "sync.average_optimizer_state=true"})).find("stays local"),
            std::string::npos);
  EXPECT_NE(error_of(make_cfg({"sync.strategy=diloco", "sync.period=4", "sync.diloco.overlap=4"})).find("sync.diloco.overlap"),
            std::string::npos);
  EXPECT_NE(error_of(make_cfg({"sync.strategy=diloco", "sync.period=3", "sync.diloco.fragments=4"})).find("sync.diloco.fragments"),
            std::string::npos);
  // Accepted: any wire, SGD or AdamW inside, overlap below the period.
  EXPECT_EQ(error_of(make_cfg({"sync.strategy=diloco", "precision.wire=fp8_e4m3"})), "");
  EXPECT_EQ(error_of(make_cfg({"sync.strategy=diloco", "optim.name=sgd", "sync.period=50", "sync.diloco.fragments=4",
                               "sync.diloco.overlap=5"})),
            "");
  // Out-of-range values are refused by the schema itself.
  config::Config c;
  EXPECT_THROW(c.set_text("sync.diloco.mix=1.5"), Error);
  EXPECT_THROW(c.set_text("sync.diloco.outer_momentum=1"), Error);
}

TEST(DilocoConfig, ContextDefaultsPickAdamW) {
  auto c = make_cfg({"sync.strategy=diloco"});
  config::apply_context_defaults(c);
  EXPECT_EQ(c.string("optim.name"), "adamw");
  EXPECT_DOUBLE_EQ(c.real("optim.lr"), 1e-3);
  // Explicit choices win.
  auto s = make_cfg({"sync.strategy=diloco", "optim.name=sgd", "optim.lr=0.1"});
  config::apply_context_defaults(s);
  EXPECT_EQ(s.string("optim.name"), "sgd");
  EXPECT_DOUBLE_EQ(s.real("optim.lr"), 0.1);
  // Other strategies keep SGD's defaults.
  auto p = make_cfg({"sync.strategy=periodic"});
  config::apply_context_defaults(p);
  EXPECT_EQ(p.string("optim.name"), "sgd");
}

TEST(DilocoConfig, KeysReachTheStrategy) {
  const auto o = diloco_options_from_config(make_cfg({"sync.strategy=diloco", "sync.period=40", "sync.diloco.outer_lr=0.5",
                                                      "sync.diloco.outer_momentum=0.8", "sync.diloco.fragments=4",
                                                      "sync.diloco.overlap=2", "sync.diloco.mix=0.25",
                                                      "precision.wire=bf16"}));
  EXPECT_EQ(o.period, 40);
  EXPECT_DOUBLE_EQ(o.outer_lr, 0.5);
  EXPECT_DOUBLE_EQ(o.outer_momentum, 0.8);
  EXPECT_EQ(o.fragments, 4);
  EXPECT_EQ(o.overlap, 2);
  EXPECT_DOUBLE_EQ(o.mix, 0.25);
  EXPECT_EQ(o.wire, WireFormat::bf16);
  const auto defaults = diloco_options_from_config(make_cfg({"sync.strategy=diloco"}));
  EXPECT_DOUBLE_EQ(defaults.outer_lr, 0.7);
  EXPECT_DOUBLE_EQ(defaults.outer_momentum, 0.9);
  EXPECT_EQ(defaults.fragments, 1);
  EXPECT_EQ(defaults.overlap, 0);
  EXPECT_DOUBLE_EQ(defaults.mix, 0.5);
  // The strategy refuses what the schema cannot see: tau >= H.
  auto bad = o;
  bad.overlap = 40;
  EXPECT_THROW(DilocoStrategy{bad}, Error);
}

}  // namespace
}  // namespace lowsync::sync
