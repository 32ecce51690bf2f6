// Data partitions over ranks (see partition.hpp). Randomness comes from one std::mt19937_64 seeded
// with train.seed, drawn in a fixed order, so every rank computes the same split.
#include "lowsync/data/partition.hpp"

#include "lowsync/core/error.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace lowsync::data {
namespace {

// Samples per rank below which a Dirichlet draw is redrawn (the common FL recipe uses 10).
constexpr std::size_t kMinSamplesPerRank = 10;

// For a tiny alpha every Gamma(alpha) draw underflows to 0 in double. Gamma(alpha) equals
// Gamma(alpha + 1) * U^(1/alpha) in distribution, so its logarithm log G + log(U) / alpha stays
// finite; normalising by the largest keeps the skew asked for (for alpha = 1e-6 one rank gets
// the whole class) instead of an even split. Fills p and returns its sum.
double log_space_proportions(std::vector<double>& p, double alpha, std::mt19937_64& rng) {
  std::gamma_distribution<double> gamma1(alpha + 1.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<double> log_x(p.size());
  for (double& lx : log_x) {
    const double g = gamma1(rng);
    const double u = 1.0 - uniform(rng);  // in (0, 1]: log(u) is finite
    lx = std::log(g) + std::log(u) / alpha;
  }
  const double top = *std::max_element(log_x.begin(), log_x.end());
  double sum = 0.0;
  for (std::size_t r = 0; r < p.size(); ++r) sum += (p[r] = std::exp(log_x[r] - top));
  return sum;  // >= 1: the largest term is exp(0)
}

// Unnormalised Dirichlet(alpha) weights into p (Gamma(alpha) draws; the log-space fallback when
// all underflow); returns their sum. One draw order, shared by the label and source partitions.
double dirichlet_weights(std::vector<double>& p, double alpha, std::mt19937_64& rng) {
  std::gamma_distribution<double> gamma(alpha, 1.0);
  double sum = 0.0;
  for (double& x : p) sum += (x = gamma(rng));
  if (!(sum > 0.0)) sum = log_space_proportions(p, alpha, rng);
  return sum;
}

std::vector<std::vector<std::int64_t>> split_iid(std::size_t n, int k, std::mt19937_64& rng) {
  std::vector<std::int64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<std::vector<std::int64_t>> parts(k);
  const std::size_t base = n / k, extra = n % k;
  std::size_t pos = 0;
  for (int r = 0; r < k; ++r) {
    const std::size_t len = base + (static_cast<std::size_t>(r) < extra ? 1 : 0);
    parts[r].assign(all.begin() + pos, all.begin() + pos + len);
    pos += len;
  }
  return parts;
}

std::vector<std::vector<std::int64_t>> split_dirichlet(std::span<const std::int32_t> labels, int k,
                                                       double alpha, int num_classes, std::mt19937_64& rng) {
  std::vector<std::vector<std::int64_t>> by_class(num_classes);
  for (std::size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(static_cast<std::int64_t>(i));
  for (int attempt = 0; attempt < 1000; ++attempt) {
    std::vector<std::vector<std::int64_t>> parts(k);
    for (int c = 0; c < num_classes; ++c) {
      std::vector<std::int64_t> idx = by_class[c];
      std::shuffle(idx.begin(), idx.end(), rng);
      std::vector<double> p(k);
      const double sum = dirichlet_weights(p, alpha, rng);
      std::size_t begin = 0;
      double cum = 0.0;
      for (int r = 0; r < k; ++r) {
        cum += p[r] / sum;
        const std::size_t end = r == k - 1 ? idx.size() : std::min(idx.size(), static_cast<std::size_t>(cum * idx.size() + 0.5));
        parts[r].insert(parts[r].end(), idx.begin() + begin, idx.begin() + std::max(begin, end));
        begin = std::max(begin, end);
      }
    }
    const bool ok = std::all_of(parts.begin(), parts.end(), [&](const auto& p) {
      return p.size() >= std::min(kMinSamplesPerRank, labels.size() / k);
    });
    if (ok) {
      for (auto& p : parts) std::sort(p.begin(), p.end());
      return parts;
    }
  }
  fail("data.partition = dirichlet: could not give every one of {} ranks {} samples with data.alpha = {}; raise data.alpha",
       k, kMinSamplesPerRank, alpha);
}

std::vector<std::vector<std::int64_t>> split_shards(std::span<const std::int32_t> labels, int k,
                                                    int shards_per_rank, std::mt19937_64& rng) {
  const std::size_t num_shards = static_cast<std::size_t>(k) * shards_per_rank;
  if (labels.size() < num_shards)
    fail("data.partition = shards: {} samples cannot make {} shards ({} ranks x data.shards_per_rank {})",
         labels.size(), num_shards, k, shards_per_rank);
  std::vector<std::int64_t> sorted(labels.size());
  std::iota(sorted.begin(), sorted.end(), 0);
  std::stable_sort(sorted.begin(), sorted.end(), [&](std::int64_t a, std::int64_t b) { return labels[a] < labels[b]; });
  std::vector<std::size_t> shard_ids(num_shards);
  std::iota(shard_ids.begin(), shard_ids.end(), 0);
  std::shuffle(shard_ids.begin(), shard_ids.end(), rng);
  std::vector<std::vector<std::int64_t>> parts(k);
  for (std::size_t s = 0; s < num_shards; ++s) {
    const std::size_t id = shard_ids[s];
    const std::size_t begin = id * labels.size() / num_shards, end = (id + 1) * labels.size() / num_shards;
    auto& part = parts[s / shards_per_rank];
    part.insert(part.end(), sorted.begin() + begin, sorted.begin() + end);
  }
  return parts;
}

}  // namespace

std::vector<std::vector<std::int64_t>> partition(std::span<const std::int32_t> labels, int world_size,
                                                 const PartitionSpec& spec, int num_classes) {
  if (world_size < 1) fail("partition: world size must be >= 1, got {}", world_size);
  if (labels.size() < static_cast<std::size_t>(world_size))
    fail("data: {} training samples cannot be split over {} ranks", labels.size(), world_size);
  std::mt19937_64 rng(spec.seed * 0x9e3779b97f4a7c15ULL + 17);
  if (spec.method == "iid") return split_iid(labels.size(), world_size, rng);
  if (spec.method == "dirichlet") return split_dirichlet(labels, world_size, spec.alpha, num_classes, rng);
  if (spec.method == "shards") return split_shards(labels, world_size, spec.shards_per_rank, rng);
  fail("data.partition = '{}' is not one of iid|dirichlet|shards", spec.method);
}

std::vector<std::vector<int>> partition_sources(std::span<const std::int64_t> windows, int world_size,
                                                const PartitionSpec& spec) {
  if (world_size < 1) fail("partition: world size must be >= 1, got {}", world_size);
  std::vector<int> usable;
  for (std::size_t s = 0; s < windows.size(); ++s)
    if (windows[s] > 0) usable.push_back(static_cast<int>(s));
  if (usable.empty()) fail("data: no text source has a training window (a file's training part is too short)");
  std::vector<std::vector<int>> parts(static_cast<std::size_t>(world_size));
  if (spec.method == "iid") {
    for (auto& p : parts) p = usable;
    return parts;
  }
  if (spec.method != "by_source") fail("data.partition = '{}' is not one of iid|by_source (text)", spec.method);
  if (usable.size() < static_cast<std::size_t>(world_size))
    fail("data.partition = by_source: {} ranks but only {} text sources with a training window; use fewer ranks or "
         "data.partition = iid", world_size, usable.size());
  std::mt19937_64 rng(spec.seed * 0x9e3779b97f4a7c15ULL + 29);
  std::vector<double> p(static_cast<std::size_t>(world_size));
  const double sum = dirichlet_weights(p, spec.alpha, rng);
  std::shuffle(usable.begin(), usable.end(), rng);
  std::uniform_real_distribution<double> uniform(0.0, sum);
  for (std::size_t i = 0; i < usable.size(); ++i) {
    std::size_t r = i;
    if (i >= parts.size()) {
      // Categorical draw from p (the last rank takes the rounding remainder).
      double u = uniform(rng);
      for (r = 0; r + 1 < p.size() && u >= p[r]; ++r) u -= p[r];
    }
    parts[r].push_back(usable[i]);
  }
  for (auto& part : parts) std::sort(part.begin(), part.end());
  return parts;
}

void check_batch_fits(const std::vector<std::vector<std::int64_t>>& parts, std::int64_t batch,
                      const PartitionSpec& spec) {
  for (std::size_t r = 0; r < parts.size(); ++r) {
    if (static_cast<std::int64_t>(parts[r].size()) >= batch) continue;
    std::size_t total = 0;
    for (const auto& p : parts) total += p.size();
    fail("train.batch = {} is larger than rank {}'s partition of {} training samples ({} samples over {} ranks, "
         "data.partition = \"{}\"); lower train.batch, raise data.train_limit or use fewer ranks",
         batch, r, parts[r].size(), total, parts.size(), spec.method);
  }
}

std::vector<std::int64_t> label_histogram(std::span<const std::int64_t> indices,
                                          std::span<const std::int32_t> labels, int num_classes) {
  std::vector<std::int64_t> h(num_classes, 0);
  for (std::int64_t i : indices) ++h[labels[i]];
  return h;
}

}  // namespace lowsync::data
