// Tests for foresight pruning (ALGORITHMS.md §2): mask bitmap layout and round trips, compressed
// parameters, density schedule and rounding, top-k against a sort / brute-force reference, and
// the NTK trace and saliency against exact values for a linear model.
#include "lowsync/optim/prune.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/memory.hpp"
#include "lowsync/core/rng.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace lowsync::optim {
namespace {

std::vector<bool> random_bits_ref(std::size_t d, double density, std::uint64_t seed) {
  std::vector<bool> bits(d);
  for (std::size_t j = 0; j < d; ++j) bits[j] = uniform01(seed, j) < density;
  return bits;
}

Mask mask_from_ref(const std::vector<bool>& bits) {
  Mask mask(bits.size(), false);
  for (std::size_t j = 0; j < bits.size(); ++j) mask.set(j, bits[j]);
  return mask;
}

std::size_t count_ref(const std::vector<bool>& bits, std::size_t offset, std::size_t count) {
  return static_cast<std::size_t>(
      std::count(bits.begin() + static_cast<std::ptrdiff_t>(offset),
                 bits.begin() + static_cast<std::ptrdiff_t>(offset + count), true));
}

TEST(Mask, BitLayoutAndPackRoundTrip) {
  for (const std::size_t d : {std::size_t{0}, std::size_t{1}, std::size_t{8}, std::size_t{64},
                              std::size_t{77}, std::size_t{1037}}) {
    const auto ref = random_bits_ref(d, 0.4, 11 + d);
    const Mask mask = mask_from_ref(ref);
    ASSERT_EQ(mask.size(), d);
    EXPECT_EQ(mask.nnz(), count_ref(ref, 0, d));
    ASSERT_EQ(mask.bytes().size(), (d + 7) / 8);
    // Wire layout: bit j in byte j/8 at bit j%8, LSB first; padding bits zero.
    for (std::size_t j = 0; j < d; ++j)
      ASSERT_EQ(((mask.bytes()[j / 8] >> (j % 8)) & 1) != 0, ref[j]) << "d=" << d << " j=" << j;
    if (d % 8 != 0) {
      EXPECT_EQ(mask.bytes().back() >> (d % 8), 0);
    }

    std::vector<std::uint8_t> wire(mask.num_bytes());
    mask.pack(wire);
    const Mask back = Mask::from_bytes(d, wire);
    EXPECT_TRUE(back == mask);
    EXPECT_EQ(back.nnz(), mask.nnz());
    for (std::size_t j = 0; j < d; ++j) ASSERT_EQ(back.test(j), ref[j]);
  }
}

TEST(Mask, FromBytesRejectsBadInput) {
  std::vector<std::uint8_t> wire(13, 0xff);
  EXPECT_THROW(Mask::from_bytes(100, wire), Error);  // 100 bits use only 4 bits of byte 12
  wire.back() = 0x0f;
  EXPECT_EQ(Mask::from_bytes(100, wire).nnz(), 100u);
  EXPECT_THROW(Mask::from_bytes(96, wire), Error);  // 96 bits need 12 bytes
  wire.pop_back();
  EXPECT_THROW(Mask::from_bytes(100, wire), Error);
}

TEST(Mask, RangeDensityMatchesNaiveCount) {
  const std::size_t d = 2000;
  const auto ref = random_bits_ref(d, 0.3, 5);
  const Mask mask = mask_from_ref(ref);
  const std::size_t ranges[][2] = {{0, 0},    {0, 1},    {0, 64},     {3, 61},   {63, 2},
                                   {60, 200}, {128, 64}, {999, 1001}, {0, 2000}, {1999, 1}};
  for (const auto& r : ranges) {
    EXPECT_EQ(mask.range_nnz(r[0], r[1]), count_ref(ref, r[0], r[1])) << r[0] << "+" << r[1];
    if (r[1] > 0) {
      EXPECT_DOUBLE_EQ(mask.range_density(r[0], r[1]),
                       static_cast<double>(count_ref(ref, r[0], r[1])) / r[1]);
    }
  }
  EXPECT_THROW(mask.range_nnz(1990, 11), Error);
}

TEST(Mask, KeptIndicesSetAndCopy) {
  const std::size_t d = 700;
  const auto ref = random_bits_ref(d, 0.2, 9);
  Mask mask = mask_from_ref(ref);
  std::vector<std::uint32_t> naive;
  for (std::size_t j = 0; j < d; ++j)
    if (ref[j]) naive.push_back(static_cast<std::uint32_t>(j));
  EXPECT_EQ(mask.kept_indices(), naive);
  EXPECT_TRUE(Mask::from_indices(d, naive) == mask);

  std::vector<float> floats(d);
  mask.to_floats(floats);
  for (std::size_t j = 0; j < d; ++j) ASSERT_EQ(floats[j], ref[j] ? 1.0f : 0.0f);

  const Mask copy = mask;  // deep copy: later edits of `mask` must not show in it
  mask.set(naive[0], false);
  mask.set(naive[0], false);  // idempotent
  EXPECT_EQ(mask.nnz(), naive.size() - 1);
  EXPECT_EQ(copy.nnz(), naive.size());
  EXPECT_TRUE(copy.test(naive[0]));
  EXPECT_THROW(mask.set(d, true), Error);
  EXPECT_EQ(Mask(130, true).nnz(), 130u);
  EXPECT_EQ(Mask(130, true).range_nnz(64, 66), 66u);
}

TEST(SparseParams, GatherScatterRoundTripAndSize) {
  for (const double density : {0.0, 0.05, 0.3, 1.0}) {
    const std::size_t d = 3001;  // 6 blocks of 512 bits, the last one partial
    auto mask = std::make_shared<Mask>(mask_from_ref(random_bits_ref(d, density, 21)));
    const std::vector<std::uint32_t> kept = mask->kept_indices();

    const std::int64_t before = memory::current_bytes();
    SparseParams sparse(mask);
    const std::size_t num_blocks = (d + 511) / 512;
    ASSERT_EQ(sparse.size(), mask->nnz());
    ASSERT_EQ(sparse.values().size(), mask->nnz());
    EXPECT_EQ(sparse.bytes(), 4 * mask->nnz() + 4 * (num_blocks + 1));
    // Tracked memory grows by exactly the compressed size, not by 4*d.
    EXPECT_EQ(memory::current_bytes() - before, static_cast<std::int64_t>(sparse.bytes()));

    std::vector<float> dense(d);
    for (std::size_t j = 0; j < d; ++j) dense[j] = normal01(3, j);
    sparse.gather(dense);
    for (std::size_t k = 0; k < kept.size(); ++k) ASSERT_EQ(sparse.values()[k], dense[kept[k]]);

    std::vector<float> out(d, 7.0f);
    sparse.scatter(out);
    for (std::size_t j = 0; j < d; ++j) ASSERT_EQ(out[j], mask->test(j) ? dense[j] : 0.0f);

    SparseParams again(mask);
    again.gather(out);
    for (std::size_t k = 0; k < kept.size(); ++k) ASSERT_EQ(again.values()[k], sparse.values()[k]);
    EXPECT_THROW(sparse.gather(std::span<const float>(dense).first(d - 1)), Error);
  }
}

TEST(Prune, DensityScheduleValues) {
  const int rounds = 10;
  EXPECT_EQ(density_schedule(0.9, 0, rounds), 1.0);
  EXPECT_EQ(density_schedule(0.9, rounds, rounds), 1.0 - 0.9);
  EXPECT_NEAR(density_schedule(0.9, 5, rounds), std::sqrt(0.1), 1e-15);
  // Geometric: every round divides the density by the same factor (1 - s)^(1/P).
  const double factor = std::pow(0.1, 1.0 / rounds);
  for (int t = 1; t <= rounds; ++t)
    EXPECT_NEAR(density_schedule(0.9, t, rounds) / density_schedule(0.9, t - 1, rounds), factor,
                1e-14);
  EXPECT_NEAR(density_schedule(0.5, 1, 2), std::sqrt(0.5), 1e-15);
  EXPECT_EQ(density_schedule(0.0, 3, 4), 1.0);
  EXPECT_THROW(density_schedule(1.0, 1, 10), Error);
  EXPECT_THROW(density_schedule(0.9, 11, 10), Error);
  EXPECT_THROW(density_schedule(0.9, 1, 0), Error);
}

TEST(Prune, KeptCountRounding) {
  struct Case {
    double density;
    std::size_t d, k;
  };
  const Case cases[] = {{0.5, 3, 2},   {0.25, 10, 3},  {0.1, 10, 1},      {0.0, 5, 0}, {1.0, 7, 7},
                        {0.333, 3, 1}, {0.449, 10, 4}, {0.95, 1000, 950}, {0.1, 0, 0}};
  for (const Case& c : cases)
    EXPECT_EQ(kept_count(c.density, c.d), c.k) << c.density << " * " << c.d;
  EXPECT_THROW(kept_count(1.5, 10), Error);
  EXPECT_THROW(kept_count(std::nan(""), 10), Error);
}

// Reference: stable sort by score descending keeps lower indices first among ties.
std::vector<bool> top_k_reference(const std::vector<float>& scores, std::size_t k) {
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return scores[a] > scores[b]; });
  std::vector<bool> kept(scores.size(), false);
  for (std::size_t i = 0; i < k; ++i) kept[order[i]] = true;
  return kept;
}

