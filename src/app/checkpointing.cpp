// Trainer checkpoints (see checkpointing.hpp and README "Checkpoints"): what the trainer saves
// into an io::CheckpointWriter file, how it restores it bitwise on the same rank count, and the
// reshard policy on another one (per-rank float state averaged over the old ranks, counters from
// old rank 0, data re-partitioned, then Strategy::reshard fixes what an average does not).
#include "lowsync/app/checkpointing.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/log.hpp"
#include "lowsync/io/checkpoint_file.hpp"
#include "lowsync/io/metrics.hpp"
#include "lowsync/optim/prune.hpp"
#include "lowsync/tensor/half.hpp"
#include "lowsync/config.hpp"

#include <nlohmann/json.hpp>
#include <zlib.h>

#include <algorithm>
#include <fstream>
#include <map>

namespace lowsync::app {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

void validate_attributes(io::CheckpointReader& r);

// Collective. Every saved replica of the parameters (model/params or zo/values) is finite.
void check_parameters_finite(io::CheckpointReader& r) {
  const std::string ds = r.has_dataset("model/params") ? "model/params" : "zo/values";
  if (!r.has_dataset(ds)) return;
  std::vector<float> row(r.row_length(ds));
  for (std::size_t k = 0; k < r.saved_ranks(ds); ++k) {
    r.read_row<float>(ds, k, std::span<float>(row));
    const auto it = std::find_if(row.begin(), row.end(), [](float x) { return !std::isfinite(x); });
    if (it != row.end())
      throw io::AgreedError(fmt::format("checkpoint {}: {} row {} holds {} at index {}: not a usable model",
                                        r.path().string(), ds, k, *it, it - row.begin()));
  }
}

// The first NaN or infinity of `v`, or nullptr.
const float* first_non_finite(std::span<const float> v) {
  const auto it = std::find_if(v.begin(), v.end(), [](float x) { return !std::isfinite(x); });
  return it == v.end() ? nullptr : &*it;
}

// The per-rank loop scalars, in the order of dataset "trainer/loop".
constexpr std::size_t kLoopFields = 7;

std::vector<double> loop_row(const LoopState& l) {
  return {l.compute_s, l.train_s, l.timed_s, static_cast<double>(l.timed_steps), l.loss_window,
          static_cast<double>(l.window_steps), l.window_train_s};
}

void set_loop_row(LoopState& l, std::span<const double> r) {
  l.compute_s = r[0];
  l.train_s = r[1];
  l.timed_s = r[2];
  l.timed_steps = static_cast<std::int64_t>(r[3]);
  l.loss_window = r[4];
  l.window_steps = static_cast<std::int64_t>(r[5]);
  l.window_train_s = r[6];
}

std::string ledger_json(const comm::ByteLedger& ledger) {
  Json j = Json::array();
  for (const auto& [key, e] : ledger.entries())
    j.push_back({static_cast<int>(key.first), key.second, e.calls, e.payload_bytes, e.wire_bytes, e.seconds});
  return j.dump();
}

using LedgerMap = std::map<std::pair<comm::Collective, std::string>, comm::LedgerEntry>;

// The whole of a strategy's sliced global buffer on every rank (RootStateBuffer: rank r holds
// [offset_r, offset_r + size_r)): one allgather of the (offset, size) pairs, one allgatherv of
// the slices, placed by offset. The slices must tile the buffer.
std::vector<float> gather_root_state(comm::Communicator& comm, const sync::RootStateBuffer& b) {
  const auto ranks = static_cast<std::size_t>(comm.size());
  const std::int64_t mine[2] = {static_cast<std::int64_t>(b.offset), static_cast<std::int64_t>(b.data.size())};
  std::vector<std::int64_t> slices(2 * ranks);
  comm.allgather(std::span<const std::int64_t>(mine, 2), std::span<std::int64_t>(slices), comm::kCheckpointTraffic);
  std::vector<std::int64_t> sizes(ranks);
  std::size_t covered = 0;
  for (std::size_t r = 0; r < ranks; ++r) {
    sizes[r] = slices[2 * r + 1];
    covered += static_cast<std::size_t>(sizes[r]);
    if (static_cast<std::size_t>(slices[2 * r] + sizes[r]) > b.size)
      fail("strategy state '{}': rank {} holds [{}, {}) of {} values", b.name, r, slices[2 * r], slices[2 * r] + sizes[r], b.size);
  }
  if (covered != b.size) fail("strategy state '{}': the ranks hold {} of its {} values", b.name, covered, b.size);
  std::vector<float> packed(b.size), whole(b.size);
  comm.allgatherv(std::span<const float>(b.data), std::span<float>(packed), sizes, comm::kCheckpointTraffic);
  std::size_t at = 0;
  for (std::size_t r = 0; r < ranks; ++r) {
    std::copy_n(packed.data() + at, sizes[r], whole.data() + slices[2 * r]);
    at += static_cast<std::size_t>(sizes[r]);
  }
  return whole;
}

LedgerMap parse_ledger(const fs::path& path, std::span<const std::uint8_t> bytes) {
  const auto end = std::find(bytes.begin(), bytes.end(), std::uint8_t{0});
  const std::string text(bytes.begin(), end);
  LedgerMap out;
  try {
    for (const Json& e : Json::parse(text)) {
      const int c = e.at(0).get<int>();
      if (c < 0 || c > static_cast<int>(comm::Collective::alltoall)) fail("collective {}", c);
      out[{static_cast<comm::Collective>(c), e.at(1).get<std::string>()}] =
          comm::LedgerEntry{e.at(2).get<std::uint64_t>(), e.at(3).get<std::uint64_t>(), e.at(4).get<std::uint64_t>(),
                            e.at(5).get<double>()};
    }
  } catch (const std::exception& e) {
    fail("checkpoint {}: dataset 'comm/ledger' is not a valid ledger: {}", path.string(), e.what());
  }
  return out;
}

// Keys that must agree between a checkpoint and the run resuming from it.
constexpr const char* kIdentityKeys[] = {"model.arch",        "sync.strategy",     "optim.name",
                                         "train.seed",        "data.partition",    "data.train_limit",
                                         "precision.compute", "precision.wire",    "prune.method",
                                         "sync.fda.estimator", "optim.zo.update",  "optim.demo.chunk",
                                         "optim.demo.topk",   "optim.zo.form",     "data.name"};

class Restorer {
 public:
  Restorer(const fs::path& path, TrainState& s)
      : s_(s), reader_(path, s.comm), path_(path), rank_(s.comm.rank()), world_(s.comm.size()) {}

