// The data.name table (data/registry.hpp).
#include "lowsync/data/registry.hpp"

#include "lowsync/core/error.hpp"

#include <array>

namespace lowsync::data {
namespace {

TextCorpus load_fortunes(const std::filesystem::path& dir) { return read_text_corpus(dir, "fortunes"); }

constexpr std::array kDatasets = {
    DatasetEntry{"fashion-mnist", "Fashion-MNIST IDX files (28x28 grey images, 10 classes)", DataKind::images,
                 &load_fashion_mnist, &load_train_labels, nullptr},
    DatasetEntry{"fortunes", "byte-level text: every plain file of Debian's fortunes (model.arch = gpt)",
                 DataKind::text, nullptr, nullptr, &load_fortunes},
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
