// String values must survive config.toml and a checkpoint's config_toml: invalid UTF-8 (found by
// fuzz_config, which then made to_toml() unparseable) and NUL are refused naming the key; any
// valid UTF-8 text, quotes and newlines included, round-trips through to_toml().
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"

#include <gtest/gtest.h>

#include <string>

namespace lowsync::config {
namespace {

std::string error_of(const std::string& assignment) {
  Config c;
  try {
    c.set_text(assignment);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TextValues, InvalidUtf8AndNulAreRefusedNamingTheKey) {
  EXPECT_EQ(error_of("checkpoint.dir=a\xf3tr"),
            "config key 'checkpoint.dir': the value is not valid UTF-8 text (byte 0xf3 at offset 1)");
  EXPECT_NE(error_of("data.dir=\xc0\xaf").find("not valid UTF-8"), std::string::npos);          // overlong '/'
  EXPECT_NE(error_of("data.dir=\xed\xa0\x80").find("not valid UTF-8"), std::string::npos);      // surrogate
  EXPECT_NE(error_of("data.dir=\xf4\x90\x80\x80").find("not valid UTF-8"), std::string::npos);  // > U+10FFFF
  EXPECT_NE(error_of("data.dir=abc\xe2\x82").find("not valid UTF-8"), std::string::npos);       // cut short
  EXPECT_EQ(error_of(std::string("data.dir=a\0b", 11)),
            "config key 'data.dir': the value contains a NUL character (offset 1)");
}

TEST(TextValues, ValidUtf8RoundTripsThroughToToml) {
  Config c;
  c.set_text("data.dir=/data/f\xc3\xbc\x72 \"x\" \xf0\x9f\x98\x80\ttab");
  Config back;
  back.load_toml_string(c.to_toml());
  EXPECT_EQ(back.string("data.dir"), c.string("data.dir"));
}

}  // namespace
}  // namespace lowsync::config
