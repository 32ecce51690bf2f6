// lowsync command line: train, compare, config (key reference), inspect, eval, --help/--version.
//   lowsync train [--config FILE.toml] [--set key=value]... [--out DIR] [--resume CKPT|RUN_DIR | --force]
//   lowsync inspect CHECKPOINT               (summary + checksum verification)
//   lowsync eval --checkpoint CHECKPOINT     (test-set loss and accuracy of the saved model)
//   lowsync compare RUN_DIR... [--out DIR]   (hands over to tools/compare/compare.py)
// Exit codes: 0 ok, 1 usage, 2 error, 3 stopped early with a checkpoint, 4 collective timeout.
#include "lowsync/app/checkpointing.hpp"
#include "lowsync/app/output_dir.hpp"
#include "lowsync/app/preflight.hpp"
#include "lowsync/app/runtime.hpp"
#include "lowsync/app/signals.hpp"
#include "lowsync/app/trainer.hpp"
#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/config/defaults.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/sync/strategy.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/config.hpp"

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <optional>

namespace {

// `lowsync compare` needs no MPI: it replaces this process with the Python report generator
// (Debian's python3 with matplotlib), found next to the sources or via LOWSYNC_COMPARE_SCRIPT.
int exec_compare(int argc, char** argv) {
  const char* env = std::getenv("LOWSYNC_COMPARE_SCRIPT");
  const std::string script = env != nullptr ? env : std::string(LOWSYNC_SOURCE_DIR) + "/tools/compare/compare.py";
  if (!std::filesystem::exists(script)) {
    std::fprintf(stderr, "lowsync: error: compare script '%s' not found (set LOWSYNC_COMPARE_SCRIPT)\n", script.c_str());
    return 2;
  }
  const char* python = std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  std::vector<char*> args = {const_cast<char*>(python), const_cast<char*>(script.c_str())};
  for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
  args.push_back(nullptr);
  execvp(python, args.data());
  std::fprintf(stderr, "lowsync: error: cannot run %s: %s\n", python, std::strerror(errno));
  return 2;
}

std::string default_out_dir() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "runs/%Y%m%d-%H%M%S", &tm);
  return buf;
}

