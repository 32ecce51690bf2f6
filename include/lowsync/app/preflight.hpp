// Checks of a run's settings against the launch (its rank count and data) that main() makes
// before any collective: each rank computes the same answer from the same files, so rank 0 can
// say a refusal once and every rank exits alike.
#pragma once

#include "lowsync/config/config.hpp"

namespace lowsync::app {

// Reads the training labels of data.dir, partitions them over `world_size` ranks as the trainer
// will, and throws (data::check_batch_fits) when train.batch is larger than some rank's share.
void check_batch_fits_partition(const config::Config& cfg, int world_size);

}  // namespace lowsync::app
