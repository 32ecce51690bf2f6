// The run folder contract of `lowsync train`: an --out folder that already holds another run
// (config.toml, metrics.csv, summary.json, checkpoints) is refused unless the run continues it
// (--resume) or replaces it (--force, which first removes the old run's files so a later --resume
// cannot pick up its checkpoints). Rank 0 decides; every rank gets the same answer.
#pragma once

#include "lowsync/comm/communicator.hpp"

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace lowsync::app {

// What a previous run left: the run files in `out_dir` and the checkpoint files (ckpt-*.h5 and
// their .tmp leftovers) in `checkpoint_dir`, sorted. Empty when the folders are new or hold
// nothing of a run. Local (no MPI).
std::vector<std::filesystem::path> previous_run_files(const std::filesystem::path& out_dir,
                                                      const std::filesystem::path& checkpoint_dir);

// Collective. Rank 0 looks at out_dir / checkpoint_dir: a previous run there is accepted when
// `resume`, removed when `force` (its files only; other files stay), and otherwise refused. Returns
// the refusal (or a failed removal) as one line, identical on every rank, or nothing.
std::optional<std::string> claim_output_dir(const std::filesystem::path& out_dir,
                                            const std::filesystem::path& checkpoint_dir, bool resume, bool force,
                                            comm::Communicator& comm);

}  // namespace lowsync::app