TEST(Prune, TopKMatchesStableSortWithTies) {
  const std::size_t d = 1000;
  std::vector<float> scores(d);
  // Ten distinct values only, so most of the cut falls on ties.
  for (std::size_t j = 0; j < d; ++j) scores[j] = std::floor(10.0f * uniform01(77, j));
  for (const double density : {0.0, 0.001, 0.01, 0.1, 0.37, 0.5, 0.9, 1.0}) {
    const Mask mask = select_top_k(scores, density);
    const std::size_t k = kept_count(density, d);
    ASSERT_EQ(mask.nnz(), k) << density;
    const auto ref = top_k_reference(scores, k);
    for (std::size_t j = 0; j < d; ++j) ASSERT_EQ(mask.test(j), ref[j]) << density << " j=" << j;
    EXPECT_TRUE(select_top_k(scores, density) == mask);  // deterministic
  }
}

TEST(Prune, AllTiesKeepLowestIndices) {
  const std::vector<float> scores(100, 0.5f);
  const Mask mask = select_top_k(scores, 0.23);
  EXPECT_EQ(mask.nnz(), 23u);
  EXPECT_EQ(mask.range_nnz(0, 23), 23u);
}

TEST(Prune, NanScoreFails) {
  std::vector<float> scores(10, 1.0f);
  scores[4] = std::nanf("");
  EXPECT_THROW(select_top_k(scores, 0.5), Error);
}

