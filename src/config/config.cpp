// Parsing, validation and printing of the run configuration (see config.hpp).
#include "lowsync/config/config.hpp"

#include "lowsync/core/error.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

namespace lowsync::config {
namespace {

std::string_view type_name(Type t) {
  switch (t) {
    case Type::integer: return "an integer";
    case Type::real: return "a number";
    case Type::boolean: return "true or false";
    case Type::string: return "a string";
  }
  return "?";
}

// Levenshtein distance (insertions, deletions, substitutions), for "did you mean".
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

const KeySpec& require_key(std::string_view key) {
  const KeySpec* spec = find_key(key);
  if (spec == nullptr) {
    // Suggest the closest key by edit distance (a typo: optim.lrr -> optim.lr), else one with the
    // same last component (a wrong section); test-only keys are never suggested.
    std::string hint;
    std::size_t best = std::max<std::size_t>(2, key.size() / 4) + 1;
    for (const KeySpec& s : schema()) {
      if (s.help.starts_with("TEST ONLY")) continue;
      const std::size_t d = edit_distance(key, s.key);
      if (d < best) best = d, hint = s.key;
    }
    const auto last = key.substr(key.rfind('.') == std::string_view::npos ? 0 : key.rfind('.') + 1);
    if (hint.empty())
      for (const KeySpec& s : schema())
        if (!s.help.starts_with("TEST ONLY") && !last.empty() && s.key.ends_with(fmt::format(".{}", last))) hint = s.key;
    fail("unknown config key '{}'{}", key, hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint));
  }
  return *spec;
}

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

Value parse_text(const KeySpec& spec, std::string_view raw) {
  const std::string text = trim(raw);
  switch (spec.type) {
    case Type::integer: {
      std::int64_t v = 0;
      const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || ptr != text.data() + text.size() || text.empty())
        fail("config key '{}' must be an integer, got '{}'", spec.key, text);
      return v;
    }
    case Type::real: {
      if (text == "inf" || text == "+inf") return std::numeric_limits<double>::infinity();
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || std::isnan(v))
        fail("config key '{}' must be a number, got '{}'", spec.key, text);
      return v;
    }
    case Type::boolean: {
      if (text == "true" || text == "1" || text == "yes" || text == "on") return true;
      if (text == "false" || text == "0" || text == "no" || text == "off") return false;
      fail("config key '{}' must be true or false, got '{}'", spec.key, text);
    }
    case Type::string: {
      std::string s = text;
      if (s.size() >= 2 && ((s.front() == '"' && s.back() == '"') || (s.front() == '\'' && s.back() == '\'')))
        s = s.substr(1, s.size() - 2);
      return s;
    }
  }
  fail("config key '{}': unsupported type", spec.key);
}

// The byte offset of the first invalid UTF-8 sequence in `s` (overlong forms, surrogates and code
// points above U+10FFFF included), or npos.
std::size_t invalid_utf8_at(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0, min = 0;
    if (b < 0x80) {
      ++i;
      continue;
    }
    if ((b & 0xe0) == 0xc0) n = 1, cp = b & 0x1f, min = 0x80;
    else if ((b & 0xf0) == 0xe0) n = 2, cp = b & 0x0f, min = 0x800;
    else if ((b & 0xf8) == 0xf0) n = 3, cp = b & 0x07, min = 0x10000;
    else return i;
    for (std::size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return i;
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return std::string_view::npos;
}

// Checks type, choices and bounds; converts an integer given for a real key.
Value check_value(const KeySpec& spec, Value v) {
  if (spec.type == Type::real && std::holds_alternative<std::int64_t>(v))
    v = static_cast<double>(std::get<std::int64_t>(v));
  const bool ok = (spec.type == Type::integer && std::holds_alternative<std::int64_t>(v)) ||
                  (spec.type == Type::real && std::holds_alternative<double>(v)) ||
                  (spec.type == Type::boolean && std::holds_alternative<bool>(v)) ||
                  (spec.type == Type::string && std::holds_alternative<std::string>(v));
  if (!ok) fail("config key '{}' must be {}, got {}", spec.key, type_name(spec.type), format_value(v));
  if (spec.type == Type::integer || spec.type == Type::real) {
    const double x = spec.type == Type::integer ? static_cast<double>(std::get<std::int64_t>(v))
                                                : std::get<double>(v);
    if ((spec.min && x < *spec.min) || (spec.max && x > *spec.max))
      fail("config key '{}' = {} is out of range [{}, {}]", spec.key, format_value(v),
           spec.min ? fmt::format("{:g}", *spec.min) : "-inf", spec.max ? fmt::format("{:g}", *spec.max) : "inf");
  }
  if (const std::string* text = std::get_if<std::string>(&v)) {
    // config.toml and every checkpoint's config_toml hold this text: it must be TOML-writable
    // (found by fuzz_config: an invalid byte made the saved config unparseable), and a NUL would
    // cut a path short in the C APIs that get it.
    const std::string_view s(*text);
    if (const auto at = invalid_utf8_at(s); at != std::string_view::npos)
      fail("config key '{}': the value is not valid UTF-8 text (byte 0x{:02x} at offset {})", spec.key,
           static_cast<unsigned char>(s[at]), at);
    if (const auto nul = s.find('\0'); nul != std::string_view::npos)
      fail("config key '{}': the value contains a NUL character (offset {})", spec.key, nul);
  }
  if (spec.type == Type::string && !spec.choices.empty()) {
    const auto& s = std::get<std::string>(v);
    if (std::find(spec.choices.begin(), spec.choices.end(), s) == spec.choices.end()) {
      std::string all;
      for (const auto& c : spec.choices) all += (all.empty() ? "" : "|") + c;
      fail("config key '{}' = '{}' is not one of {}", spec.key, s, all);
    }
  }
  return v;
}

void flatten(const toml::table& table, const std::string& prefix, std::string_view source,
             Config& cfg) {
  for (const auto& [k, node] : table) {
    const std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (const auto* sub = node.as_table()) {
      flatten(*sub, key, source, cfg);
      continue;
    }
    const KeySpec* spec = find_key(key);
    if (spec == nullptr) {
      try {
        require_key(key);
      } catch (const Error& e) {
        fail("{}: {}", source, e.what());
      }
    }
    Value v;
    if (const auto* i = node.as_integer()) v = i->get();
    else if (const auto* f = node.as_floating_point()) v = f->get();
    else if (const auto* b = node.as_boolean()) v = b->get();
    else if (const auto* s = node.as_string()) v = s->get();
    else fail("{}: config key '{}' has an unsupported TOML type", source, key);
    try {
      cfg.set(key, v);
    } catch (const Error& e) {
      fail("{}: {}", source, e.what());
    }
  }
}

}  // namespace

