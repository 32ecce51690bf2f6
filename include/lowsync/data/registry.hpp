// Datasets by name (config key data.name): an image entry loads the train/test split of a run
// from data.dir and, for the launch checks, its training labels alone; a text entry loads the
// corpus (data/text.hpp: split and windows). A new dataset is one loader, one line in the table of
// registry.cpp and its tests (the model side: model/architecture.hpp).
#pragma once

#include "lowsync/data/dataset.hpp"
#include "lowsync/data/text.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lowsync::data {

enum class DataKind { images, text };

struct DatasetEntry {
  const char* name;         // data.name
  const char* description;  // for the error that lists the choices
  DataKind kind;
  // Images: the train/test split from `dir`; train_limit > 0 keeps the first train_limit training
  // samples.
  ImageSplits (*load)(const std::filesystem::path& dir, std::int64_t train_limit);
  // Images: the training labels alone (what the partition needs), same train_limit.
  std::vector<std::int32_t> (*train_labels)(const std::filesystem::path& dir, std::int64_t train_limit);
  // Text: the corpus of `dir`.
  TextCorpus (*load_text)(const std::filesystem::path& dir);
};

// The entry of `name`; an unknown name throws one line listing the known ones.
const DatasetEntry& dataset_entry(const std::string& name);
std::vector<std::string> dataset_names();

}  // namespace lowsync::data