// Rank 0 picks the default output folder; every rank must use the same one.
std::string agree_on_out_dir(lowsync::comm::Communicator& comm, std::string out) {
  if (!out.empty()) return out;
  std::vector<std::uint8_t> buf(256, 0);
  if (comm.rank() == 0) {
    const std::string name = default_out_dir();
    std::copy(name.begin(), name.end(), buf.begin());
  }
  comm.broadcast(std::span<std::uint8_t>(buf), 0, "obs.setup");
  return std::string(reinterpret_cast<const char*>(buf.data()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "compare") == 0) return exec_compare(argc, argv);
  // Before MPI_Init starts threads: stop signals go to StopSignals' own thread only (signals.hpp).
  lowsync::app::block_stop_signals();
  lowsync::app::Runtime runtime(argc, argv);
  CLI::App app{"lowsync: data-parallel training that compares synchronization strategies"};
  app.set_version_flag("--version", std::string("lowsync ") + LOWSYNC_VERSION);
  app.require_subcommand(1);

  auto* train = app.add_subcommand("train", "train a model (run under mpirun/srun for several ranks)");
  std::string config_file, out_dir;
  std::vector<std::string> sets;
  train->add_option("--config", config_file, "TOML file with dotted keys or [sections]");
  train->add_option("--set", sets, "override one key: --set optim.lr=0.1 (repeatable)");
  train->add_option("--out", out_dir, "output folder (default runs/<timestamp>; with --resume the run's folder)");
  std::string resume_arg;
  auto* resume_opt = train->add_option(
      "--resume", resume_arg, "continue from a checkpoint file, or from the newest good checkpoint of a run folder");
  bool force = false;
  train->add_flag("--force", force,
                  "--out holds another run: remove its config.toml, metrics.csv, summary.json and checkpoints, "
                  "then start afresh")
      ->excludes(resume_opt);

  auto* inspect_cmd = app.add_subcommand("inspect", "summarise a checkpoint and verify its checksums");
  std::string inspect_path;
  inspect_cmd->add_option("checkpoint", inspect_path, "checkpoint file (.h5)")->required();
  auto* eval_cmd = app.add_subcommand("eval", "evaluate a checkpoint's model on the test set (gpt: the validation windows; JSON on stdout)");
  std::string eval_path;
  eval_cmd->add_option("--checkpoint", eval_path, "checkpoint file (.h5)")->required();
  eval_cmd->add_option("--set", sets, "override a key of the saved config (e.g. data.dir, eval.batch)");

  app.add_subcommand("compare", "compare runs: lowsync compare RUN_DIR... [--out DIR] [--target-acc 0.85]")
      ->allow_extras();
  auto* config_cmd = app.add_subcommand("config", "print every configuration key as a Markdown table");
  bool print_defaults = false;
  config_cmd->add_flag("--defaults", print_defaults, "print the default configuration as TOML instead");

  // An unknown command: name it and the valid ones (CLI11 would say "A subcommand is required").
  std::string names;
  bool known = false;
  for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    names += (names.empty() ? "" : ", ") + sub->get_name();
    known = known || (argc >= 2 && sub->get_name() == argv[1]);
  }
  if (argc >= 2 && argv[1][0] != '-' && !known) {
    if (runtime.rank() == 0) {
      std::fprintf(stderr, "lowsync: error: unknown command '%s' (commands: %s; see lowsync --help)\n", argv[1],
                   names.c_str());
    }
    return 1;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 1, as documented (CLI11's own codes
    // are 100+).
    const int code = runtime.rank() == 0 ? app.exit(e) : e.get_exit_code();
    return code == 0 ? 0 : 1;
  }

  // Only `train` takes stop signals; every other command keeps their default action (terminate).
  if (!*train) lowsync::app::unblock_stop_signals();
  try {
    if (*config_cmd) {
      if (runtime.rank() == 0)
        std::fputs((print_defaults ? lowsync::config::Config().to_toml() : lowsync::config::schema_markdown()).c_str(),
                   stdout);
      return 0;
    }
    // Checkpoint lookups before the run's config is known (inspect, eval, --resume): their own
    // communicator, no watchdog (comm.timeout_seconds is not read yet).
    lowsync::comm::Communicator files(MPI_COMM_WORLD);
    if (*inspect_cmd) {
      lowsync::app::inspect_checkpoint(inspect_path, files);
      return 0;
    }
    if (*eval_cmd) {
      auto cfg = lowsync::app::checkpoint_config(eval_path, files);
      for (const auto& s : sets) cfg.set_text(s);
      lowsync::comm::Communicator comm(MPI_COMM_WORLD, {false, cfg.real("comm.timeout_seconds")});
      const auto result = lowsync::app::evaluate_checkpoint(eval_path, cfg, comm);
      if (runtime.rank() == 0) std::printf("%s\n", result.dump(2).c_str());
      return 0;
    }
    // --resume: the saved config is the base; --config and --set apply on top (train.steps to
    // extend a run), but may not change what the checkpoint is (model.arch, sync.strategy, ...).
    lowsync::config::Config cfg;
    std::optional<std::filesystem::path> resume;
    if (!resume_arg.empty()) {
      resume = lowsync::app::resolve_checkpoint(resume_arg, files);
      cfg = lowsync::app::checkpoint_config(*resume, files);
      if (out_dir.empty()) {
        const std::filesystem::path parent = resume->parent_path();
        out_dir = std::filesystem::is_directory(resume_arg) ? std::filesystem::path(resume_arg)
                  : parent.filename() == "checkpoints"      ? parent.parent_path()
                                                            : parent;
        if (out_dir.empty()) out_dir = ".";
      }
    }
    const lowsync::config::Config saved = cfg;
    // Parsing and validating the arguments (and train.batch against every rank's partition of the
    // same data files) calls no MPI and fails on every rank alike: rank 0
    // says it once and all exit 2 through MPI_Finalize, with no MPI_Abort banner (launch.sh runs
    // mpirun -q, which then adds none). Errors after this point may hit one rank: MPI_Abort below.
    try {
      if (!config_file.empty()) cfg.load_toml_file(config_file);
      for (const auto& s : sets) cfg.set_text(s);
      lowsync::config::apply_context_defaults(cfg);
      cfg.validate();
      lowsync::sync::validate_config(cfg);
      lowsync::app::check_workload(cfg);
      lowsync::app::check_batch_fits_partition(cfg, runtime.size());
    } catch (const lowsync::Error& e) {
      if (runtime.rank() == 0) std::fprintf(stderr, "lowsync: rank 0: error: %s\n", e.what());
      return 2;
    }
    if (resume) lowsync::app::check_compatible(*resume, saved, cfg);
    lowsync::app::Runtime::set_threads(static_cast<int>(cfg.integer("train.threads")));
    if (cfg.string("comm.backend") == "nccl" && !LOWSYNC_HAS_NCCL)
      lowsync::fail("comm.backend = \"nccl\" but this lowsync was built without NCCL (LOWSYNC_ENABLE_NCCL)");
    if (cfg.string("comm.backend") == "nccl")
      lowsync::fail("comm.backend = \"nccl\": the NCCL backend is detected at build time but not implemented yet; use mpi");
    lowsync::comm::Communicator comm(MPI_COMM_WORLD, {cfg.boolean("comm.deterministic"),
                                                      cfg.real("comm.timeout_seconds"),
                                                      cfg.boolean("comm.separate_waits")});
    const std::filesystem::path out = agree_on_out_dir(comm, out_dir);
    const std::filesystem::path ckpt_dir =
        cfg.string("checkpoint.dir").empty() ? out / "checkpoints" : std::filesystem::path(cfg.string("checkpoint.dir"));
    // Every rank has the same verdict: rank 0 says it once and all exit 2 together.
    if (const auto refused = lowsync::app::claim_output_dir(out, ckpt_dir, resume.has_value(), force, comm)) {
      if (runtime.rank() == 0) std::fprintf(stderr, "lowsync: rank 0: error: %s\n", refused->c_str());
      return 2;
    }
    const auto result = lowsync::app::train(cfg, comm, out, resume);
    return result.exit_code;
  } catch (const lowsync::io::AgreedError& e) {
    // Every rank threw this same error together (a checkpoint problem they agreed on): rank 0 says
    // it once and all exit 2 through MPI_Finalize.
    if (runtime.rank() == 0) std::fprintf(stderr, "lowsync: rank 0: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowsync: rank %d: error: %s\n", runtime.rank(), e.what());
    std::fflush(stderr);
    // Peers may be waiting in a collective this rank will never reach.
    if (runtime.size() > 1) runtime.abort(2);
    return 2;
  }
}
