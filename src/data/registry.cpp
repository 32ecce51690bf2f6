// The data.name table (data/registry.hpp).
#include "lowsync/data/registry.hpp"

#include "lowsync/core/error.hpp"

#include <array>

namespace lowsync::data {
namespace {

constexpr std::array kDatasets = {
    DatasetEntry{"fashion-mnist", "Fashion-MNIST IDX files (28x28 grey images, 10 classes)", &load_fashion_mnist,
                 &load_train_labels},
};

}  // namespace

const DatasetEntry& dataset_entry(const std::string& name) {
  for (const auto& e : kDatasets)
    if (name == e.name) return e;
  std::string known;
  for (const auto& e : kDatasets) known += (known.empty() ? "" : ", ") + std::string(e.name);
  fail("data.name = '{}' is not a dataset of this lowsync (known: {})", name, known);
}

std::vector<std::string> dataset_names() {
  std::vector<std::string> names;
  for (const auto& e : kDatasets) names.emplace_back(e.name);
  return names;
}

}  // namespace lowsync::data