std::string format_value(const Value& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          // A TOML basic string with quotes, backslashes and control characters escaped: a value
          // holding '"' or a newline used to make config.toml and every checkpoint's config_toml
          // unparseable (the round trip through toml++ is tested).
          std::string out = "\"";
          for (const char ch : x) {
            const auto c = static_cast<unsigned char>(ch);
            if (ch == '"' || ch == '\\') out += '\\', out += ch;
            else if (ch == '\n') out += "\\n";
            else if (ch == '\t') out += "\\t";
            else if (ch == '\r') out += "\\r";
            else if (c < 0x20 || c == 0x7f) out += fmt::format("\\u{:04X}", c);
            else out += ch;
          }
          return out + "\"";
        }
        else if constexpr (std::is_same_v<T, bool>) return x ? "true" : "false";
        else if constexpr (std::is_same_v<T, double>) {
          if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
          std::string s = fmt::format("{:.17g}", x);
          // Shortest text that reads back to the same double.
          for (int p = 1; p <= 17; ++p) {
            std::string t = fmt::format("{:.{}g}", x, p);
            if (std::strtod(t.c_str(), nullptr) == x) { s = t; break; }
          }
          if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
          return s;
        } else return std::to_string(x);
      },
      v);
}

Config::Config() {
  for (const KeySpec& spec : schema()) values_[spec.key] = spec.default_value;
}

void Config::set(std::string_view key, Value value) {
  const KeySpec& spec = require_key(key);
  values_[spec.key] = check_value(spec, std::move(value));
  explicit_[spec.key] = true;
}

void Config::set_text(std::string_view assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string_view::npos)
    fail("--set expects key=value, got '{}'", assignment);
  const std::string key = trim(assignment.substr(0, eq));
  const KeySpec& spec = require_key(key);
  set(key, parse_text(spec, assignment.substr(eq + 1)));
}

void Config::load_toml_string(std::string_view text, std::string_view source_name) {
  toml::table table;
  try {
    table = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    fail("{}:{}:{}: TOML parse error: {}", source_name, where.line, where.column, e.description());
  }
  flatten(table, "", source_name, *this);
}

void Config::load_toml_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail("config file '{}' does not exist", path.string());
  std::ifstream in(path);
  if (!in) fail("config file '{}' cannot be read", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  load_toml_string(ss.str(), path.string());
}

const Value& Config::get(std::string_view key, Type type) const {
  const auto it = values_.find(key);
  LOWSYNC_ASSERT(it != values_.end(), "config key '{}' is not in the schema", key);
  LOWSYNC_ASSERT(find_key(key)->type == type, "config key '{}' read with the wrong type", key);
  return it->second;
}

std::int64_t Config::integer(std::string_view key) const { return std::get<std::int64_t>(get(key, Type::integer)); }
double Config::real(std::string_view key) const { return std::get<double>(get(key, Type::real)); }
bool Config::boolean(std::string_view key) const { return std::get<bool>(get(key, Type::boolean)); }
const std::string& Config::string(std::string_view key) const { return std::get<std::string>(get(key, Type::string)); }
bool Config::is_default(std::string_view key) const { return explicit_.find(key) == explicit_.end(); }

void Config::validate() const {
  // Rules between strategy keys are the strategies' own: sync::validate_config.
  if (real("optim.demo.beta") >= 1.0) fail("optim.demo.beta must be < 1, got {}", real("optim.demo.beta"));
}

std::string Config::to_toml() const {
  // Group keys by their section (everything before the last dot), sections in sorted order.
  std::map<std::string, std::vector<std::pair<std::string, const Value*>>> sections;
  for (const auto& [key, value] : values_) {
    const auto dot = key.rfind('.');
    sections[key.substr(0, dot)].emplace_back(key.substr(dot + 1), &value);
  }
  std::string out = "# lowsync resolved configuration\n";
  for (const auto& [section, entries] : sections) {
    out += "\n[" + section + "]\n";
    for (const auto& [name, value] : entries) out += name + " = " + format_value(*value) + "\n";
  }
  return out;
}

std::string schema_markdown() {
  std::string out = "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const KeySpec& spec : schema()) {
    std::string type(type_name(spec.type));
    if (!spec.choices.empty()) {
      type.clear();
      for (const auto& c : spec.choices) type += (type.empty() ? "" : " \\| ") + c;
    }
    out += fmt::format("| `{}` | {} | `{}` | {} |\n", spec.key, type, format_value(spec.default_value), spec.help);
  }
  return out;
}

}  // namespace lowsync::config
