// Run configuration: one flat map of dotted keys ("optim.lr") with a schema that gives every key
// its type, default, allowed values and one line of documentation. TOML files and --set use the
// same keys; unknown keys, bad values and type mismatches throw lowsync::Error naming the key.
// The schema (src/config/keys.cpp) is the single place a key is declared; the README's config
// reference is printed from it by `lowsync config`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace lowsync::config {

enum class Type { integer, real, boolean, string };
using Value = std::variant<std::int64_t, double, bool, std::string>;

struct KeySpec {
  std::string key;
  Type type;
  Value default_value;
  std::string help;
  std::vector<std::string> choices;  // strings only; empty = free text
  std::optional<double> min;         // numbers: inclusive bounds
  std::optional<double> max;
};

const std::vector<KeySpec>& schema();
const KeySpec* find_key(std::string_view key);

class Config {
 public:
  Config();  // all defaults

  // "key=value" from --set; the text is parsed according to the key's type.
  void set_text(std::string_view assignment);
  void set(std::string_view key, Value value);
  void load_toml_file(const std::filesystem::path& path);
  void load_toml_string(std::string_view text, std::string_view source_name = "<string>");

  std::int64_t integer(std::string_view key) const;
  double real(std::string_view key) const;
  bool boolean(std::string_view key) const;
  const std::string& string(std::string_view key) const;
  bool is_default(std::string_view key) const;

  // Cross-key checks (e.g. fda with demo); throws naming the keys.
  void validate() const;

  std::string to_toml() const;  // the full resolved config, nested tables
  const std::map<std::string, Value, std::less<>>& values() const { return values_; }

 private:
  const Value& get(std::string_view key, Type type) const;
  std::map<std::string, Value, std::less<>> values_;
  std::map<std::string, bool, std::less<>> explicit_;
};

std::string format_value(const Value& v);
// Markdown table of every key (for the README and `lowsync config`).
std::string schema_markdown();

}  // namespace lowsync::config
