// The transformer layers (LayerNorm, GELU, causal attention, embedding, row-wise Linear without
// bias, the pre-LN block) against naive fp64 references: forward values, and backward (dx and
// every parameter gradient) against central finite differences of the reference forward.
#include "support/reference_transformer.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/layers/transformer.hpp"

#include <gtest/gtest.h>

#include <functional>

namespace lowsync::layers {
namespace {

using testing::Vec;

std::vector<float> random_vec(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = (2.0f * uniform01(seed, i) - 1.0f) * scale;
  return v;
}
Vec to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// d/dv of sum(r * f(v)) by central differences in fp64.
Vec finite_diff(const Vec& v, const std::vector<float>& r, const std::function<Vec(const Vec&)>& f) {
  const double eps = 1e-6;
  Vec g(v.size()), p = v;
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

// |got - want| <= tol * max(|want|, 1e-3) elementwise-scaled by the largest reference value.
void expect_close(const std::vector<float>& got, const Vec& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1e-3;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol * scale) << what << " at " << i;
}

TEST(LayerNorm, ForwardAndGradientsMatchReference) {
  const int n = 2, rows = 3, width = 5, total = n * rows;
  auto layer = make_layernorm(rows, width);
  EXPECT_EQ(layer->param_specs()[0].init, ParamInit::ones);
  auto x = random_vec(total * width, 1, 2.0f), w = random_vec(width, 2), b = random_vec(width, 3);
  std::vector<float> y(x.size()), dx(x.size()), dw(width), db(width);
  Executor exec;
  auto plan = layer->make_plan(n, exec, {w.data(), b.data()}, {dw.data(), db.data()});
  plan->forward(x.data(), y.data(), true);
  const Vec xd = to_double(x), wd = to_double(w), bd = to_double(b);
  expect_close(y, testing::ref_layernorm(xd, wd, bd, total, width), 1e-5, "forward");
  const auto r = random_vec(y.size(), 4);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const Vec& v) { return testing::ref_layernorm(v, wd, bd, total, width); }), 1e-4, "dx");
  expect_close(dw, finite_diff(wd, r, [&](const Vec& v) { return testing::ref_layernorm(xd, v, bd, total, width); }), 1e-4, "dweight");
  expect_close(db, finite_diff(bd, r, [&](const Vec& v) { return testing::ref_layernorm(xd, wd, v, total, width); }), 1e-4, "dbias");
}

TEST(Gelu, ForwardAndGradientMatchReference) {
  const int n = 2;
  auto layer = make_gelu({3, 7});
  auto x = random_vec(n * 21, 5, 4.0f);
  std::vector<float> y(x.size()), dx(x.size());
  Executor exec;
  auto plan = layer->make_plan(n, exec, {}, {});
  plan->forward(x.data(), y.data(), true);
  const Vec xd = to_double(x);
  expect_close(y, testing::ref_gelu(xd), 1e-5, "forward");
  const auto r = random_vec(y.size(), 6);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const Vec& v) { return testing::ref_gelu(v); }), 1e-4, "dx");
}

TEST(CausalAttention, ForwardAndGradientMatchReference) {
  const int n = 2, t = 5, c = 6, h = 2;
  auto layer = make_causal_attention(t, c, h);
  EXPECT_EQ(layer->input_shape(), (Shape{t, 3 * c}));
  auto x = random_vec(n * t * 3 * c, 7, 2.0f);
  std::vector<float> y(n * t * c), dx(x.size());
  Executor exec;
  auto plan = layer->make_plan(n, exec, {}, {});
  plan->forward(x.data(), y.data(), true);
  const Vec xd = to_double(x);
  expect_close(y, testing::ref_attention(xd, n, t, c, h), 1e-5, "forward");
  const auto r = random_vec(y.size(), 8);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const Vec& v) { return testing::ref_attention(v, n, t, c, h); }), 1e-4, "dqkv");
}

TEST(CausalAttention, LaterPositionsLeaveEarlierOutputsBitwiseEqual) {
  const int n = 2, t = 8, c = 8, h = 2;
  auto layer = make_causal_attention(t, c, h);
  Executor exec;
  auto plan = layer->make_plan(n, exec, {}, {});
  auto x = random_vec(n * t * 3 * c, 9, 3.0f);
  std::vector<float> y0(n * t * c), y1(y0.size());
  plan->forward(x.data(), y0.data(), false);
  const int cut = 3;  // change q, k, v at positions > cut of both samples
  for (int s = 0; s < n; ++s)
    for (int p = cut + 1; p < t; ++p)
      for (int j = 0; j < 3 * c; ++j) x[(s * t + p) * 3 * c + j] += 1.5f;
  plan->forward(x.data(), y1.data(), false);
  for (int s = 0; s < n; ++s)
    for (int p = 0; p <= cut; ++p)
      for (int j = 0; j < c; ++j) ASSERT_EQ(y0[(s * t + p) * c + j], y1[(s * t + p) * c + j]) << s << " " << p << " " << j;
  EXPECT_NE(y0[(t - 1) * c], y1[(t - 1) * c]);
}

