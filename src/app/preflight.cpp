// Launch checks made before training starts (preflight.hpp): train.batch against every rank's
// data partition, computed from the labels alone (no pixels) exactly as the trainers split them.
#include "lowsync/app/preflight.hpp"

#include "lowsync/data/dataset.hpp"
#include "lowsync/data/partition.hpp"
#include "lowsync/data/registry.hpp"

namespace lowsync::app {

void check_batch_fits_partition(const config::Config& cfg, int world_size) {
  const auto labels =
      data::dataset_entry(cfg.string("data.name")).train_labels(cfg.string("data.dir"), cfg.integer("data.train_limit"));
  // The trainers' spec: seed = train.seed (trainer.cpp, zo_trainer.cpp).
  const data::PartitionSpec spec{cfg.string("data.partition"), cfg.real("data.alpha"),
                                 static_cast<int>(cfg.integer("data.shards_per_rank")),
                                 static_cast<std::uint64_t>(cfg.integer("train.seed"))};
  data::check_batch_fits(data::partition(labels, world_size, spec), cfg.integer("train.batch"), spec);
}

}  // namespace lowsync::app
