// Model architectures by name (model.arch): each is one builder file (src/model/arch_*.cpp) and
// one line of the table in src/model/architecture.cpp. An architecture says what one sample looks
// like ([C, H, W] images, [T] token windows) and how many classes its output scores.
#pragma once

#include "lowsync/layers/layer.hpp"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lowsync::model {

struct Architecture {
  std::string_view name;
  layers::Shape input_shape;  // one sample, without the batch dimension
  int num_classes = 0;        // logits per sample
  std::vector<std::unique_ptr<layers::Layer>> (*build)() = nullptr;
};

// The registered architecture `name`; an unknown name fails naming model.arch and every known one.
const Architecture& find_architecture(std::string_view name);
// Registered names, in table order.
std::vector<std::string_view> architecture_names();

// The builders (one file each).
Architecture mlp_architecture();
Architecture cnn_architecture();

}  // namespace lowsync::model