// Brute force over all subsets of 12 weights in 3 output units: the best subset of size
// max(k, 3) that keeps at least one weight per unit. Scores are distinct powers of two, so every
// subset has a distinct sum and the optimum is unique.
TEST(Prune, OnePerUnitMatchesBruteForce) {
  const std::size_t d = 12;
  std::vector<OutputUnit> units;
  append_row_units(units, 0, 2, 4);                             // rows [0,4), [4,8)
  units.push_back({IndexRange{8, 2, 2}, IndexRange{9, 2, 2}});  // strided: 8, 10, 9, 11
  const auto shuffled = [](std::vector<int> v, std::uint64_t seed) {
    std::sort(v.begin(), v.end(),
              [&](int a, int b) { return random_bits(seed, a) < random_bits(seed, b); });
    return v;
  };
  for (std::uint64_t seed = 0; seed < 5; ++seed) {
    // Unit 2 gets the four smallest ranks, so top-k alone would cut it off for k <= 8.
    const auto high = shuffled({4, 5, 6, 7, 8, 9, 10, 11}, seed);
    const auto low = shuffled({0, 1, 2, 3}, seed + 100);
    std::vector<float> scores(d);
    for (std::size_t j = 0; j < d; ++j) scores[j] = std::ldexp(1.0f, j < 8 ? high[j] : low[j - 8]);

    for (std::size_t k = 0; k <= d; ++k) {
      const std::size_t target = std::max<std::size_t>(k, 3);
      double best_sum = -1.0;
      unsigned best_set = 0;
      for (unsigned set = 0; set < (1u << d); ++set) {
        if (static_cast<std::size_t>(std::popcount(set)) != target) continue;
        if ((set & 0x00f) == 0 || (set & 0x0f0) == 0 || (set & 0xf00) == 0) continue;
        double sum = 0.0;
        for (std::size_t j = 0; j < d; ++j)
          if (set >> j & 1) sum += scores[j];
        if (sum > best_sum) {
          best_sum = sum;
          best_set = set;
        }
      }
      const Mask mask = select_top_k(scores, static_cast<double>(k) / d, units);
      ASSERT_EQ(mask.nnz(), target) << "k=" << k;
      for (std::size_t j = 0; j < d; ++j)
        ASSERT_EQ(mask.test(j), (best_set >> j & 1) != 0) << "seed=" << seed << " k=" << k;
    }
  }
}

