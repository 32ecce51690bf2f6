// PowerSGD (ALGORITHMS.md §7) on one process: which tensors compress (the MLP's and CNN's real
// shapes, conv kernels as (out, in*kh*kw)), Gram-Schmidt, the config rules naming the keys, and
// two steps (P, Q, error, G_hat; warm start and error feedback) against a scalar fp64 reference.
#include "lowsync/sync/powersgd.hpp"

#include "lowsync/comm/communicator.hpp"
#include "lowsync/config/config.hpp"
#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace lowsync::sync {
namespace {

config::Config make_cfg(const std::vector<std::string>& sets) {
  config::Config c;
  for (const auto& s : sets) c.set_text(s);
  return c;
}

std::string error_of(const config::Config& c) {
  try {
    validate_config(c);
    make_strategy(c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PowerSgdPlan, MlpCompressesItsThreeWeightMatricesAtRankFour) {
  model::Model mlp("mlp", 2, 1);
  const auto plan = plan_powersgd(mlp.param_infos(), 4, 2.0);
  ASSERT_EQ(plan.size(), 6U);  // fc1.weight, fc1.bias, fc2..., fc3...
  std::size_t p = 0, q = 0, dense = 0;
  for (std::size_t t = 0; t < plan.size(); ++t) {
    const auto& info = mlp.param_infos()[t];
    if (info.shape.size() == 1) {
      EXPECT_EQ(plan[t].rank, 0U) << info.name;
      dense += info.count;
      continue;
    }
    // fc3 is 10 x 256: 4 * 266 * 2 = 2128 < 2560, still compressed.
    EXPECT_EQ(plan[t].rank, 4U) << info.name;
    EXPECT_EQ(plan[t].rows, static_cast<std::size_t>(info.shape[0]));
    p += 4 * plan[t].rows;
    q += 4 * plan[t].cols;
  }
  EXPECT_EQ(dense, 512U + 256U + 10U);
  EXPECT_EQ(p, 4U * (512 + 256 + 10));
  EXPECT_EQ(q, 4U * (784 + 512 + 256));
  // At rate 3, fc3 no longer pays: 4 * 266 * 3 = 3192 >= 2560.
  const auto strict = plan_powersgd(mlp.param_infos(), 4, 3.0);
  EXPECT_EQ(strict[4].rank, 0U);
  EXPECT_EQ(strict[0].rank, 4U);
}

TEST(PowerSgdPlan, ConvKernelsAreOutByInTimesKernel) {
  model::Model cnn("cnn", 2, 1);
  const auto plan = plan_powersgd(cnn.param_infos(), 4, 2.0);
  bool saw_conv = false;
  for (std::size_t t = 0; t < plan.size(); ++t) {
    const auto& info = cnn.param_infos()[t];
    if (info.shape.size() != 4) continue;
    saw_conv = true;
    EXPECT_EQ(plan[t].rows, static_cast<std::size_t>(info.shape[0])) << info.name;
    EXPECT_EQ(plan[t].cols, static_cast<std::size_t>(info.shape[1] * info.shape[2] * info.shape[3])) << info.name;
    EXPECT_EQ(plan[t].rank, 4U) << info.name;  // conv1 32 x 25: 4 * 57 * 2 = 456 < 800
  }
  EXPECT_TRUE(saw_conv);
  // Rate 0 compresses every matrix, rank capped at min(rows, cols); 1-D tensors never.
  for (const auto& t : plan_powersgd(cnn.param_infos(), 1000, 0.0)) {
    if (t.cols == 1) {
      EXPECT_EQ(t.rank, 0U);
    } else {
      EXPECT_EQ(t.rank, std::min(t.rows, t.cols));
    }
  }
}

TEST(PowerSgdOrthonormalize, ColumnsBecomeOrthonormalAndZeroStaysZero) {
  const std::size_t n = 50, r = 4;
  std::vector<float> pt(r * n);
  for (std::size_t i = 0; i < pt.size(); ++i) pt[i] = normal01(stream_key({3}), i);
  // Column 2 = 3 * column 0 + tiny noise: nearly dependent; column 3 exactly zero.
  for (std::size_t i = 0; i < n; ++i) pt[2 * n + i] = 3.0f * pt[i] + 1e-3f * pt[2 * n + i];
  for (std::size_t i = 0; i < n; ++i) pt[3 * n + i] = 0.0f;
  orthonormalize_columns(pt, r, n);
  for (std::size_t a = 0; a < 3; ++a)
    for (std::size_t b = 0; b < 3; ++b) {
      double d = 0.0;
      for (std::size_t i = 0; i < n; ++i) d += static_cast<double>(pt[a * n + i]) * pt[b * n + i];
      EXPECT_NEAR(d, a == b ? 1.0 : 0.0, 1e-6) << a << "," << b;
    }
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(pt[3 * n + i], 0.0f);
}

TEST(PowerSgdConfig, RefusesWhatItCannotComposeWithOneLineNamingTheKeys) {
  const auto err = [](std::vector<std::string> sets) {
    sets.push_back("sync.strategy=powersgd");
    return error_of(make_cfg(sets));
  };
  EXPECT_EQ(err({}), "");
  EXPECT_EQ(err({"optim.name=adamw", "precision.compute=bf16"}), "");
  for (const char* opt : {"demo", "zo"}) {
    const std::string e = err({std::string("optim.name=") + opt});
    EXPECT_NE(e.find("sync.strategy = \"powersgd\""), std::string::npos) << e;
    EXPECT_NE(e.find(std::string("optim.name = \"") + opt), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  EXPECT_NE(err({"precision.wire=bf16"}).find("precision.wire = \"bf16\""), std::string::npos);
  EXPECT_NE(err({"sync.fda.threshold=5"}).find("sync.fda.threshold applies to sync.strategy = fda"), std::string::npos);
  // An FDA key at its default value is no conflict (saved configs set every key explicitly).
  EXPECT_EQ(err({"sync.fda.estimator=linear"}), "");
  EXPECT_THROW(make_cfg({"sync.powersgd.rank=0"}).validate(), Error);
  PowerSgdOptions bad;
  bad.min_compression_rate = -1.0;
  EXPECT_THROW(PowerSgdStrategy{bad}, Error);
}

TEST(PowerSgdConfig, AnswersForItself) {
  const auto s = make_strategy(make_cfg({"sync.strategy=powersgd"}));
  EXPECT_EQ(s->name(), "powersgd");
  EXPECT_TRUE(s->replicas_identical());
  EXPECT_FALSE(s->keeps_fp32_parameters());
  EXPECT_FALSE(s->supports_native16());
  EXPECT_FALSE(s->owns_update());
  EXPECT_FALSE(strategy_owns_update(make_cfg({"sync.strategy=powersgd"})));
}

// ---- one rank, two steps against a scalar fp64 reference --------------------------------

using Mat = std::vector<double>;  // row-major

struct RefState {
  Mat e, qt;  // e [n, m], Q^T [r, m]
};

// Classical Gram-Schmidt on the columns of P (stored as P^T [r, n]) in fp64.
void ref_orthonormalize(Mat& pt, std::size_t r, std::size_t n) {
  for (std::size_t j = 0; j < r; ++j) {
    for (std::size_t k = 0; k < j; ++k) {
      double d = 0.0;
      for (std::size_t i = 0; i < n; ++i) d += pt[k * n + i] * pt[j * n + i];
      for (std::size_t i = 0; i < n; ++i) pt[j * n + i] -= d * pt[k * n + i];
    }
    double s = 0.0;
    for (std::size_t i = 0; i < n; ++i) s += pt[j * n + i] * pt[j * n + i];
    for (std::size_t i = 0; i < n; ++i) pt[j * n + i] /= std::sqrt(s);
  }
}

// One PowerSGD step on one rank (mean over one rank = identity), written from the spec.
// Returns G_hat; updates e and Q^T; pt_out = the orthonormalized P^T.
Mat ref_step(const Mat& g, RefState& s, std::size_t n, std::size_t m, std::size_t r, Mat& pt_out) {
  Mat mm(n * m);
  for (std::size_t i = 0; i < n * m; ++i) mm[i] = g[i] + s.e[i];
  Mat pt(r * n, 0.0);
  for (std::size_t k = 0; k < r; ++k)
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < m; ++j) pt[k * n + i] += mm[i * m + j] * s.qt[k * m + j];
  ref_orthonormalize(pt, r, n);
  Mat qt(r * m, 0.0);
  for (std::size_t k = 0; k < r; ++k)
    for (std::size_t j = 0; j < m; ++j)
      for (std::size_t i = 0; i < n; ++i) qt[k * m + j] += mm[i * m + j] * pt[k * n + i];
  Mat ghat(n * m, 0.0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < m; ++j)
      for (std::size_t k = 0; k < r; ++k) ghat[i * m + j] += pt[k * n + i] * qt[k * m + j];
  for (std::size_t i = 0; i < n * m; ++i) s.e[i] = mm[i] - ghat[i];
  s.qt = qt;
  pt_out = pt;
  return ghat;
}

double max_rel(std::span<const float> got, const Mat& want) {
  double scale = 0.0, worst = 0.0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  return worst / scale;
}

TEST(PowerSgdStep, TwoStepsMatchTheScalarReference) {
  // One matrix [6, 9] compressed at rank 2, one bias [6] sent whole.
  const std::size_t n = 6, m = 9, r = 2;
  std::vector<model::ParamInfo> infos = {{"w", {6, 9}, 0, n * m}, {"b", {6}, n * m, n}};
  PowerSgdOptions o;
  o.rank = static_cast<std::int64_t>(r);
  o.start_iter = 0;
  o.min_compression_rate = 1.0;  // 2 * 15 = 30 < 54
  PowerSgdStrategy s(o);
  comm::Communicator comm(MPI_COMM_WORLD);
  if (comm.size() != 1) GTEST_SKIP() << "one rank";
  s.prepare(infos, n * m + n);
  ASSERT_EQ(s.plan()[0].rank, r);
  ASSERT_EQ(s.plan()[1].rank, 0U);

  RefState ref{Mat(n * m, 0.0), Mat(s.q().begin(), s.q().end())};
  // Q starts N(0, 1): mean near 0, variance near 1 over 18 values is all a test can ask.
  double sum2 = 0.0;
  for (float v : s.q()) sum2 += static_cast<double>(v) * v;
  EXPECT_GT(sum2 / 18.0, 0.2);
  EXPECT_LT(sum2 / 18.0, 3.0);

  for (int step = 1; step <= 2; ++step) {
    std::vector<float> grads(n * m + n);
    for (std::size_t i = 0; i < grads.size(); ++i) grads[i] = normal01(stream_key({7, static_cast<std::uint64_t>(step)}), i);
    const Mat g(grads.begin(), grads.begin() + static_cast<std::ptrdiff_t>(n * m));
    const std::vector<float> bias(grads.begin() + static_cast<std::ptrdiff_t>(n * m), grads.end());
    Mat pt;
    const Mat ghat = ref_step(g, ref, n, m, r, pt);
    s.step(comm, infos, grads, step);
    SCOPED_TRACE(step);
    EXPECT_LT(max_rel(std::span<const float>(grads).first(n * m), ghat), 1e-5);
    EXPECT_LT(max_rel(s.error().first(n * m), ref.e), 1e-5);
    EXPECT_LT(max_rel(s.q(), ref.qt), 1e-5);
    // P (up to each column's sign, which Gram-Schmidt fixes: same sign as the reference's).
    EXPECT_LT(max_rel(s.p_pack().subspan(s.plan()[0].p_offset, r * n), pt), 1e-5);
    // The bias is the plain mean (one rank: itself) and carries no error.
    for (std::size_t i = 0; i < n; ++i) {
      EXPECT_EQ(grads[n * m + i], bias[i]);
      EXPECT_EQ(s.error()[n * m + i], 0.0f);
    }
    // The rank-2 approximation withholds something that must sit in the error.
    double e2 = 0.0;
    for (double v : ref.e) e2 += v * v;
    EXPECT_GT(e2, 1e-2);
  }
}

}  // namespace
}  // namespace lowsync::sync
