// Defaults that depend on other keys: a key left at its schema default takes the value its
// context calls for (the gpt workload trains with AdamW; a strategy may bring its own step size).
// One table (src/config/defaults.cpp), applied once after the config file and --set, before
// validation, so config.toml records what the run used and a resume sees explicit values.
#pragma once

#include "lowsync/config/config.hpp"

#include <string>
#include <vector>

namespace lowsync::config {

struct ContextDefault {
  std::string when_key;    // "model.arch"
  std::string when_value;  // "gpt" (string keys only)
  std::string key;         // "optim.name"
  Value value;             // "adamw"
  std::string why;         // one line for the docs
};

// The table, in the order it is applied: the first rule that sets a key wins (a set key is no
// longer at its default).
const std::vector<ContextDefault>& context_defaults();

// Sets every key of cfg that is still at its schema default and whose rule matches.
void apply_context_defaults(Config& cfg);

}  // namespace lowsync::config