  io::CheckpointReader& reader() { return reader_; }
  int saved_world() const { return saved_world_; }
  bool resharding() const { return saved_world_ != world_; }

  void check_header() {
    const std::int64_t version = reader_.has_attribute("trainer_state_version")
                                     ? reader_.attribute_int("trainer_state_version") : -1;
    if (version != kTrainerStateVersion)
      fail("checkpoint {}: trainer_state_version {} (this lowsync reads {}): not a lowsync training checkpoint "
           "or from an incompatible version",
           path_.string(), version, kTrainerStateVersion);
    saved_world_ = static_cast<int>(reader_.attribute_int("world_size"));
    if (saved_world_ < 1 || static_cast<std::size_t>(saved_world_) != reader_.saved_ranks("model/params"))
      fail("checkpoint {}: world_size {} but model/params has {} rows", path_.string(), saved_world_,
           reader_.saved_ranks("model/params"));
    const auto num_params = reader_.attribute_int("num_params");
    if (num_params != static_cast<std::int64_t>(s_.model.num_params()))
      fail("checkpoint {}: num_params is {} there, {} here (model.arch {})", path_.string(), num_params,
           s_.model.num_params(), s_.model.arch());
    validate_checkpoint_attributes(reader_);
    try {  // the same file and config on every rank: they fail alike
      check_compatible(path_, config_from(reader_), s_.cfg);
      check_layout_matches_model();
    } catch (const io::AgreedError&) {
      throw;
    } catch (const Error& e) {
      throw io::AgreedError(e.what());
    }
  }

  // model/layout against this run's model: the same tensors at the same offsets (a layout that
  // only sums to num_params would restore weights into the wrong tensors).
  void check_layout_matches_model() {
    const auto& infos = s_.model.param_infos();
    if (reader_.dataset_shape("model/layout") != std::vector<std::size_t>{infos.size(), 2})
      fail("checkpoint {}: model/layout has shape {} but model.arch {} has {} tensors", path_.string(),
           fmt::join(reader_.dataset_shape("model/layout"), " x "), s_.model.arch(), infos.size());
    std::vector<std::int64_t> layout(infos.size() * 2);
    reader_.read_global<std::int64_t>("model/layout", std::span<std::int64_t>(layout), {infos.size(), 2});
    for (std::size_t i = 0; i < infos.size(); ++i)
      if (layout[2 * i] != static_cast<std::int64_t>(infos[i].offset) ||
          layout[2 * i + 1] != static_cast<std::int64_t>(infos[i].count))
        fail("checkpoint {}: model/layout row {} is (offset {}, count {}), but {} of model.arch {} is (offset {}, "
             "count {})",
             path_.string(), i, layout[2 * i], layout[2 * i + 1], infos[i].name, s_.model.arch(), infos[i].offset,
             infos[i].count);
  }

  // The saved config with keys at their default left unset, as they were in the saved run (a
  // cross-key check such as "demo sets the optimizer itself" must see them as defaults).
  static config::Config config_from(io::CheckpointReader& r) {
    config::Config saved, c;
    saved.load_toml_string(r.attribute_string("config_toml"), r.path().string() + ":config_toml");
    for (const auto& [key, value] : saved.values()) {
      const config::KeySpec* spec = config::find_key(key);
      if (spec == nullptr || !(spec->default_value == value)) c.set(key, value);
    }
    return c;
  }

