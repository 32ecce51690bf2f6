// The model.arch table: a new architecture is its builder file plus one line here.
#include "lowsync/model/architecture.hpp"

#include "lowsync/core/error.hpp"

#include <fmt/format.h>

namespace lowsync::model {
namespace {

const std::vector<Architecture>& table() {
  static const std::vector<Architecture> archs{
      mlp_architecture(),
      cnn_architecture(),
  };
  return archs;
}

}  // namespace

const Architecture& find_architecture(std::string_view name) {
  for (const auto& a : table())
    if (a.name == name) return a;
  fail("model.arch = '{}' is not one of {}", name, fmt::join(architecture_names(), "|"));
}

std::vector<std::string_view> architecture_names() {
  std::vector<std::string_view> names;
  for (const auto& a : table()) names.push_back(a.name);
  return names;
}

}  // namespace lowsync::model
