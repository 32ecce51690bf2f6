// Trainer: the training loop of one rank (STYLE.md "One training step"), metrics.csv rows, the
// progress line, evaluation and summary.json. Every rank runs it; only rank 0 writes files.
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>

namespace lowsync::app {

// Exit status of a run stopped by SIGTERM/SIGUSR1 or train.max_seconds after its checkpoint.
inline constexpr int kExitStopped = 3;

struct TrainResult {
  nlohmann::json summary;  // what summary.json holds (valid on every rank)
  int exit_code = 0;
};

// Trains according to cfg, writing config.toml, metrics.csv and summary.json into out_dir on
// rank 0, and checkpoints (checkpoint.*) into out_dir/checkpoints. With `resume`, continues from
// that checkpoint file up to train.steps in total (metrics.csv continued). Throws lowsync::Error
// on bad input; exit_code is kExitStopped when a signal or train.max_seconds stopped the run.
TrainResult train(const config::Config& cfg, comm::Communicator& comm, const std::filesystem::path& out_dir,
                  const std::optional<std::filesystem::path>& resume = std::nullopt);

// Test-set loss and accuracy of a checkpoint's model (the mean of its saved replicas), with the
// model and data of cfg (normally the checkpoint's own config). Collective; same result on every rank.
nlohmann::json evaluate_checkpoint(const std::filesystem::path& path, const config::Config& cfg,
                                   comm::Communicator& comm);

}  // namespace lowsync::app