TEST(Prune, ForcedUnitsWinWhenTheyExceedTarget) {
  const std::size_t rows = 100, cols = 10, d = rows * cols;
  std::vector<float> scores(d);
  for (std::size_t j = 0; j < d; ++j) scores[j] = static_cast<float>(j);  // later rows dominate
  std::vector<OutputUnit> units;
  append_row_units(units, 0, rows, cols);

  const Mask few = select_top_k(scores, 0.05, units);  // k = 50 < 100 units
  EXPECT_EQ(few.nnz(), rows);
  for (std::size_t r = 0; r < rows; ++r) {
    EXPECT_EQ(few.range_nnz(r * cols, cols), 1u);
    EXPECT_TRUE(few.test(r * cols + cols - 1));  // each row keeps its best weight
  }
  const Mask more = select_top_k(scores, 0.15, units);  // 100 forced + the 50 best others
  EXPECT_EQ(more.nnz(), 150u);
  for (std::size_t r = 0; r < rows; ++r) EXPECT_GE(more.range_nnz(r * cols, cols), 1u);
  for (std::size_t j = d - 56; j < d; ++j) EXPECT_TRUE(more.test(j)) << j;

  // A bias entry in the unit counts as keeping the unit alive.
  std::vector<OutputUnit> with_bias;
  const std::size_t bias = d;
  std::vector<float> scores_b(scores);
  scores_b.resize(d + rows, 1e6f);  // biases score highest
  append_row_units(with_bias, 0, rows, cols, &bias);
  const Mask biased = select_top_k(scores_b, 100.0 / (d + rows), with_bias);
  EXPECT_EQ(biased.nnz(), 100u);
  EXPECT_EQ(biased.range_nnz(d, rows), rows);
}

TEST(Prune, WithinKeepsPrunedWeightsPruned) {
  const std::size_t d = 500;
  const Mask previous = mask_from_ref(random_bits_ref(d, 0.4, 31));
  std::vector<float> scores(d);
  for (std::size_t j = 0; j < d; ++j) scores[j] = previous.test(j) ? uniform01(5, j) : 10.0f;
  const Mask next = select_top_k(scores, 0.2, {}, &previous);
  EXPECT_EQ(next.nnz(), kept_count(0.2, d));
  for (std::size_t j = 0; j < d; ++j)
    if (next.test(j)) {
      ASSERT_TRUE(previous.test(j)) << j;
    }
  // The requested count is clamped to the candidates.
  EXPECT_EQ(select_top_k(scores, 0.9, {}, &previous).nnz(), previous.nnz());
}

