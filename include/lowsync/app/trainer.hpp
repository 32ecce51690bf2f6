// Trainer: the training loop of one rank (STYLE.md "One training step"), metrics.csv rows, the
// progress line, evaluation and summary.json. Every rank runs it; only rank 0 writes files.
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace lowsync::app {

struct TrainResult {
  nlohmann::json summary;  // what summary.json holds (valid on every rank)
  int exit_code = 0;
};

// Trains according to cfg, writing config.toml, metrics.csv and summary.json into out_dir on
// rank 0. Throws lowsync::Error on bad input.
TrainResult train(const config::Config& cfg, comm::Communicator& comm, const std::filesystem::path& out_dir);

}  // namespace lowsync::app