  // Per-rank float dataset -> out: this rank's row, or the mean of all rows when resharding.
  void read_floats(const std::string& ds, std::span<float> out) {
    if (!reader_.has_dataset(ds)) fail("checkpoint {}: no dataset '{}' (needed by this run)", path_.string(), ds);
    if (reader_.row_length(ds) != out.size())
      fail("checkpoint {}: dataset '{}' has {} values per rank, this run needs {}", path_.string(), ds,
           reader_.row_length(ds), out.size());
    if (!resharding()) {
      reader_.read_row<float>(ds, static_cast<std::size_t>(rank_), out);
      return;
    }
    // Sums in double: the mean of identical rows is exactly that row.
    std::vector<double> acc(out.size(), 0.0);
    std::vector<float> row(out.size());
    for (int r = 0; r < saved_world_; ++r) {
      reader_.read_row<float>(ds, static_cast<std::size_t>(r), std::span<float>(row));
      for (std::size_t i = 0; i < row.size(); ++i) acc[i] += static_cast<double>(row[i]);
    }
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(acc[i] / saved_world_);
  }

  std::vector<double> read_doubles_mean(const std::string& ds, std::size_t n) {
    if (reader_.row_length(ds) != n)
      fail("checkpoint {}: dataset '{}' has {} values per rank, expected {}", path_.string(), ds,
           reader_.row_length(ds), n);
    std::vector<double> out(n, 0.0), row(n);
    if (!resharding()) {
      reader_.read_row<double>(ds, static_cast<std::size_t>(rank_), std::span<double>(out));
      return out;
    }
    for (int r = 0; r < saved_world_; ++r) {
      reader_.read_row<double>(ds, static_cast<std::size_t>(r), std::span<double>(row));
      for (std::size_t i = 0; i < n; ++i) out[i] += row[i] / saved_world_;
    }
    return out;
  }

  // Per-rank int64 row: this rank's, or old rank 0's when resharding.
  std::vector<std::int64_t> read_ints(const std::string& ds, std::size_t n) {
    if (!reader_.has_dataset(ds)) fail("checkpoint {}: no dataset '{}'", path_.string(), ds);
    if (reader_.row_length(ds) != n)
      fail("checkpoint {}: dataset '{}' has {} values per rank, expected {}", path_.string(), ds,
           reader_.row_length(ds), n);
    std::vector<std::int64_t> out(n);
    reader_.read_row<std::int64_t>(ds, resharding() ? 0 : static_cast<std::size_t>(rank_), std::span<std::int64_t>(out));
    return out;
  }

  LedgerMap read_ledger() {
    const std::string ds = "comm/ledger";
    const std::size_t n = reader_.row_length(ds);
    std::vector<std::uint8_t> row(n);
    if (!resharding()) {
      reader_.read_row<std::uint8_t>(ds, static_cast<std::size_t>(rank_), std::span<std::uint8_t>(row));
      return parse_ledger(path_, row);
    }
    // Reshard: the mean over the old ranks of every entry (bytes per rank stay comparable).
    LedgerMap sum;
    for (int r = 0; r < saved_world_; ++r) {
      reader_.read_row<std::uint8_t>(ds, static_cast<std::size_t>(r), std::span<std::uint8_t>(row));
      for (const auto& [k, e] : parse_ledger(path_, row)) sum[k] += e;
    }
    const auto k = static_cast<std::uint64_t>(saved_world_);
    for (auto& [key, e] : sum) e = {e.calls / k, e.payload_bytes / k, e.wire_bytes / k, e.seconds / saved_world_};
    return sum;
  }

 private:
  TrainState& s_;
  io::CheckpointReader reader_;
  fs::path path_;
  int rank_, world_;
  int saved_world_ = 0;
};

}  // namespace

void check_compatible(const fs::path& path, const config::Config& saved, const config::Config& now) {
  for (const char* key : kIdentityKeys) {
    const std::string a = config::format_value(saved.values().at(key)), b = config::format_value(now.values().at(key));
    if (a != b) fail("checkpoint {} is from a different run: {} is {} there, {} here", path.string(), key, a, b);
  }
}

std::uint32_t config_toml_crc32(std::string_view text) {
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(text.data()), static_cast<uInt>(text.size()));
  return static_cast<std::uint32_t>(crc);
}

void write_config_attributes(io::CheckpointWriter& w, const config::Config& cfg) {
  const std::string text = cfg.to_toml();
  w.set_attribute("config_toml", text);
  w.set_attribute("config_toml_crc32", static_cast<std::int64_t>(config_toml_crc32(text)));
}