TEST(Prune, MagnitudeAndRandomBaselines) {
  const std::size_t d = 4000;
  std::vector<float> w(d), scores(d);
  for (std::size_t j = 0; j < d; ++j) w[j] = normal01(8, j);
  magnitude_scores(w, scores);
  const Mask magnitude = select_top_k(scores, 0.1);
  ASSERT_EQ(magnitude.nnz(), 400u);
  float smallest_kept = 1e30f, largest_pruned = 0.0f;
  for (std::size_t j = 0; j < d; ++j) {
    if (magnitude.test(j))
      smallest_kept = std::min(smallest_kept, std::fabs(w[j]));
    else
      largest_pruned = std::max(largest_pruned, std::fabs(w[j]));
  }
  EXPECT_GE(smallest_kept, largest_pruned);

  random_scores(42, 3, scores);
  for (std::size_t j = 0; j < d; j += 97)
    ASSERT_EQ(scores[j], uniform01(stream_key({42, 3, kRandomPruneTag}), j));
  const Mask a = select_top_k(scores, 0.1);
  std::vector<float> again(d), other(d);
  random_scores(42, 3, again);
  random_scores(43, 3, other);
  EXPECT_TRUE(select_top_k(again, 0.1) == a);
  const Mask b = select_top_k(other, 0.1);
  EXPECT_EQ(b.nnz(), 400u);
  EXPECT_FALSE(b == a);
}

// ---- NTK on a linear model f(x) = (W*m) x, W [out, in] ----
// J J^T per input is diag_o(sum_i m_oi x_i^2), so tr Theta = (1/B) sum_b sum_o sum_i m_oi x_bi^2
// and R does not depend on w0: f_a - f_b = -(delta*m) x.
struct LinearNtk {
  std::size_t out = 3, in = 5, batch = 4;
  std::vector<float> x;  // [batch, in]
  LinearNtk() : x(batch * in) {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal01(1234, i);
  }
  NtkProblem problem() const {
    return NtkProblem{[this](std::span<const float> w, std::span<float> y) {
                        for (std::size_t b = 0; b < batch; ++b)
                          for (std::size_t o = 0; o < out; ++o) {
                            double s = 0.0;
                            for (std::size_t i = 0; i < in; ++i)
                              s += static_cast<double>(w[o * in + i]) * x[b * in + i];
                            y[b * out + o] = static_cast<float>(s);
                          }
                      },
                      batch, out};
  }
};

TEST(Ntk, FiniteDifferenceTraceMatchesExactTrace) {
  LinearNtk lin;
  const std::size_t d = lin.out * lin.in;
  std::vector<float> w0(d), m(d, 1.0f);
  for (std::size_t j = 0; j < d; ++j) w0[j] = normal01(55, j);
  m[2] = m[7] = m[13] = 0.0f;

  double trace = 0.0, variance = 0.0;
  for (std::size_t o = 0; o < lin.out; ++o) {
    // C_o[b, b'] = sum_i m_oi x_bi x_b'i; R/eps^2 = (1/B) sum_o |Y_o|^2 with Y_o ~ N(0, C_o), so
    // E = (1/B) sum_o tr C_o and Var = (2/B^2) sum_o tr(C_o^2) per draw.
    for (std::size_t b = 0; b < lin.batch; ++b)
      for (std::size_t c = 0; c < lin.batch; ++c) {
        double cov = 0.0;
        for (std::size_t i = 0; i < lin.in; ++i)
          cov += m[o * lin.in + i] * static_cast<double>(lin.x[b * lin.in + i]) *
                 lin.x[c * lin.in + i];
        if (b == c) trace += cov / lin.batch;
        variance += 2.0 * cov * cov / (lin.batch * lin.batch);
      }
  }
  const int draws = 4000;
  const double estimate = ntk_trace_estimate(lin.problem(), w0, m, 0.01f, 99, draws);
  const double bound = 5.0 * std::sqrt(variance / draws);
  EXPECT_NEAR(estimate, trace, bound) << "trace " << trace << " bound " << bound;
  EXPECT_LT(bound, 0.1 * trace);  // the check is informative
}

