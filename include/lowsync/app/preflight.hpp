// Checks of a run's settings against the launch (its rank count and data) that main() makes
// before any collective: each rank computes the same answer from the same files, so rank 0 can
// say a refusal once and every rank exits alike.
#pragma once

#include "lowsync/config/config.hpp"

namespace lowsync::app {

// The workload's keys agree (no files read): data.name's kind and model.arch (images for mlp and
// cnn, text for gpt), data.partition for that kind (images: iid | dirichlet | shards; text: iid |
// by_source), data.train_limit (images only), optim.name = zo (the sparse MLP only, not gpt).
// Throws one line naming the keys.
void check_workload(const config::Config& cfg);

// Images: reads the training labels of data.dir, partitions them over `world_size` ranks as the
// trainer will, and throws (data::check_batch_fits) when train.batch is larger than some rank's
// share. Text: reads the corpus, deals its sources as the trainer will (data.partition) and throws
// when a rank would get none or the corpus has no training or validation window of
// model.gpt.ctx + 1 bytes.
void check_batch_fits_partition(const config::Config& cfg, int world_size);

}  // namespace lowsync::app
