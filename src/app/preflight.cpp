// Launch checks made before training starts (preflight.hpp): the workload's keys, and train.batch
// against every rank's data partition, computed from the labels alone (no pixels) or from the text
// corpus exactly as the trainers split them.
#include "lowsync/app/preflight.hpp"

#include "lowsync/app/run_loop.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/data/dataset.hpp"
#include "lowsync/data/partition.hpp"
#include "lowsync/data/registry.hpp"
#include "lowsync/data/text.hpp"

namespace lowsync::app {

void check_workload(const config::Config& cfg) {
  const std::string& name = cfg.string("data.name");
  const std::string& arch = cfg.string("model.arch");
  const std::string& partition = cfg.string("data.partition");
  const bool text = text_workload(cfg);
  if (text && arch != "gpt")
    fail("data.name = {} is byte-level text: it trains model.arch = gpt, not {}", name, arch);
  if (!text && arch == "gpt")
    fail("model.arch = gpt trains on byte-level text (data.name = fortunes), not data.name = {}", name);
  if (text && partition != "iid" && partition != "by_source")
    fail("data.partition = {} splits labelled images; text (data.name = {}) is split by iid | by_source", partition, name);
  if (!text && partition == "by_source")
    fail("data.partition = by_source deals text files to ranks; images (data.name = {}) are split by iid | dirichlet | "
         "shards", name);
  if (text && cfg.integer("data.train_limit") != 0)
    fail("data.train_limit = {} limits image samples; text (data.name = {}) trains on every file of data.dir",
         cfg.integer("data.train_limit"), name);
  if (arch == "gpt") model_options(cfg);  // model.gpt.* sizes, before any collective
  if (arch == "gpt" && cfg.string("optim.name") == "zo")
    fail("optim.name = zo cannot train model.arch = gpt: zeroth-order training runs the sparse MLP only (use optim.name "
         "= adamw or sgd)");
}

void check_batch_fits_partition(const config::Config& cfg, int world_size) {
  const auto& entry = data::dataset_entry(cfg.string("data.name"));
  // The trainers' spec: seed = train.seed (run_loop.cpp load_training_data).
  const data::PartitionSpec spec{cfg.string("data.partition"), cfg.real("data.alpha"),
                                 static_cast<int>(cfg.integer("data.shards_per_rank")),
                                 static_cast<std::uint64_t>(cfg.integer("train.seed"))};
  if (entry.kind == data::DataKind::text) {
    const auto corpus = entry.load_text(cfg.string("data.dir"));
    const int context = text_context(cfg);
    const auto windows = corpus.train_windows(context);
    std::int64_t total = 0;
    for (std::int64_t w : windows) total += w;
    if (total == 0)
      fail("data.dir '{}': no file's training part (its first 90%) holds a window of model.gpt.ctx + 1 = {} bytes",
           corpus.dir.string(), context + 1);
    if (data::validation_windows(corpus, context, 1).empty())
      fail("data.dir '{}': no file's validation part (its last 10%) holds a window of model.gpt.ctx + 1 = {} bytes",
           corpus.dir.string(), context + 1);
    // Windows are drawn with replacement: any rank with one source of one window can fill a batch.
    data::partition_sources(windows, world_size, spec);
    return;
  }
  const auto labels = entry.train_labels(cfg.string("data.dir"), cfg.integer("data.train_limit"));
  data::check_batch_fits(data::partition(labels, world_size, spec), cfg.integer("train.batch"), spec);
}

}  // namespace lowsync::app
