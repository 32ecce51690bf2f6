// Per-rank data partitions (every rank computes the same global split from the seed, so the result
// does not depend on the launcher). Images: iid equal slices, Dirichlet(alpha) label skew per rank
// (the usual federated-learning recipe), or label-sorted shards. Text: iid (every rank draws from
// all training bytes) or by_source (whole files dealt to ranks by Dirichlet(alpha)).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lowsync::data {

struct PartitionSpec {
  std::string method = "iid";  // images: iid | dirichlet | shards; text: iid | by_source
  double alpha = 0.5;          // dirichlet, by_source
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

// Text sources of every rank: result[r] lists (sorted) the source indices rank r draws windows
// from. `windows[s]` is source s's count of training windows; sources without one are dealt to
// nobody. iid: every rank gets every source. by_source (ALGORITHMS.md §8): proportions p ~
// Dirichlet(alpha) over the ranks; a seeded shuffle of the sources gives rank r its r-th source
// (every rank gets at least one), each further source goes to a rank drawn from p. Throws when
// there are fewer usable sources than ranks, or none.
std::vector<std::vector<int>> partition_sources(std::span<const std::int64_t> windows, int world_size,
                                                const PartitionSpec& spec);

std::vector<std::int64_t> label_histogram(std::span<const std::int64_t> indices,
                                          std::span<const std::int32_t> labels, int num_classes = 10);

}  // namespace lowsync::data
