// Every layer against a naive fp64 reference: forward values, and backward (dx, dW, db) against
// central finite differences of the reference forward (fp64, so ReLU/max kinks are not crossed).
#include "support/reference_layers.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/layers/layer.hpp"

#include <gtest/gtest.h>

#include <functional>

namespace lowsync::layers {
namespace {

using testing::ref_conv2d;
using testing::ref_linear;
using testing::ref_maxpool;

std::vector<float> random_vec(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = (2.0f * uniform01(seed, i) - 1.0f) * scale;
  return v;
}
std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// d/dv of sum(r * f(v)) by central differences in fp64.
std::vector<double> finite_diff(const std::vector<double>& v, const std::vector<float>& r,
                                const std::function<std::vector<double>(const std::vector<double>&)>& f) {
  const double eps = 1e-6;
  std::vector<double> g(v.size());
  std::vector<double> p = v;
  for (std::size_t i = 0; i < v.size(); ++i) {
    p[i] = v[i] + eps;
    const auto yp = f(p);
    p[i] = v[i] - eps;
    const auto ym = f(p);
    p[i] = v[i];
    double s = 0.0;
    for (std::size_t j = 0; j < yp.size(); ++j) s += r[j] * (yp[j] - ym[j]);
    g[i] = s / (2 * eps);
  }
  return g;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1e-3;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * scale) << what << " at " << i;
}

struct Harness {
  Executor exec;
};

class LinearTest : public ::testing::TestWithParam<bool> {};

TEST_P(LinearTest, ForwardAndGradientsMatchReference) {
  const bool relu = GetParam();
  const int n = 3, in = 7, out = 5;
  auto layer = make_linear(in, out, relu);
  auto x = random_vec(n * in, 1), w = random_vec(out * in, 2, 0.5f), b = random_vec(out, 3, 0.5f);
  std::vector<float> dw(w.size()), db(b.size()), y(n * out), dx(x.size());
  Harness h;
  auto plan = layer->make_plan(n, h.exec, {w.data(), b.data()}, {dw.data(), db.data()});
  plan->forward(x.data(), y.data(), true);
  const auto xd = to_double(x), wd = to_double(w), bd = to_double(b);
  expect_close(y, ref_linear(xd, wd, bd, n, in, out, relu), 1e-5, "forward");

  const auto r = random_vec(n * out, 4);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const auto& v) { return ref_linear(v, wd, bd, n, in, out, relu); }), 1e-4, "dx");
  expect_close(dw, finite_diff(wd, r, [&](const auto& v) { return ref_linear(xd, v, bd, n, in, out, relu); }), 1e-4, "dW");
  expect_close(db, finite_diff(bd, r, [&](const auto& v) { return ref_linear(xd, wd, v, n, in, out, relu); }), 1e-4, "db");
}
INSTANTIATE_TEST_SUITE_P(Relu, LinearTest, ::testing::Values(false, true));

class ConvTest : public ::testing::TestWithParam<bool> {};

TEST_P(ConvTest, ForwardAndGradientsMatchReference) {
  const bool relu = GetParam();
  const int n = 2, c = 3, h = 7, wdim = 6, oc = 4, k = 3;
  auto layer = make_conv2d({c, h, wdim}, oc, k, relu);
  const auto oshape = layer->output_shape();
  ASSERT_EQ(oshape, (Shape{oc, h - k + 1, wdim - k + 1}));
  auto x = random_vec(n * c * h * wdim, 11), w = random_vec(oc * c * k * k, 12, 0.3f), b = random_vec(oc, 13, 0.3f);
  std::vector<float> dw(w.size()), db(b.size()), y(n * shape_size(oshape)), dx(x.size());
  Harness hs;
  auto plan = layer->make_plan(n, hs.exec, {w.data(), b.data()}, {dw.data(), db.data()});
  plan->forward(x.data(), y.data(), true);
  const auto xd = to_double(x), wd = to_double(w), bd = to_double(b);
  auto f = [&](const auto& xv, const auto& wv, const auto& bv) { return ref_conv2d(xv, wv, bv, n, c, h, wdim, oc, k, relu); };
  expect_close(y, f(xd, wd, bd), 1e-5, "forward");
  const auto r = random_vec(y.size(), 14);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const auto& v) { return f(v, wd, bd); }), 1e-4, "dx");
  expect_close(dw, finite_diff(wd, r, [&](const auto& v) { return f(xd, v, bd); }), 1e-4, "dW");
  expect_close(db, finite_diff(bd, r, [&](const auto& v) { return f(xd, wd, v); }), 1e-4, "db");
}
INSTANTIATE_TEST_SUITE_P(Relu, ConvTest, ::testing::Values(false, true));

TEST(MaxPool, ForwardAndGradientMatchReference) {
  const int n = 2, c = 3, h = 6, w = 4, win = 2;
  auto layer = make_maxpool2d({c, h, w}, win);
  auto x = random_vec(n * c * h * w, 21);
  std::vector<float> y(n * c * (h / win) * (w / win)), dx(x.size());
  Harness hs;
  auto plan = layer->make_plan(n, hs.exec, {}, {});
  plan->forward(x.data(), y.data(), true);
  const auto xd = to_double(x);
  expect_close(y, ref_maxpool(xd, n, c, h, w, win), 1e-6, "forward");
  const auto r = random_vec(y.size(), 22);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const auto& v) { return ref_maxpool(v, n, c, h, w, win); }), 1e-4, "dx");
}

TEST(Relu, ForwardAndGradientMatchReference) {
  const int n = 4, f = 9;
  auto layer = make_relu({f});
  auto x = random_vec(n * f, 31);
  std::vector<float> y(x.size()), dx(x.size());
  Harness hs;
  auto plan = layer->make_plan(n, hs.exec, {}, {});
  plan->forward(x.data(), y.data(), true);
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], std::max(x[i], 0.0f));
  const auto r = random_vec(y.size(), 32);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  const auto relu = [](const std::vector<double>& v) {
    std::vector<double> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::max(v[i], 0.0);
    return out;
  };
  expect_close(dx, finite_diff(to_double(x), r, relu), 1e-4, "dx");
}

TEST(Layers, BadShapesAreRejected) {
  EXPECT_THROW(make_linear(0, 3, false), Error);
  EXPECT_THROW(make_conv2d({1, 4, 4}, 2, 5, false), Error);
  EXPECT_THROW(make_conv2d({4, 4}, 2, 3, false), Error);
  EXPECT_THROW(make_maxpool2d({1, 5, 4}, 2), Error);
}

}  // namespace
}  // namespace lowsync::layers
