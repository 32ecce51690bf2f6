// libFuzzer target: the config layer (src/config). The first byte picks the input form: TOML text
// (Config::load_toml_string) or --set assignments, one per line (Config::set_text). An accepted
// config is validated, written with to_toml() and read back: the text must parse and give the
// same values (checkpoints and config.toml depend on that round trip). Bad input must be a
// lowsync::Error; anything else (crash, other exception, round-trip mismatch) is a finding.
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string_view>

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_config: %s: %s\n", what, detail.c_str());
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  lowsync::config::Config cfg;
  try {
    if (data[0] & 1) {
      std::size_t start = 0;
      while (start <= text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        cfg.set_text(text.substr(start, end - start));
        start = end + 1;
      }
    } else {
      cfg.load_toml_string(text, "fuzz");
    }
  } catch (const lowsync::Error&) {
    return 0;
  }
  try {
    cfg.validate();
  } catch (const lowsync::Error&) {
  }
  const std::string toml = cfg.to_toml();
  lowsync::config::Config back;
  try {
    back.load_toml_string(toml, "round trip");
  } catch (const lowsync::Error& e) {
    finding("to_toml() output does not parse", e.what());
  }
  if (back.values() != cfg.values()) {
    for (const auto& [key, value] : cfg.values())
      if (!(back.values().at(key) == value))
        finding("round trip changed a value",
                key + ": " + lowsync::config::format_value(value) + " -> " +
                    lowsync::config::format_value(back.values().at(key)));
  }
  return 0;
}