void require_finite_parameters(const fs::path& path, std::string_view dataset, std::span<const float> values,
                               comm::Communicator& comm) {
  if (comm.any(first_non_finite(values) != nullptr, comm::kCheckpointTraffic))
    throw io::AgreedError(
        fmt::format("checkpoint {}: {} holds NaN or infinite values: not a usable model", path.string(), dataset));
}

void validate_checkpoint_attributes(io::CheckpointReader& r) {
  // Metadata reads are the same on every rank and the one read is collective: every rank fails
  // alike, so each error is an agreed one.
  try {
    validate_attributes(r);
  } catch (const io::AgreedError&) {
    throw;
  } catch (const Error& e) {
    throw io::AgreedError(e.what());
  }
}

namespace {
void validate_attributes(io::CheckpointReader& r) {
  const std::string file = r.path().string();
  // Presence and type (attribute_* throw naming the file and the attribute).
  const std::int64_t version = r.has_attribute("trainer_state_version") ? r.attribute_int("trainer_state_version") : -1;
  if (version != kTrainerStateVersion)
    fail("checkpoint {}: trainer_state_version {} (this lowsync reads {}): not a lowsync training checkpoint "
         "or from an incompatible version",
         file, version, kTrainerStateVersion);
  const std::int64_t world = r.attribute_int("world_size"), num_params = r.attribute_int("num_params");
  const std::int64_t step = r.attribute_int("step");
  if (world < 1) fail("checkpoint {}: world_size {} (must be >= 1)", file, world);
  if (num_params < 1) fail("checkpoint {}: num_params {} (must be >= 1)", file, num_params);
  if (step < 0) fail("checkpoint {}: step {} (must be >= 0)", file, step);
  if (r.has_attribute("optimizer_step_count") && r.attribute_int("optimizer_step_count") < 0)
    fail("checkpoint {}: optimizer_step_count {} (must be >= 0)", file, r.attribute_int("optimizer_step_count"));
  if (const double e = r.attribute_double("elapsed_s"); !(e >= 0.0) || !std::isfinite(e))
    fail("checkpoint {}: elapsed_s {} (must be a finite number >= 0)", file, e);

  // The config text: its checksum (files from before config_toml_crc32 have none), then what
  // the other attributes say about the run against what the config says.
  if (!r.has_attribute("config_toml"))
    fail("checkpoint {}: no attribute 'config_toml': not a lowsync training checkpoint", file);
  const std::string text = r.attribute_string("config_toml");
  if (r.has_attribute("config_toml_crc32")) {
    const std::int64_t stored = r.attribute_int("config_toml_crc32");
    const std::uint32_t computed = config_toml_crc32(text);
    if (stored != static_cast<std::int64_t>(computed))
      fail("checkpoint {}: config_toml does not match its checksum (config_toml_crc32 stored {:08x}, computed {:08x}): "
           "the saved config was altered",
           file, static_cast<std::uint64_t>(stored), computed);
  }
  config::Config cfg;
  cfg.load_toml_string(text, file + ":config_toml");
  const std::string arch = r.attribute_string("arch");
  if (arch != cfg.string("model.arch"))
    fail("checkpoint {}: attribute arch is \"{}\" but its config_toml says model.arch = \"{}\"", file, arch,
         cfg.string("model.arch"));
  const bool zo = cfg.string("optim.name") == "zo";
  if (r.has_attribute("strategy")) {
    const std::string strategy = r.attribute_string("strategy");
    const std::string expected = zo ? "zo." + cfg.string("optim.zo.form") : cfg.string("sync.strategy");
    if (strategy != expected)
      fail("checkpoint {}: attribute strategy is \"{}\" but its config_toml says \"{}\"", file, strategy, expected);
  }
  if (r.has_attribute("optimizer")) {
    const std::string optimizer = r.attribute_string("optimizer");
    // A strategy that owns the update (DeMo) names the optimizer after itself (make_no_update).
    const std::string expected = zo                               ? "zo+" + cfg.string("optim.zo.update")
                                 : sync::strategy_owns_update(cfg) ? cfg.string("sync.strategy")
                                                                  : cfg.string("optim.name");
    if (optimizer != expected)
      fail("checkpoint {}: attribute optimizer is \"{}\" but its config_toml says \"{}\"", file, optimizer,
           expected);
  }

  // Shapes: every per-rank dataset has world_size rows; the parameter datasets hold num_params
  // (or kept_params) values; the fixed-size rows have their size.
  const auto n = static_cast<std::size_t>(num_params);
  std::size_t kept = n;
  if (zo && r.has_attribute("kept_params")) {
    const std::int64_t k = r.attribute_int("kept_params");
    if (k < 0 || k > num_params) fail("checkpoint {}: kept_params {} is outside 0..num_params = {}", file, k, num_params);
    kept = static_cast<std::size_t>(k);
  }
  for (const auto& ds : r.dataset_names()) {
    if (!r.is_per_rank(ds)) continue;
    const auto shape = r.dataset_shape(ds);
    if (shape.size() != 2 || shape[0] != static_cast<std::size_t>(world))
      fail("checkpoint {}: dataset '{}' has shape [{}] but world_size is {} (one row per rank)", file, ds,
           fmt::join(shape, " x "), world);
    std::optional<std::size_t> expected;
    if (ds == "model/params") expected = n;
    if (ds == "zo/values" || (zo && ds.starts_with("optim/"))) expected = kept;
    if (!zo && ds.starts_with("optim/")) expected = n;
    if (ds.starts_with("strategy/counters/")) expected = 1;
    if (ds == "data/cursor") expected = 3;
    if (ds == "trainer/loop") expected = kLoopFields;
    if (expected && shape[1] != *expected)
      fail("checkpoint {}: dataset '{}' has {} values per rank, expected {} (num_params {}{})", file, ds, shape[1],
           *expected, num_params, zo ? fmt::format(", kept_params {}", kept) : "");
  }
  if (!zo && !r.has_dataset("model/params")) fail("checkpoint {}: no dataset 'model/params'", file);
  if (zo && !(r.has_dataset("zo/values") && r.has_dataset("prune/mask")))
    fail("checkpoint {}: optim.name = \"zo\" but no 'zo/values' or 'prune/mask'", file);
  if (r.has_dataset("prune/mask") &&
      r.dataset_shape("prune/mask") != std::vector<std::size_t>{(n + 7) / 8})
    fail("checkpoint {}: prune/mask has shape [{}], expected [{}] bytes for num_params {}", file,
         fmt::join(r.dataset_shape("prune/mask"), " x "), (n + 7) / 8, num_params);

  // model/layout: (offset, count) per tensor, back to back from 0 to num_params.
  if (r.has_dataset("model/layout")) {
    const auto shape = r.dataset_shape("model/layout");
    if (shape.size() != 2 || shape[1] != 2 || shape[0] < 1)
      fail("checkpoint {}: model/layout has shape [{}], expected [tensors x 2]", file, fmt::join(shape, " x "));
    std::vector<std::int64_t> layout(shape[0] * 2);
    r.read_global<std::int64_t>("model/layout", std::span<std::int64_t>(layout), {shape[0], 2});
    std::int64_t next = 0;
    for (std::size_t i = 0; i < shape[0]; ++i) {
      const std::int64_t offset = layout[2 * i], count = layout[2 * i + 1];
      if (offset != next || count < 1 || count > num_params - offset)
        fail("checkpoint {}: model/layout row {} is (offset {}, count {}): tensors must lie back to back in "
             "0..num_params = {} (expected offset {})",
             file, i, offset, count, num_params, next);
      next = offset + count;
    }
    if (next != num_params)
      fail("checkpoint {}: model/layout covers {} values, num_params is {}", file, next, num_params);
    if (r.has_attribute("param_names")) {
      const std::string names = r.attribute_string("param_names");
      const auto commas = static_cast<std::size_t>(std::count(names.begin(), names.end(), ','));
      if (commas + 1 != shape[0])
        fail("checkpoint {}: param_names lists {} tensors, model/layout {}", file, commas + 1, shape[0]);
    }
  } else if (!zo) {
    fail("checkpoint {}: no dataset 'model/layout'", file);
  }
}
}  // namespace

