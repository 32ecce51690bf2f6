// model.arch = "cnn": two 5x5 conv + 2x2 max-pool stages and two linear layers on [1, 28, 28].
#include "lowsync/model/architecture.hpp"

namespace lowsync::model {

Architecture cnn_architecture(const ArchOptions&) {
  return {"cnn", {1, 28, 28}, 10, 1, [](const ArchOptions&) {
            std::vector<std::unique_ptr<layers::Layer>> ls;
            ls.push_back(layers::make_conv2d({1, 28, 28}, 32, 5, true));   // -> [32, 24, 24]
            ls.push_back(layers::make_maxpool2d({32, 24, 24}, 2));         // -> [32, 12, 12]
            ls.push_back(layers::make_conv2d({32, 12, 12}, 64, 5, true));  // -> [64, 8, 8]
            ls.push_back(layers::make_maxpool2d({64, 8, 8}, 2));           // -> [64, 4, 4]
            ls.push_back(layers::make_flatten({64, 4, 4}));                // -> [1024]
            ls.push_back(layers::make_linear(1024, 512, true));
            ls.push_back(layers::make_linear(512, 10, false));
            return ls;
          }};
}

}  // namespace lowsync::model
