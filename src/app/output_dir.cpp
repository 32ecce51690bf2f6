// --out folder contract (output_dir.hpp): refuse a folder holding another run unless --resume or
// --force; --force removes that run's files first. Rank 0 reads and changes the file system; the
// verdict reaches every rank by one broadcast, so no rank goes on while another stops.
#include "lowsync/app/output_dir.hpp"

#include "lowsync/io/checkpoint_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <span>

namespace lowsync::app {
namespace fs = std::filesystem;
namespace {

// Files a training run writes into its --out folder (besides checkpoints).
constexpr const char* kRunFiles[] = {"config.toml", "metrics.csv", "summary.json"};

bool is_checkpoint_file(const fs::path& p) {
  const std::string name = p.filename().string();
  if (io::checkpoint_step(p)) return true;
  return name.ends_with(".tmp") && io::checkpoint_step(name.substr(0, name.size() - 4)).has_value();
}

std::string describe(const fs::path& out_dir, const std::vector<fs::path>& found) {
  std::vector<std::string> names;
  std::size_t checkpoints = 0;
  for (const auto& p : found) {
    if (is_checkpoint_file(p)) {
      ++checkpoints;
    } else {
      names.push_back(p.filename().string());
    }
  }
  if (checkpoints > 0) names.push_back(fmt::format("{} checkpoint file{}", checkpoints, checkpoints == 1 ? "" : "s"));
  return fmt::format("{}", fmt::join(names, ", "));
}

// Rank 0: the verdict, or nothing when the run may go ahead.
std::optional<std::string> decide(const fs::path& out_dir, const fs::path& checkpoint_dir, bool resume, bool force) {
  std::error_code ec;
  if (fs::exists(out_dir, ec) && !fs::is_directory(out_dir, ec))
    return fmt::format("--out {} is a file, not a folder", out_dir.string());
  const auto found = previous_run_files(out_dir, checkpoint_dir);
  if (found.empty() || resume) return std::nullopt;
  if (!force)
    return fmt::format("--out {} already holds another run ({}); continue it with --resume {} or replace it with --force",
                       out_dir.string(), describe(out_dir, found), out_dir.string());
  for (const auto& p : found) {
    fs::remove(p, ec);
    if (ec) return fmt::format("--force: cannot remove {} of the old run: {}", p.string(), ec.message());
  }
  // An emptied checkpoints folder goes too (fs::remove leaves a non-empty folder alone).
  if (fs::is_directory(checkpoint_dir, ec) && fs::is_empty(checkpoint_dir, ec)) fs::remove(checkpoint_dir, ec);
  return std::nullopt;
}

}  // namespace

std::vector<fs::path> previous_run_files(const fs::path& out_dir, const fs::path& checkpoint_dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (const char* name : kRunFiles)
    if (fs::exists(out_dir / name, ec)) found.push_back(out_dir / name);
  if (fs::is_directory(checkpoint_dir, ec)) {
    for (fs::directory_iterator it(checkpoint_dir, ec), end; !ec && it != end; it.increment(ec))
      if (is_checkpoint_file(it->path())) found.push_back(it->path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::optional<std::string> claim_output_dir(const fs::path& out_dir, const fs::path& checkpoint_dir, bool resume,
                                            bool force, comm::Communicator& comm) {
  std::string verdict;
  if (comm.rank() == 0) verdict = decide(out_dir, checkpoint_dir, resume, force).value_or("");
  std::int64_t length = static_cast<std::int64_t>(verdict.size());
  comm.broadcast(std::span<std::int64_t>(&length, 1), 0, "obs.setup");
  verdict.resize(static_cast<std::size_t>(length));
  if (length > 0)
    comm.broadcast(std::span<std::uint8_t>(reinterpret_cast<std::uint8_t*>(verdict.data()), verdict.size()), 0,
                   "obs.setup");
  if (verdict.empty()) return std::nullopt;
  return verdict;
}

}  // namespace lowsync::app