void save_checkpoint(const fs::path& path, TrainState& s) {
  io::CheckpointWriter w(path, s.comm);
  w.set_attribute("trainer_state_version", kTrainerStateVersion);
  w.set_attribute("lowsync_version", LOWSYNC_VERSION);
  w.set_attribute("world_size", s.comm.size());
  w.set_attribute("arch", s.model.arch());
  w.set_attribute("num_params", static_cast<std::int64_t>(s.model.num_params()));
  w.set_attribute("strategy", s.strategy.name());
  w.set_attribute("optimizer", s.optimizer.name());
  w.set_attribute("optimizer_step_count", s.optimizer.step_count());
  w.set_attribute("learning_rate", s.optimizer.learning_rate());
  write_config_attributes(w, s.cfg);
  std::string names;
  for (const auto& info : s.model.param_infos()) names += (names.empty() ? "" : ",") + info.name;
  w.set_attribute("param_names", names);

  // model: layout (global) and every replica (per rank: periodic/FDA replicas differ).
  std::vector<std::int64_t> layout;
  for (const auto& info : s.model.param_infos()) {
    layout.push_back(static_cast<std::int64_t>(info.offset));
    layout.push_back(static_cast<std::int64_t>(info.count));
  }
  w.write_global<std::int64_t>("model/layout", layout, {layout.size() / 2, 2});
  // Checkpoints hold floats whatever the storage (16-bit values are exact in fp32), so a run
  // resumes with either storage; one 16-bit buffer at a time is widened, under the names the
  // float storage uses.
  std::vector<float> wide;
  const auto write_store = [&](const std::string& name, const model::ParamStore& store) {
    if (!store.is_16bit()) {
      w.write_per_rank<float>(name, store.fp32());
      return;
    }
    wide.resize(store.size());
    store.read_fp32(wide);
    w.write_per_rank<float>(name, wide);
  };
  write_store("model/params", s.model.param_store());
  for (const auto& b : s.optimizer.state()) write_store("optim/" + b.name, b.data);
  for (const auto& b : s.strategy.state_buffers()) write_store("strategy/" + b.name, b.data);
  for (const auto& b : s.strategy.root_state_buffers())
    w.write_global<float>("strategy/root/" + b.name, gather_root_state(s.comm, b), {b.size});
  for (const auto& c : s.strategy.state_counters())
    w.write_per_rank<std::int64_t>("strategy/counters/" + c.name, std::span<const std::int64_t>(&c.value, 1));

  const auto cursor = s.loader.cursor();
  const std::int64_t cur[3] = {cursor.epoch, cursor.position, s.loader.samples()};
  w.write_per_rank<std::int64_t>("data/cursor", std::span<const std::int64_t>(cur, 3));
  write_loop_and_ledger(w, s.loop, s.comm);
  w.commit();
}

