// model.arch = "mlp": 784-512-256-10 on [1, 28, 28] images (the sparse ZO twin in sparse_mlp.cpp
// has the same layout).
#include "lowsync/model/architecture.hpp"

namespace lowsync::model {

Architecture mlp_architecture(const ArchOptions&) {
  return {"mlp", {1, 28, 28}, 10, 1, [](const ArchOptions&) {
            std::vector<std::unique_ptr<layers::Layer>> ls;
            ls.push_back(layers::make_flatten({1, 28, 28}));
            ls.push_back(layers::make_linear(784, 512, true));
            ls.push_back(layers::make_linear(512, 256, true));
            ls.push_back(layers::make_linear(256, 10, false));
            return ls;
          }};
}

}  // namespace lowsync::model