TEST(Embedding, ForwardAndGradientsMatchReference) {
  const int n = 3, t = 4, c = 5, vocab = 256;
  auto layer = make_embedding(t, c, vocab);
  std::vector<int> tokens(n * t);
  std::vector<float> x(tokens.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(tokens[i] = static_cast<int>(random_bits(10, i % 7) % 256));
  auto tok = random_vec(vocab * c, 11), pos = random_vec(t * c, 12);
  std::vector<float> dtok(tok.size(), 7.0f), dpos(pos.size(), 7.0f), y(n * t * c);  // 7: must be overwritten
  Executor exec;
  auto plan = layer->make_plan(n, exec, {tok.data(), pos.data()}, {dtok.data(), dpos.data()});
  plan->forward(x.data(), y.data(), true);
  const Vec td = to_double(tok), pd = to_double(pos);
  expect_close(y, testing::ref_embedding(tokens, td, pd, n, t, c), 1e-6, "forward");
  const auto r = random_vec(y.size(), 13);
  plan->backward(x.data(), y.data(), r.data(), nullptr);
  expect_close(dtok, finite_diff(td, r, [&](const Vec& v) { return testing::ref_embedding(tokens, v, pd, n, t, c); }), 1e-5, "dtoken");
  expect_close(dpos, finite_diff(pd, r, [&](const Vec& v) { return testing::ref_embedding(tokens, td, v, n, t, c); }), 1e-5, "dposition");
}

TEST(Embedding, RefusesValuesThatAreNotTokens) {
  auto layer = make_embedding(2, 3, 256);
  std::vector<float> tok(256 * 3), pos(6), g1(tok.size()), g2(pos.size()), y(6);
  Executor exec;
  auto plan = layer->make_plan(1, exec, {tok.data(), pos.data()}, {g1.data(), g2.data()});
  for (float bad : {256.0f, -1.0f, 2.5f}) {
    const std::vector<float> x{1.0f, bad};
    EXPECT_THROW(plan->forward(x.data(), y.data(), false), Error) << bad;
  }
}

TEST(LinearRows, NoBiasForwardAndGradientsMatchReference) {
  const int n = 2, rows = 3, in = 4, out = 6, total = n * rows;
  auto layer = make_linear_rows(rows, in, out, false);
  ASSERT_EQ(layer->param_specs().size(), 1u);
  EXPECT_EQ(layer->output_shape(), (Shape{rows, out}));
  auto x = random_vec(total * in, 14), w = random_vec(out * in, 15);
  std::vector<float> y(total * out), dx(x.size()), dw(w.size());
  Executor exec;
  auto plan = layer->make_plan(n, exec, {w.data()}, {dw.data()});
  plan->forward(x.data(), y.data(), true);
  const Vec xd = to_double(x), wd = to_double(w), zero(out, 0.0);
  expect_close(y, testing::ref_linear(xd, wd, zero, total, in, out, false), 1e-5, "forward");
  const auto r = random_vec(y.size(), 16);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const Vec& v) { return testing::ref_linear(v, wd, zero, total, in, out, false); }), 1e-4, "dx");
  expect_close(dw, finite_diff(wd, r, [&](const Vec& v) { return testing::ref_linear(xd, v, zero, total, in, out, false); }), 1e-4, "dW");
}

TEST(TransformerBlock, ForwardAndGradientsMatchReference) {
  const int n = 2, t = 4, c = 8, h = 2;
  auto layer = make_transformer_block(t, c, h);
  const auto specs = layer->param_specs();
  ASSERT_EQ(specs.size(), 12u);
  EXPECT_EQ(specs[2].name, "qkv.weight");
  EXPECT_EQ(specs[2].shape, (Shape{3 * c, c}));
  std::vector<std::size_t> offsets;
  std::size_t total = 0;
  for (const auto& s : specs) offsets.push_back(total), total += static_cast<std::size_t>(shape_size(s.shape));
  auto params = random_vec(total, 17, 0.4f);
  for (std::size_t k : {0u, 6u})  // LayerNorm weights near 1, like the initialisation
    for (int i = 0; i < c; ++i) params[offsets[k] + i] += 1.0f;
  std::vector<float> grads(total, 7.0f);
  std::vector<float*> ps, gs;
  for (std::size_t k = 0; k < specs.size(); ++k) ps.push_back(params.data() + offsets[k]), gs.push_back(grads.data() + offsets[k]);
  auto x = random_vec(n * t * c, 18);
  std::vector<float> y(x.size()), dx(x.size());
  Executor exec;
  auto plan = layer->make_plan(n, exec, ps, gs);
  plan->forward(x.data(), y.data(), true);
  const Vec xd = to_double(x), pd = to_double(params);
  auto ref = [&](const Vec& xv, const Vec& pv) {
    std::size_t offset = 0;
    return testing::ref_block(xv, pv, offset, n, t, c, h);
  };
  expect_close(y, ref(xd, pd), 1e-5, "forward");
  const auto r = random_vec(y.size(), 19);
  plan->backward(x.data(), y.data(), r.data(), dx.data());
  expect_close(dx, finite_diff(xd, r, [&](const Vec& v) { return ref(v, pd); }), 2e-4, "dx");
  expect_close(grads, finite_diff(pd, r, [&](const Vec& v) { return ref(xd, v); }), 2e-4, "dparams");
}

TEST(TransformerBlock, RefusesWidthNotDivisibleByHeads) {
  EXPECT_THROW(make_transformer_block(4, 10, 3), Error);
  EXPECT_THROW(make_causal_attention(4, 10, 4), Error);
}

}  // namespace
}  // namespace lowsync::layers