void write_loop_and_ledger(io::CheckpointWriter& w, const LoopState& l, comm::Communicator& comm) {
  w.set_attribute("step", l.step);
  w.set_attribute("elapsed_s", l.elapsed_s);
  w.set_attribute("last_loss", l.last_loss);
  w.set_attribute("last_test_acc", l.last_test_acc);
  w.set_attribute("last_test_loss", l.last_test_loss);
  const auto loop = loop_row(l);
  w.write_per_rank<double>("trainer/loop", loop);
  // The ledger as JSON bytes, zero-padded to the longest rank's text.
  const std::string ledger = ledger_json(comm.ledger());
  std::int64_t longest = static_cast<std::int64_t>(ledger.size()) + 1;
  comm.allreduce(std::span<std::int64_t>(&longest, 1), comm::ReduceOp::max, "obs.checkpoint");
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(longest), 0);
  std::copy(ledger.begin(), ledger.end(), bytes.begin());
  w.write_per_rank<std::uint8_t>("comm/ledger", bytes);
}

void read_loop_and_ledger(io::CheckpointReader& r, LoopState& l, comm::Communicator& comm) {
  const auto& path = r.path();
  l.step = r.attribute_int("step");
  l.elapsed_s = r.attribute_double("elapsed_s");
  l.last_loss = r.attribute_double("last_loss");
  l.last_test_acc = r.attribute_double("last_test_acc");
  l.last_test_loss = r.attribute_double("last_test_loss");
  for (const char* ds : {"trainer/loop", "comm/ledger"})
    if (!r.has_dataset(ds)) fail("checkpoint {}: no dataset '{}'", path.string(), ds);
  if (r.row_length("trainer/loop") != kLoopFields)
    fail("checkpoint {}: dataset 'trainer/loop' has {} values per rank, expected {}", path.string(),
         r.row_length("trainer/loop"), kLoopFields);
  std::vector<double> row(kLoopFields);
  r.read_row<double>("trainer/loop", static_cast<std::size_t>(comm.rank()), std::span<double>(row));
  set_loop_row(l, row);
  std::vector<std::uint8_t> bytes(r.row_length("comm/ledger"));
  r.read_row<std::uint8_t>("comm/ledger", static_cast<std::size_t>(comm.rank()), std::span<std::uint8_t>(bytes));
  comm.ledger().restore(parse_ledger(path, bytes));
}

config::Config saved_config(io::CheckpointReader& r) {
  if (!r.has_attribute("config_toml"))
    fail("checkpoint {}: no attribute 'config_toml': not a lowsync training checkpoint", r.path().string());
  validate_checkpoint_attributes(r);
  return Restorer::config_from(r);
}

void truncate_metrics(const fs::path& path, std::int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  bool header = true;
  while (std::getline(in, line)) {
    if (!header) {
      const auto comma = line.find(',');
      std::int64_t row_step = 0;
      try {
        row_step = std::stoll(line.substr(0, comma));
      } catch (const std::exception&) {
        continue;  // a partial last line of a killed run
      }
      if (row_step > step) break;
    }
    kept += line + "\n";
    header = false;
  }
  io::write_file_atomic(path, kept);
}

