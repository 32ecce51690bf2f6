// The model.arch registry: every registered architecture chains shapes from its declared input
// to num_classes logits, the MLP keeps its published size, and an unknown name is refused naming
// the key and the known names.
#include "lowsync/model/architecture.hpp"

#include "lowsync/core/error.hpp"

#include <gtest/gtest.h>

#include <string>

namespace lowsync::model {
namespace {

std::int64_t param_count(const std::vector<std::unique_ptr<layers::Layer>>& ls) {
  std::int64_t n = 0;
  for (const auto& l : ls)
    for (const auto& s : l->param_specs()) n += layers::shape_size(s.shape);
  return n;
}

TEST(Architecture, EveryEntryChainsShapesFromInputToClasses) {
  ASSERT_FALSE(architecture_names().empty());
  for (const auto name : architecture_names()) {
    const Architecture& a = find_architecture(name);
    EXPECT_EQ(a.name, name);
    const auto ls = a.build(ArchOptions{});
    ASSERT_FALSE(ls.empty()) << name;
    layers::Shape shape = a.input_shape;
    for (const auto& l : ls) {
      EXPECT_EQ(l->input_shape(), shape) << name;
      shape = l->output_shape();
    }
    // One row of num_classes logits per position.
    EXPECT_EQ(layers::shape_size(shape), std::int64_t{a.num_classes} * a.positions) << name;
  }
}

TEST(Architecture, KnownSizes) {
  // 784*512 + 512 + 512*256 + 256 + 256*10 (the last layer has a bias too).
  EXPECT_EQ(param_count(find_architecture("mlp").build({})), 535818);
  EXPECT_EQ(find_architecture("cnn").input_shape, (layers::Shape{1, 28, 28}));
}

TEST(Architecture, UnknownNameNamesTheKeyAndTheChoices) {
  try {
    find_architecture("resnet");
    FAIL() << "resnet accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "model.arch = 'resnet' is not one of mlp|cnn|gpt");
  }
}

}  // namespace
}  // namespace lowsync::model