TEST(Ntk, SaliencyFromGradientCallableMatchesExactAndFiniteDifference) {
  LinearNtk lin;
  const std::size_t d = lin.out * lin.in;
  std::vector<float> w0(d), delta(d), m(d, 1.0f);
  for (std::size_t j = 0; j < d; ++j) w0[j] = normal01(56, j);
  draw_delta(stream_key({7, 0}), 0.01f, delta);
  m[4] = m[10] = 0.0f;

  // Exact dR/dm_oi = (2/B) sum_b (sum_i' delta_oi' m_oi' x_bi') delta_oi x_bi, in double.
  std::vector<double> exact(d);
  for (std::size_t o = 0; o < lin.out; ++o)
    for (std::size_t i = 0; i < lin.in; ++i) {
      double g = 0.0;
      for (std::size_t b = 0; b < lin.batch; ++b) {
        double z = 0.0;
        for (std::size_t k = 0; k < lin.in; ++k)
          z += static_cast<double>(delta[o * lin.in + k]) * m[o * lin.in + k] *
               lin.x[b * lin.in + k];
        g += 2.0 / lin.batch * z * delta[o * lin.in + i] * lin.x[b * lin.in + i];
      }
      exact[o * lin.in + i] = std::fabs(m[o * lin.in + i] * g);
    }

  // Hand backprop of R = (1/B) sum_b ||W_a x_b - W_b x_b||^2.
  const auto problem = lin.problem();
  const ResidualGradFn grad_fn = [&](std::span<const float> wa, std::span<const float> wb,
                                     std::span<float> ga, std::span<float> gb) {
    std::vector<float> ya(lin.batch * lin.out), yb(ya.size());
    problem.forward(wa, ya);
    problem.forward(wb, yb);
    double r = 0.0;
    std::fill(ga.begin(), ga.end(), 0.0f);
    for (std::size_t b = 0; b < lin.batch; ++b)
      for (std::size_t o = 0; o < lin.out; ++o) {
        const double diff = static_cast<double>(ya[b * lin.out + o]) - yb[b * lin.out + o];
        r += diff * diff / lin.batch;
        for (std::size_t i = 0; i < lin.in; ++i)
          ga[o * lin.in + i] += static_cast<float>(2.0 / lin.batch * diff * lin.x[b * lin.in + i]);
      }
    for (std::size_t j = 0; j < ga.size(); ++j) gb[j] = -ga[j];
    return r;
  };

  std::vector<float> from_grad(d), from_fd(d);
  const double r = ntk_saliency(grad_fn, w0, delta, m, from_grad);
  EXPECT_NEAR(r, ntk_residual(problem, w0, delta, m), 1e-12);
  ntk_saliency_fd(problem, w0, delta, m, 0.25f, from_fd);  // R is quadratic in m: FD is exact
  double scale = 0.0;
  for (const double e : exact) scale = std::max(scale, e);
  for (std::size_t j = 0; j < d; ++j) {
    if (m[j] == 0.0f) {
      EXPECT_EQ(from_grad[j], 0.0f);
      EXPECT_EQ(from_fd[j], 0.0f);
      continue;
    }
    // fp32 outputs around |w0 x| ~ 1 differenced at eps ~ 1e-2: ~1e-5 relative error in f_a - f_b.
    EXPECT_NEAR(from_grad[j], exact[j], 1e-3 * scale) << j;
    EXPECT_NEAR(from_fd[j], exact[j], 1e-3 * scale) << j;
  }
}

}  // namespace
}  // namespace lowsync::optim