std::vector<std::string> load_checkpoint(const fs::path& path, TrainState& s) {
  Restorer r(path, s);
  r.check_header();
  auto& reader = r.reader();
  std::vector<std::string> notes;
  const int old_world = r.saved_world();

  // Stored as floats (a float-storage run's, or a mean over old ranks when resharding): into a
  // 16-bit store each is rounded to nearest-even (exact for a native run's own checkpoint).
  std::vector<float> wide;
  const auto read_store = [&](const std::string& name, const model::ParamStore& store) {
    if (!store.is_16bit()) {
      r.read_floats(name, store.fp32());
      return;
    }
    wide.resize(store.size());
    r.read_floats(name, wide);
    store.write_fp32(wide);
  };
  read_store("model/params", s.model.param_store());
  for (auto& b : s.optimizer.state()) read_store("optim/" + b.name, b.data);
  // A non-finite weight would only show as a NaN loss steps later; every rank agrees first.
  if (s.comm.any(!s.model.param_store().all_finite(), comm::kCheckpointTraffic))
    throw io::AgreedError(
        fmt::format("checkpoint {}: model/params holds NaN or infinite values: not a usable model", path.string()));
  s.optimizer.set_step_count(reader.attribute_int("optimizer_step_count"));
  for (auto& b : s.strategy.state_buffers()) read_store("strategy/" + b.name, b.data);
  for (auto& b : s.strategy.root_state_buffers()) {
    // The whole buffer (a global dataset, whatever the saving run's rank count); each rank keeps
    // its slice of this run's layout.
    const std::string ds = "strategy/root/" + b.name;
    if (!reader.has_dataset(ds)) fail("checkpoint {}: no dataset '{}' (needed by this run)", path.string(), ds);
    std::vector<float> whole(b.size);
    reader.read_global<float>(ds, std::span<float>(whole), {b.size});
    std::copy_n(whole.data() + b.offset, b.data.size(), b.data.data());
  }
  std::vector<sync::StateCounter> counters = s.strategy.state_counters();
  for (auto& c : counters) c.value = r.read_ints("strategy/counters/" + c.name, 1)[0];
  s.strategy.restore_counters(counters);

  s.loop.step = reader.attribute_int("step");
  s.loop.elapsed_s = reader.attribute_double("elapsed_s");
  s.loop.last_loss = reader.attribute_double("last_loss");
  s.loop.last_test_acc = reader.attribute_double("last_test_acc");
  s.loop.last_test_loss = reader.attribute_double("last_test_loss");
  set_loop_row(s.loop, r.read_doubles_mean("trainer/loop", kLoopFields));
  if (r.resharding()) {
    // Throughput is steps × batch × ranks / time: steps timed on the old rank count would be
    // multiplied by the new one. Time afresh (the first metrics row after the resume, too).
    s.loop.timed_s = 0.0;
    s.loop.timed_steps = 0;
    s.loop.loss_window = 0.0;
    s.loop.window_steps = 0;
    s.loop.window_train_s = 0.0;
  }
  s.comm.ledger().restore(r.read_ledger());

  if (!r.resharding()) {
    const auto cur = r.read_ints("data/cursor", 3);
    if (cur[2] != s.loader.samples())
      fail("checkpoint {}: rank {} had {} training samples there, {} here (data.* changed?)", path.string(),
           s.comm.rank(), cur[2], s.loader.samples());
    s.loader.set_cursor({cur[0], cur[1]});
    return notes;
  }

  // Reshard. Every rank starts a fresh epoch of its new partition, numbered after the furthest
  // epoch any old rank reached, so the shuffles do not repeat an old rank's order.
  std::int64_t epoch = 0;
  std::vector<std::int64_t> cur(3);
  for (int q = 0; q < old_world; ++q) {
    reader.read_row<std::int64_t>("data/cursor", static_cast<std::size_t>(q), std::span<std::int64_t>(cur));
    epoch = std::max(epoch, cur[0]);
  }
  s.loader.set_cursor({epoch + 1, 0});
  sync::StepContext ctx{s.loop.step, s.comm, s.model, s.optimizer, 0.0f};
  notes.push_back(fmt::format(
      "resharding {} -> {} ranks at step {}: parameters, optimizer state ({}), strategy buffers and loop sums "
      "averaged over the old ranks; counters from old rank 0; data re-partitioned over {} ranks, each starting "
      "epoch {}; ledger = mean per old rank",
      old_world, s.comm.size(), s.loop.step,
      s.optimizer.state().empty() ? "none" : "averaged", s.comm.size(),
      epoch + 1));
  notes.push_back(s.strategy.reshard(ctx));
  return notes;
}

fs::path resolve_checkpoint(const fs::path& path, comm::Communicator& comm) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return path;
  if (!fs::is_directory(path, ec)) fail("--resume {}: no such checkpoint file or run folder", path.string());
  for (const fs::path& dir : {path / "checkpoints", path}) {
    if (!fs::is_directory(dir, ec)) continue;
    if (auto found = io::find_latest_checkpoint(dir, comm)) return *found;
  }
  fail("--resume {}: no complete checkpoint in {} or {}", path.string(), (path / "checkpoints").string(), path.string());
}

config::Config checkpoint_config(const fs::path& path, comm::Communicator& comm) {
  io::CheckpointReader reader(path, comm);
  return saved_config(reader);
}

