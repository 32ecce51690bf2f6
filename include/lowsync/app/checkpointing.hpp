// Trainer checkpoints: everything the training loop needs to continue exactly (config, step,
// parameters, optimizer, strategy, loader, ledger and loop state per rank), in one HDF5 file
// written with io::CheckpointWriter, and restored on the same or a different rank count (the
// reshard policy). The layout is documented in the README, section "Checkpoints".
#pragma once

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/data/batch_source.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/optim/optimizer.hpp"
#include "lowsync/sync/strategy.hpp"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <span>
#include <string_view>
#include <vector>

namespace lowsync::io {
class CheckpointWriter;
class CheckpointReader;
}  // namespace lowsync::io

namespace lowsync::app {

// Version of what the trainer stores (root attribute "trainer_state_version"), on top of the
// file format's own format_version. Readers reject any other value.
inline constexpr std::int64_t kTrainerStateVersion = 1;

// Loop variables besides model, optimizer, strategy and loader.
struct LoopState {
  std::int64_t step = 0;   // steps completed
  double elapsed_s = 0.0;  // wall seconds of the earlier segments of this run (before a resume)
  // Per rank (averaged over the old ranks on a reshard):
  double compute_s = 0.0, train_s = 0.0, timed_s = 0.0;
  std::int64_t timed_steps = 0;
  double loss_window = 0.0;  // sum of losses since the last metrics row
  std::int64_t window_steps = 0;
  double window_train_s = 0.0;
  // Same on every rank:
  double last_loss = NAN, last_test_acc = NAN, last_test_loss = NAN;
};

// The live objects a checkpoint reads from and restores into.
struct TrainState {
  const config::Config& cfg;
  comm::Communicator& comm;
  model::Model& model;
  optim::Optimizer& optimizer;
  sync::Strategy& strategy;
  data::BatchSource& loader;
  LoopState& loop;
};

// Collective. Writes `path` atomically (io::CheckpointWriter: .tmp, fsync, rename, verify).
void save_checkpoint(const std::filesystem::path& path, TrainState& s);

// Collective; call after strategy.on_start. Same rank count: restores every buffer bitwise.
// Different rank count: the reshard policy of the README; the returned lines say what was done.
// Every problem (wrong model, sizes, corrupt data) throws one line naming the file.
std::vector<std::string> load_checkpoint(const std::filesystem::path& path, TrainState& s);

// Collective. --resume PATH: PATH itself when it is a file, else the newest good checkpoint in
// PATH/checkpoints (a run folder) or PATH (a checkpoint folder); throws when there is none.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& path, comm::Communicator& comm);

// Collective. The configuration stored in a checkpoint (its TOML text, parsed).
config::Config checkpoint_config(const std::filesystem::path& path, comm::Communicator& comm);

// Keys whose change makes a checkpoint meaningless for a run (model.arch, sync.strategy, ...):
// throws "checkpoint 'FILE' ... KEY is A there, B here" for the first one that differs.
void check_compatible(const std::filesystem::path& path, const config::Config& saved, const config::Config& now);

// Pieces shared with the zeroth-order trainer's checkpoints (zo_trainer.cpp). Collective.
//   write_loop_and_ledger  root attributes step, elapsed_s, last_loss, last_test_acc,
//                          last_test_loss; per-rank "trainer/loop" and "comm/ledger"
//   read_loop_and_ledger   the same, on the rank count that wrote them (row = this rank)
//   saved_config           the run's config, keys at their default left unset
void write_loop_and_ledger(io::CheckpointWriter& w, const LoopState& loop, comm::Communicator& comm);
void read_loop_and_ledger(io::CheckpointReader& r, LoopState& loop, comm::Communicator& comm);
config::Config saved_config(io::CheckpointReader& r);

// Collective. What a checkpoint says about itself, checked before anything is restored, evaluated
// or reported: the attribute types and ranges (step, world_size, num_params >= 0/1, elapsed_s);
// config_toml against config_toml_crc32 (when present: older files have none) and the arch,
// strategy and optimizer attributes against config_toml; one row per saved rank in every
// per-rank dataset, num_params (or kept_params) values in the parameter and optimizer datasets;
// model/layout back to back over 0..num_params. Throws one line "checkpoint FILE: PROBLEM".
// checkpoint_config, saved_config, load_checkpoint and inspect_checkpoint call it.
void validate_checkpoint_attributes(io::CheckpointReader& r);

// Collective. Throws io::AgreedError on every rank when any rank's restored `values` (read from
// `dataset` of `path`) hold a NaN or infinity. The ZO path calls it after reading zo/values.
void require_finite_parameters(const std::filesystem::path& path, std::string_view dataset,
                               std::span<const float> values, comm::Communicator& comm);

// Root attributes config_toml (cfg.to_toml()) and config_toml_crc32 (zlib CRC32 of that text).
void write_config_attributes(io::CheckpointWriter& w, const config::Config& cfg);
std::uint32_t config_toml_crc32(std::string_view text);

// Rank 0: metrics.csv of a resumed run keeps the rows up to the checkpoint's step (a run killed
// after its last checkpoint logged rows that the resumed run writes again).
void truncate_metrics(const std::filesystem::path& path, std::int64_t step);

// Collective. Prints a summary of a checkpoint (rank 0) and verifies every checksum.
void inspect_checkpoint(const std::filesystem::path& path, comm::Communicator& comm);

// Collective. Parameters of a checkpoint as one model: the mean of the saved replicas (exact
// when they are identical). Checks num_params. A zeroth-order checkpoint (zo/values + prune/mask)
// comes back dense, with zeros at the pruned weights.
std::vector<float> checkpoint_mean_params(const std::filesystem::path& path, comm::Communicator& comm,
                                          std::size_t num_params);

}  // namespace lowsync::app
