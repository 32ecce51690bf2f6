// The model.arch table: a new architecture is its builder file plus one line here. Also the
// model.gpt.* validation and the architecture / precision.compute rules.
#include "lowsync/model/architecture.hpp"

#include "lowsync/core/error.hpp"

#include <fmt/format.h>

namespace lowsync::model {
namespace {

using Maker = Architecture (*)(const ArchOptions&);

const std::vector<Maker>& table() {
  static const std::vector<Maker> makers{
      mlp_architecture,
      cnn_architecture,
      gpt_architecture,
  };
  return makers;
}

}  // namespace

Architecture find_architecture(std::string_view name, const ArchOptions& options) {
  for (const Maker make : table()) {
    Architecture a = make(options);
    if (a.name == name) return a;
  }
  fail("model.arch = '{}' is not one of {}", name, fmt::join(architecture_names(), "|"));
}

std::vector<std::string_view> architecture_names() {
  std::vector<std::string_view> names;
  for (const Maker make : table()) names.push_back(make(ArchOptions{}).name);
  return names;
}

ArchOptions arch_options(std::int64_t ctx, std::int64_t width, std::int64_t layers, std::int64_t heads) {
  auto check = [](const char* key, std::int64_t v, std::int64_t max) {
    if (v < 1 || v > max) fail("{} = {} is out of range 1..{}", key, v, max);
  };
  check("model.gpt.ctx", ctx, 4096);
  check("model.gpt.width", width, 8192);
  check("model.gpt.layers", layers, 256);
  check("model.gpt.heads", heads, 256);
  if (width % heads != 0)
    fail("model.gpt.width = {} is not a multiple of model.gpt.heads = {}", width, heads);
  return {static_cast<int>(ctx), static_cast<int>(width), static_cast<int>(layers), static_cast<int>(heads)};
}

void validate_arch_compute(std::string_view arch, std::string_view compute) {
  if (arch == "gpt" && compute == "fp8")
    fail("model.arch = gpt does not support precision.compute = fp8 (fp32, bf16 or fp16)");
}

}  // namespace lowsync::model