void inspect_checkpoint(const fs::path& path, comm::Communicator& comm) {
  io::CheckpointReader reader(path, comm);
  const int rank = comm.rank();
  auto attr = [&](const char* k) -> std::string {
    if (!reader.has_attribute(k)) return "?";
    try {
      return std::to_string(reader.attribute_int(k));
    } catch (const Error&) {
    }
    try {
      return fmt::format("{}", reader.attribute_double(k));
    } catch (const Error&) {
    }
    return reader.attribute_string(k);
  };
  std::vector<std::string> lines;
  lines.push_back(fmt::format("checkpoint {}", path.string()));
  lines.push_back(fmt::format("  step {}  ranks {}  arch {}  num_params {}  strategy {}  optimizer {}",
                              attr("step"), attr("world_size"), attr("arch"), attr("num_params"),
                              attr("strategy"), attr("optimizer")));
  lines.push_back(fmt::format("  format_version {}  trainer_state_version {}  lowsync {}  file size {} bytes",
                              attr("format_version"), attr("trainer_state_version"), attr("lowsync_version"),
                              fs::file_size(path)));
  for (const auto& name : reader.dataset_names()) {
    const auto shape = reader.dataset_shape(name);
    std::string dims;
    for (const auto d : shape) dims += (dims.empty() ? "" : " x ") + std::to_string(d);
    lines.push_back(fmt::format("  {:<32} {:<6} [{}]{}", name, dtype_name(reader.dataset_dtype(name)),
                                dims.empty() ? "scalar" : dims, reader.is_per_rank(name) ? " per rank" : ""));
  }
  reader.verify_all();
  lines.push_back("  checksums: all OK");
  validate_checkpoint_attributes(reader);
  check_parameters_finite(reader);
  lines.push_back("  attributes, config_toml and dataset shapes: consistent; parameters finite");
  if (rank == 0)
    for (const auto& l : lines) fmt::print("{}\n", l);
}

namespace {

// The mean over the saved ranks of a per-rank float dataset (fp64 sums: exact for identical rows).
std::vector<float> mean_of_rows(io::CheckpointReader& reader, const std::string& dataset, std::size_t n) {
  const std::size_t k = reader.saved_ranks(dataset);
  std::vector<double> acc(n, 0.0);
  std::vector<float> row(n);
  for (std::size_t r = 0; r < k; ++r) {
    reader.read_row<float>(dataset, r, std::span<float>(row));
    // Every rank reads every row: they fail alike.
    if (const float* bad = first_non_finite(row))
      throw io::AgreedError(fmt::format("checkpoint {}: {} row {} holds {} at index {}: not a usable model",
                                        reader.path().string(), dataset, r, *bad, bad - row.data()));
    for (std::size_t i = 0; i < n; ++i) acc[i] += row[i];
  }
  for (std::size_t i = 0; i < n; ++i) row[i] = static_cast<float>(acc[i] / static_cast<double>(k));
  return row;
}

// A zeroth-order checkpoint stores the kept values only (zo/values, in flat order) and the
// bitmap of kept weights (prune/mask): scatter the rank average into a dense vector, zeros at
// the pruned weights, which is what the sparse forward computes with.
std::vector<float> zo_checkpoint_mean_params(io::CheckpointReader& reader, const fs::path& path, std::size_t num_params) {
  std::vector<std::uint8_t> bytes((num_params + 7) / 8);
  reader.read_global<std::uint8_t>("prune/mask", std::span<std::uint8_t>(bytes), {bytes.size()});
  optim::SparseParams kept(std::make_shared<const optim::Mask>(optim::Mask::from_bytes(num_params, bytes)));
  if (reader.row_length("zo/values") != kept.size())
    fail("checkpoint {}: zo/values has {} values per rank, prune/mask keeps {}", path.string(),
         reader.row_length("zo/values"), kept.size());
  const auto mean = mean_of_rows(reader, "zo/values", kept.size());
  std::copy(mean.begin(), mean.end(), kept.values().begin());
  std::vector<float> dense(num_params);
  kept.scatter(dense);
  return dense;
}

}  // namespace

std::vector<float> checkpoint_mean_params(const fs::path& path, comm::Communicator& comm, std::size_t num_params) {
  io::CheckpointReader reader(path, comm);
  if (!reader.has_dataset("model/params") && reader.has_dataset("zo/values") && reader.has_dataset("prune/mask"))
    return zo_checkpoint_mean_params(reader, path, num_params);
  if (!reader.has_dataset("model/params")) fail("checkpoint {}: no dataset 'model/params'", path.string());
  if (reader.row_length("model/params") != num_params)
    fail("checkpoint {}: model/params has {} values per rank, the model has {}", path.string(),
         reader.row_length("model/params"), num_params);
  return mean_of_rows(reader, "model/params", num_params);
}

}  // namespace lowsync::app
