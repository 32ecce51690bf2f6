// Per-rank data partitions (every rank computes the same global split from the seed, so the result
// does not depend on the launcher): iid equal slices, Dirichlet(alpha) label skew per rank (the
// usual federated-learning recipe), or label-sorted shards.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lowsync::data {

struct PartitionSpec {
  std::string method = "iid";  // iid | dirichlet | shards
  double alpha = 0.5;          // dirichlet
  int shards_per_rank = 2;     // shards
  std::uint64_t seed = 1;
};

// Sample indices of every rank: result[r] is rank r's list.
std::vector<std::vector<std::int64_t>> partition(std::span<const std::int32_t> labels, int world_size,
                                                 const PartitionSpec& spec, int num_classes = 10);

// Every rank draws train.batch samples a step from its own partition: throws naming the first
// rank whose partition holds fewer than `batch` samples (the same answer on every rank, which
// computes the same partition).
void check_batch_fits(const std::vector<std::vector<std::int64_t>>& parts, std::int64_t batch,
                      const PartitionSpec& spec);

std::vector<std::int64_t> label_histogram(std::span<const std::int64_t> indices,
                                          std::span<const std::int32_t> labels, int num_classes = 10);

}  // namespace lowsync::data
