// Layout-aware plans (Layer::make_layout_plan): a small CNN chained the way the Model chains it,
// conv -> maxpool -> relu -> conv -> maxpool -> flatten -> linear, with activations in the blocked
// layouts the convolutions pick, against the naive fp64 reference: forward values, and every
// parameter gradient and the input gradient against central differences of the reference (fp64,
// so ReLU/max kinks are not crossed). Blocked and plain convolutions sum in different orders, so
// values are compared with the tolerances of test_layers.cpp, never bitwise. The bf16 chain
// (native 16-bit storage on bf16 primitives) is compared with a bf16 tolerance.
#include "support/reference_layers.hpp"

#include "lowsync/core/rng.hpp"
#include "lowsync/layers/layer.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

namespace lowsync::layers {
namespace {

using testing::ref_conv2d;
using testing::ref_linear;
using testing::ref_maxpool;
using dt = dnnl::memory::data_type;

std::vector<float> random_vec(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = (2.0f * uniform01(seed, i) - 1.0f) * scale;
  return v;
}

// x [2, 3, 10, 10] -> conv 3x3 (16) + ReLU -> pool 2 -> ReLU -> conv 3x3 (32) -> pool 2 -> [2, 32, 1, 1]
// -> flatten -> linear 32 -> 5. 16 and 32 channels: whole blocks of the 8/16-channel layouts.
constexpr int kN = 2, kC = 3, kH = 10, kC1 = 16, kC2 = 32, kOut = 5;

struct Params {
  std::vector<double> w1, b1, w2, b2, w3, b3;
};

std::vector<double> ref_chain(const std::vector<double>& x, const Params& p) {
  auto h = ref_conv2d(x, p.w1, p.b1, kN, kC, kH, kH, kC1, 3, true);  // [2, 16, 8, 8]
  h = ref_maxpool(h, kN, kC1, 8, 8, 2);                              // [2, 16, 4, 4]
  for (double& v : h) v = std::max(v, 0.0);
  h = ref_conv2d(h, p.w2, p.b2, kN, kC1, 4, 4, kC2, 3, false);  // [2, 32, 2, 2]
  h = ref_maxpool(h, kN, kC2, 2, 2, 2);                          // [2, 32, 1, 1]
  return ref_linear(h, p.w3, p.b3, kN, kC2, kOut, false);
}

std::vector<std::unique_ptr<Layer>> make_chain() {
  std::vector<std::unique_ptr<Layer>> ls;
  ls.push_back(make_conv2d({kC, kH, kH}, kC1, 3, true));
  ls.push_back(make_maxpool2d({kC1, 8, 8}, 2));
  ls.push_back(make_relu({kC1, 4, 4}));
  ls.push_back(make_conv2d({kC1, 4, 4}, kC2, 3, false));
  ls.push_back(make_maxpool2d({kC2, 2, 2}, 2));
  ls.push_back(make_flatten({kC2, 1, 1}));
  ls.push_back(make_linear(kC2, kOut, false));
  return ls;
}

// d/dv of sum(r * f(v)) by central differences in fp64.
std::vector<double> finite_diff(std::vector<double> v, const std::vector<float>& r,
                                const std::function<std::vector<double>(const std::vector<double>&)>& f) {
  const double eps = 1e-6;
  std::vector<double> g(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + eps;
    const auto yp = f(v);
    v[i] = keep - eps;
    const auto ym = f(v);
    v[i] = keep;
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
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol * scale) << what << " at " << i;
}

// Relative L2 distance per tensor, as tests/unit/model/test_native16.cpp: one bf16 ulp of an
// activation can flip a max-pool argmax between near-equal values and move a few gradient entries
// by O(their size); a wrong kernel or layout moves the whole tensor by O(1).
void expect_rel_l2(const std::vector<float>& got, const std::vector<double>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  EXPECT_LT(std::sqrt(diff), tol * std::sqrt(norm) + 1e-12) << what;
}

// Flat parameters as the Model lays them out: w1 b1 w2 b2 w3 b3.
struct Flat {
  std::vector<float> params, grads;
  std::vector<std::size_t> offsets;  // per tensor
};

Flat make_flat(const std::vector<std::unique_ptr<Layer>>& ls) {
  Flat f;
  std::size_t total = 0;
  std::uint64_t seed = 100;
  for (const auto& l : ls)
    for (const auto& spec : l->param_specs()) {
      f.offsets.push_back(total);
      const auto n = static_cast<std::size_t>(shape_size(spec.shape));
      const auto v = random_vec(n, seed++, 0.4f);
      f.params.insert(f.params.end(), v.begin(), v.end());
      total += n;
    }
  f.grads.assign(total, 0.0f);
  return f;
}

std::vector<double> tensor(const std::vector<float>& flat, const Flat& f, std::size_t t) {
  const std::size_t end = t + 1 < f.offsets.size() ? f.offsets[t + 1] : flat.size();
  return {flat.begin() + static_cast<std::ptrdiff_t>(f.offsets[t]), flat.begin() + static_cast<std::ptrdiff_t>(end)};
}

Params params_of(const std::vector<float>& flat, const Flat& f) {
  return {tensor(flat, f, 0), tensor(flat, f, 1), tensor(flat, f, 2),
          tensor(flat, f, 3), tensor(flat, f, 4), tensor(flat, f, 5)};
}

TEST(Layouts, BlockedChainMatchesReferenceAndFiniteDifferences) {
  auto ls = make_chain();
  Flat flat = make_flat(ls);
  Executor exec;
  // Plans and buffers as Model::build_plan makes them: each plan gets the previous one's layout.
  Layout in = plain_layout(kN, {kC, kH, kH}, dt::f32);
  std::vector<std::unique_ptr<LayerPlan>> plans;
  std::vector<Layout> outs;
  std::size_t tensor_index = 0;
  for (const auto& l : ls) {
    std::vector<float*> ps, gs;
    for (std::size_t k = 0; k < l->param_specs().size(); ++k, ++tensor_index) {
      ps.push_back(flat.params.data() + flat.offsets[tensor_index]);
      gs.push_back(flat.grads.data() + flat.offsets[tensor_index]);
    }
    auto planned = l->make_layout_plan(kN, exec, ps, gs, in);
    plans.push_back(std::move(planned.plan));
    outs.push_back(planned.out);
    in = planned.out;
  }
  // The convolutions' outputs are blocked where oneDNN has blocked kernels (AVX2 and later), and
  // pooling / ReLU keep that layout; the logits come out plain.
  if (dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx2) {
    EXPECT_FALSE(is_plain(outs[0])) << "conv1 output";
    EXPECT_FALSE(is_plain(outs[1])) << "pool1 keeps the block layout";
    EXPECT_FALSE(is_plain(outs[2])) << "relu keeps the block layout";
    EXPECT_FALSE(is_plain(outs[3])) << "conv2 output";
  }
  EXPECT_TRUE(is_plain(outs.back()));

  const auto x = random_vec(kN * kC * kH * kH, 7);
  std::vector<std::vector<float>> acts(ls.size() + 1), diffs(ls.size() + 1);
  acts[0] = x;
  diffs[0].resize(x.size());
  for (std::size_t i = 0; i < ls.size(); ++i) {
    acts[i + 1].resize(outs[i].get_size() / sizeof(float));
    diffs[i + 1].resize(acts[i + 1].size());
  }
  // Flatten aliases its input in the Model (a no-op plan): copy through it here.
  auto run = [&] {
    for (std::size_t i = 0; i < ls.size(); ++i)
      if (ls[i]->aliases_input())
        acts[i + 1] = acts[i];
      else
        plans[i]->forward(acts[i].data(), acts[i + 1].data(), true);
  };
  run();
  const std::vector<double> xd(x.begin(), x.end());
  const Params p = params_of(flat.params, flat);
  expect_close(acts.back(), ref_chain(xd, p), 1e-5, "forward");

  const auto r = random_vec(kN * kOut, 8);
  diffs.back() = r;
  for (std::size_t i = ls.size(); i-- > 0;)
    if (ls[i]->aliases_input())
      diffs[i] = diffs[i + 1];
    else
      plans[i]->backward(acts[i].data(), acts[i + 1].data(), diffs[i + 1].data(), diffs[i].data());
  expect_close(diffs[0], finite_diff(xd, r, [&](const auto& v) { return ref_chain(v, p); }), 1e-4, "dx");
  const char* names[] = {"dW1", "db1", "dW2", "db2", "dW3", "db3"};
  for (std::size_t t = 0; t < 6; ++t) {
    const auto fd = finite_diff(tensor(flat.params, flat, t), r, [&](const auto& v) {
      Params q = p;
      std::vector<double>* slots[] = {&q.w1, &q.b1, &q.w2, &q.b2, &q.w3, &q.b3};
      *slots[t] = v;
      return ref_chain(xd, q);
    });
    const auto got = tensor(flat.grads, flat, t);
    expect_close({got.begin(), got.end()}, fd, 1e-4, names[t]);
  }

  // The plans read the flat weights at every forward: a changed parameter changes the output.
  flat.params[flat.offsets[2]] += 0.5f;
  run();
  expect_close(acts.back(), ref_chain(xd, params_of(flat.params, flat)), 1e-5, "forward after an update");
}

// Native bf16 storage: the same chain on bf16 primitives in blocked layouts. Forward: the logits
// against the fp64 reference of the decoded values (bf16 stores after every layer: a tolerance of a
// few bf16 ulps). Then layer by layer, on the very inputs the blocked chain saw: each bf16 plan
// against the staged fp32 plan of the same layer (bf16_primitives = false: fp32 kernels, rounded
// to bf16 where the plan stores), wrapped to the same blocked layouts. Whole-chain gradients are
// not compared: one bf16 ulp can flip a max-pool argmax between near-equal values, and in a chain
// this small one flip moves a quarter of a conv gradient.
TEST(Layouts, Bf16BlockedChainMatchesStagedFp32PerLayer) {
  if (dnnl::get_effective_cpu_isa() < dnnl::cpu_isa::avx512_core) GTEST_SKIP() << "no bf16 primitives before avx512_core";
  auto ls = make_chain();
  Flat flat = make_flat(ls);
  for (float& v : flat.params) v = tensor::bf16_round(v);
  std::vector<std::uint16_t> p16(flat.params.size()), g16(flat.params.size()), g16_ref(flat.params.size());
  for (std::size_t i = 0; i < p16.size(); ++i) p16[i] = tensor::bf16_encode(flat.params[i]);
  Executor exec;
  std::size_t stage_floats = 0;
  for (const auto& l : ls)
    if (!l->aliases_input()) stage_floats = std::max(stage_floats, l->stage16_floats(kN, false));
  std::vector<float> stage(stage_floats);
  Layout in = plain_layout(kN, {kC, kH, kH}, dt::bf16);
  std::vector<std::unique_ptr<LayerPlan16>> plans, refs;
  std::vector<Layout> outs;
  std::size_t tensor_index = 0;
  for (const auto& l : ls) {
    Native16Tensors t, r;
    r.bf16_primitives = false;
    for (std::size_t k = 0; k < l->param_specs().size(); ++k, ++tensor_index) {
      t.params.push_back(p16.data() + flat.offsets[tensor_index]);
      t.grads.push_back(g16.data() + flat.offsets[tensor_index]);
      r.params.push_back(p16.data() + flat.offsets[tensor_index]);
      r.grads.push_back(g16_ref.data() + flat.offsets[tensor_index]);
    }
    if (l->aliases_input()) {  // as the Model: no plan, the layout passes through
      plans.push_back(nullptr);
      refs.push_back(nullptr);
      outs.push_back(in);
      continue;
    }
    auto planned = l->make_layout_plan16(kN, exec, t, stage, in);
    const Layout plain_in = plain_like(in), plain_out = plain_layout(kN, l->output_shape(), dt::bf16);
    refs.push_back(make_reordered_plan16(l->make_plan16(kN, exec, r, stage), exec, in, plain_in, plain_out, planned.out));
    plans.push_back(std::move(planned.plan));
    outs.push_back(planned.out);
    in = planned.out;
  }
  EXPECT_FALSE(is_plain(outs[0])) << "bf16 conv1 output";
  EXPECT_FALSE(is_plain(outs[1])) << "bf16 pool1 output";
  EXPECT_TRUE(is_plain(outs.back()));

  auto x = random_vec(kN * kC * kH * kH, 7);
  for (float& v : x) v = tensor::bf16_round(v);
  const std::size_t layers = ls.size();
  using Bits = std::vector<std::uint16_t>;
  std::vector<Bits> a(layers + 1), d(layers + 1);
  a[0].resize(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) a[0][i] = tensor::bf16_encode(x[i]);
  auto decoded = [](const Bits& h) {
    std::vector<float> v(h.size());
    for (std::size_t i = 0; i < h.size(); ++i) v[i] = tensor::bf16_decode(h[i]);
    return v;
  };
  for (std::size_t i = 0; i < layers; ++i) {
    if (ls[i]->aliases_input()) {
      a[i + 1] = a[i];
      continue;
    }
    a[i + 1].resize(outs[i].get_size() / 2);
    Bits ref(a[i + 1].size());
    plans[i]->forward(a[i].data(), a[i + 1].data(), true);
    refs[i]->forward(a[i].data(), ref.data(), true);
    const auto got = decoded(a[i + 1]), want = decoded(ref);
    expect_rel_l2(got, {want.begin(), want.end()}, 1e-2, ls[i]->name().c_str());
  }
  const std::vector<double> xd(x.begin(), x.end());
  expect_close(decoded(a.back()), ref_chain(xd, params_of(flat.params, flat)), 3e-2, "bf16 forward");

  auto r = random_vec(kN * kOut, 8);
  d[layers].resize(r.size());
  for (std::size_t i = 0; i < r.size(); ++i) d[layers][i] = tensor::bf16_encode(r[i]);
  for (std::size_t i = layers; i-- > 0;) {
    if (ls[i]->aliases_input()) {
      d[i] = d[i + 1];
      continue;
    }
    d[i].resize(a[i].size());
    Bits dx_ref(a[i].size());
    // The reference's forward first: a max pool's backward reads its own forward's argmax.
    Bits y_ref(a[i + 1].size());
    refs[i]->forward(a[i].data(), y_ref.data(), true);
    plans[i]->backward(a[i].data(), a[i + 1].data(), d[i + 1].data(), d[i].data());
    refs[i]->backward(a[i].data(), a[i + 1].data(), d[i + 1].data(), dx_ref.data());
    const auto got = decoded(d[i]), want = decoded(dx_ref);
    expect_rel_l2(got, {want.begin(), want.end()}, 1e-2, (ls[i]->name() + " dx").c_str());
  }
  const char* names[] = {"bf16 dW1", "bf16 db1", "bf16 dW2", "bf16 db2", "bf16 dW3", "bf16 db3"};
  for (std::size_t t = 0; t < 6; ++t) {
    const std::size_t end = t + 1 < flat.offsets.size() ? flat.offsets[t + 1] : g16.size();
    std::vector<float> got;
    std::vector<double> want;
    for (std::size_t i = flat.offsets[t]; i < end; ++i) {
      got.push_back(tensor::bf16_decode(g16[i]));
      want.push_back(tensor::bf16_decode(g16_ref[i]));
    }
    expect_rel_l2(got, want, 1e-2, names[t]);
  }
}

// The reorder wrapper alone: a Linear fed a blocked [N, 16, 2, 2] input reorders it to plain, and
// its dx comes back in the blocked layout, equal to the plain plan's up to the permutation.
TEST(Layouts, ReorderWrapperMatchesPlainPlan) {
  Executor exec;
  const int n = 3;
  auto fc = make_linear(16 * 2 * 2, 4, true);
  auto w = random_vec(4 * 64, 1, 0.3f), b = random_vec(4, 2, 0.3f);
  std::vector<float> dw(w.size()), db(b.size()), dw_plain(w.size()), db_plain(b.size());
  const Layout blocked({n, 16, 2, 2}, dt::f32, dnnl::memory::format_tag::aBcd8b);
  auto wrapped = fc->make_layout_plan(n, exec, {w.data(), b.data()}, {dw.data(), db.data()}, blocked);
  auto direct = fc->make_plan(n, exec, {w.data(), b.data()}, {dw_plain.data(), db_plain.data()});
  EXPECT_TRUE(is_plain(wrapped.out));

  const auto x = random_vec(n * 64, 3);
  // x in the blocked layout: [n][16/8][2][2][8].
  auto blocked_index = [](int s, int c, int h, int w) { return ((s * 2 + c / 8) * 4 + h * 2 + w) * 8 + c % 8; };
  std::vector<float> xb(x.size());
  for (int s = 0; s < n; ++s)
    for (int c = 0; c < 16; ++c)
      for (int h = 0; h < 2; ++h)
        for (int ww = 0; ww < 2; ++ww) xb[blocked_index(s, c, h, ww)] = x[((s * 16 + c) * 2 + h) * 2 + ww];
  std::vector<float> y(n * 4), y_plain(n * 4), dxb(x.size()), dx_plain(x.size());
  wrapped.plan->forward(xb.data(), y.data(), true);
  direct->forward(x.data(), y_plain.data(), true);
  EXPECT_EQ(y, y_plain);
  const auto dy = random_vec(n * 4, 4);
  wrapped.plan->backward(xb.data(), y.data(), dy.data(), dxb.data());
  direct->backward(x.data(), y_plain.data(), dy.data(), dx_plain.data());
  EXPECT_EQ(dw, dw_plain);
  EXPECT_EQ(db, db_plain);
  for (int s = 0; s < n; ++s)
    for (int c = 0; c < 16; ++c)
      for (int h = 0; h < 2; ++h)
        for (int ww = 0; ww < 2; ++ww)
          ASSERT_EQ(dxb[blocked_index(s, c, h, ww)], dx_plain[((s * 16 + c) * 2 + h) * 2 + ww]);
}

}  // namespace
}  // namespace lowsync::layers
