// Config: TOML and --set parsing, and every rejection path names the key.
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

namespace lowsync::config {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsAndSet) {
  Config c;
  EXPECT_EQ(c.string("model.arch"), "mlp");
  EXPECT_TRUE(c.is_default("optim.lr"));
  c.set_text("optim.lr=0.1");
  c.set_text(" train.steps = 7 ");
  c.set_text("sync.average_optimizer_state=true");
  c.set_text("model.arch=cnn");
  c.set_text("sync.fda.threshold=inf");
  c.set_text("optim.weight_decay=1");  // integer text for a real key
  EXPECT_DOUBLE_EQ(c.real("optim.lr"), 0.1);
  EXPECT_EQ(c.integer("train.steps"), 7);
  EXPECT_TRUE(c.boolean("sync.average_optimizer_state") == true);
  EXPECT_EQ(c.string("model.arch"), "cnn");
  EXPECT_TRUE(std::isinf(c.real("sync.fda.threshold")));
  EXPECT_FALSE(c.is_default("optim.lr"));
}

TEST(Config, TomlSectionsAndDottedKeys) {
  Config c;
  c.load_toml_string("[optim]\nlr = 0.2\nname = \"adamw\"\n[train]\nsteps = 10\n[sync.fda]\nestimator = \"sketch\"\n");
  EXPECT_DOUBLE_EQ(c.real("optim.lr"), 0.2);
  EXPECT_EQ(c.string("optim.name"), "adamw");
  EXPECT_EQ(c.integer("train.steps"), 10);
  EXPECT_EQ(c.string("sync.fda.estimator"), "sketch");
  c.load_toml_string("optim.lr = 3\n");  // an integer for a real key is fine
  EXPECT_DOUBLE_EQ(c.real("optim.lr"), 3.0);
}

TEST(Config, ResolvedTomlRoundTrips) {
  Config a;
  a.set_text("optim.lr=0.0123");
  a.set_text("data.dir=/tmp/x y");
  a.set_text("sync.fda.threshold=inf");
  Config b;
  b.load_toml_string(a.to_toml());
  EXPECT_EQ(a.values(), b.values());
}

// Strings used to be written between quotes by hand: a '"' or a newline made config.toml (and every
// checkpoint's config_toml) unparseable, or injected keys.
TEST(Config, StringsWithQuotesNewlinesAndUnicodeRoundTrip) {
  for (const std::string dir : {std::string("a\"b"), std::string("x\"\n[optim]\nlr = 9"), std::string("back\\slash\t"),
                                std::string("caf\u00e9 \u03b1"), std::string("it's"), std::string("''' \"\"\"")}) {
    Config a;
    a.set("data.dir", Value{dir});
    Config b;
    ASSERT_NO_THROW(b.load_toml_string(a.to_toml())) << dir;
    EXPECT_EQ(b.string("data.dir"), dir);
    EXPECT_EQ(a.values(), b.values()) << dir;
  }
}

TEST(Config, DidYouMeanByEditDistanceNeverTestOnlyKeys) {
  Config c;
  EXPECT_NE(error_of([&] { c.set_text("optim.lrr=0.1"); }).find("did you mean 'optim.lr'"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("train.step=5"); }).find("did you mean 'train.steps'"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("model.lr=0.1"); }).find("did you mean 'optim.lr'"), std::string::npos);
  EXPECT_EQ(error_of([&] { c.set_text("hang_step=5"); }).find("debug."), std::string::npos);
  EXPECT_EQ(error_of([&] { c.set_text("optim.zzzzzz=1"); }).find("did you mean"), std::string::npos);
}

TEST(Config, ZeroStepsRefused) {
  Config c;
  EXPECT_NE(error_of([&] { c.set_text("train.steps=0"); }).find("train.steps"), std::string::npos);
}

TEST(Config, EveryRejectionNamesTheKey) {
  Config c;
  EXPECT_NE(error_of([&] { c.set_text("optim.lrr=0.1"); }).find("unknown config key 'optim.lrr'"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("train.lr=0.1"); }).find("did you mean 'optim.lr'"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("train.steps=ten"); }).find("'train.steps' must be an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("train.steps=1.5"); }).find("'train.steps' must be an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("optim.lr=fast"); }).find("'optim.lr' must be a number"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("optim.lr=nan"); }).find("'optim.lr' must be a number"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("optim.lr=-1"); }).find("'optim.lr' = -1.0 is out of range"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("train.batch=0"); }).find("'train.batch' = 0 is out of range"), std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("model.arch=resnet"); }).find("'model.arch' = 'resnet' is not one of mlp|cnn"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("comm.deterministic=maybe"); }).find("'comm.deterministic' must be true or false"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.set_text("optim.lr"); }).find("--set expects key=value"), std::string::npos);
  EXPECT_NE(error_of([&] { c.load_toml_string("[optim]\nlr = \"high\"\n", "x.toml"); }).find("x.toml: config key 'optim.lr' must be a number"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.load_toml_string("[optim]\nspeed = 1\n", "x.toml"); }).find("x.toml: unknown config key 'optim.speed'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.load_toml_string("[optim\nlr = 1\n", "x.toml"); }).find("x.toml:1"), std::string::npos);
  EXPECT_NE(error_of([&] { c.load_toml_string("train.steps = true\n", "x.toml"); }).find("'train.steps' must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.load_toml_file("/nonexistent/run.toml"); }).find("'/nonexistent/run.toml' does not exist"),
            std::string::npos);
}

TEST(Config, SchemaMarkdownListsEveryKey) {
  const std::string md = schema_markdown();
  for (const auto& spec : schema()) EXPECT_NE(md.find("`" + spec.key + "`"), std::string::npos) << spec.key;
}

}  // namespace
}  // namespace lowsync::config
