// Native 16-bit storage plans (make_plan16: u16 parameters, gradients and activations) against a
// naive fp64 reference run on the decoded values and rounded to the 16-bit grid where the plan
// rounds (y, dx, parameter gradients).
// fp32 sums in oneDNN and fp64 sums here may fall either side of a rounding boundary, so a value
// may land on the neighbouring grid point, never further; nearly all must match exactly.
#include "support/reference_layers.hpp"

#include "lowsync/core/rng.hpp"
#include "lowsync/layers/layer.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

namespace lowsync::layers {
namespace {

using Bits = std::vector<std::uint16_t>;

float round16(double v, bool bf16) {
  const auto f = static_cast<float>(v);
  return bf16 ? tensor::bf16_round(f) : tensor::fp16_round(f);
}
std::uint16_t encode(float v, bool bf16) { return bf16 ? tensor::bf16_encode(v) : tensor::fp16_encode(v); }
float decode(std::uint16_t h, bool bf16) { return bf16 ? tensor::bf16_decode(h) : tensor::fp16_decode(h); }

// Distance from the grid value |v| to its upper neighbour: the larger of its two gaps.
double ulp16(float v, bool bf16) {
  const std::uint16_t h = encode(std::abs(v), bf16);
  return static_cast<double>(decode(static_cast<std::uint16_t>(h + 1), bf16)) - decode(h, bf16);
}

std::vector<float> random_on_grid(std::size_t n, std::uint64_t seed, float scale, bool bf16) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = round16((2.0f * uniform01(seed, i) - 1.0f) * scale, bf16);
  return v;
}
Bits encode_all(const std::vector<float>& v, bool bf16) {
  Bits h(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) h[i] = encode(v[i], bf16);
  return h;
}
std::vector<float> decode_all(const Bits& h, bool bf16) {
  std::vector<float> v(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) v[i] = decode(h[i], bf16);
  return v;
}

// Shapes as a valid stride-1 convolution; Linear is the 1x1 case (x [N, in, 1, 1], W [out, in, 1, 1]).
struct ConvShape {
  int c, h, w, oc, k;
  int oh() const { return h - k + 1; }
  int ow() const { return w - k + 1; }
};

struct Grads {
  std::vector<double> dx, dw, db;
};

// Backward of the fp64 reference convolution for the output gradient g (ReLU already applied).
Grads ref_conv_backward(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& g,
                        int n, const ConvShape& s) {
  Grads r{std::vector<double>(x.size()), std::vector<double>(w.size()), std::vector<double>(s.oc)};
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < s.oc; ++o)
      for (int y = 0; y < s.oh(); ++y)
        for (int z = 0; z < s.ow(); ++z) {
          const double gv = g[((i * s.oc + o) * s.oh() + y) * s.ow() + z];
          r.db[o] += gv;
          for (int c = 0; c < s.c; ++c)
            for (int p = 0; p < s.k; ++p)
              for (int q = 0; q < s.k; ++q) {
                const int xi = ((i * s.c + c) * s.h + y + p) * s.w + z + q, wi = ((o * s.c + c) * s.k + p) * s.k + q;
                r.dw[wi] += gv * x[xi];
                r.dx[xi] += gv * w[wi];
              }
        }
  return r;
}

// Compares a plan's values with the rounded reference; counts exact matches into `exact`.
void expect_within_ulp(const std::vector<float>& got, const std::vector<double>& ref, bool bf16, const char* what,
                       std::size_t& exact) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double scale = 0.0;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  // fp32 cancellation error on values near zero, relative to the tensor's magnitude.
  const double abs_tol = 0x1p-14 * scale;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const float want = round16(ref[i], bf16);
    ASSERT_LE(std::abs(static_cast<double>(got[i]) - want), ulp16(want, bf16) + abs_tol)
        << what << " at " << i << ": got " << got[i] << ", want " << want;
    exact += got[i] == want;
  }
}

struct Case {
  const char* name;
  std::function<std::unique_ptr<Layer>()> make;
  ConvShape shape;
  bool relu;
  int batch;
  bool whole_staging = false;  // the default staged plan instead of the layer's own (tiled Linear, bf16 primitives)
  bool fp32_tiled = false;     // bf16 Linear through the tiled fp32 plan instead of bf16 primitives
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"linear37x10", [] { return make_linear(37, 10, false); }, {37, 1, 1, 10, 1}, false, 8},
      {"linear50x130relu", [] { return make_linear(50, 130, true); }, {50, 1, 1, 130, 1}, true, 8},
      {"linear784x512relu", [] { return make_linear(784, 512, true); }, {784, 1, 1, 512, 1}, true, 8},
      {"linear50x130relu_staged", [] { return make_linear(50, 130, true); }, {50, 1, 1, 130, 1}, true, 8, true},
      {"linear784x512relu_tiled", [] { return make_linear(784, 512, true); }, {784, 1, 1, 512, 1}, true, 8, false, true},
      {"linear37x10_tiled", [] { return make_linear(37, 10, false); }, {37, 1, 1, 10, 1}, false, 8, false, true},
      // Batch 96 in 2 chunks of 48: dW and db summed over the chunks, dx written per chunk.
      {"linear50x130relu_tiled_chunked", [] { return make_linear(50, 130, true); }, {50, 1, 1, 130, 1}, true, 96, false, true},
      {"conv3x8x8k3relu", [] { return make_conv2d({3, 8, 8}, 4, 3, true); }, {3, 8, 8, 4, 3}, true, 2},
      {"conv2x7x6k2", [] { return make_conv2d({2, 7, 6}, 3, 2, false); }, {2, 7, 6, 3, 2}, false, 3},
      // 19216 input + output values per sample: chunks of 3 samples (kStage16ChunkFloats), so
      // batch 8 runs two full chunks and a tail of 2, with the weight gradients summed over all.
      {"conv1x28x28k5relu_chunked", [] { return make_conv2d({1, 28, 28}, 32, 5, true); }, {1, 28, 28, 32, 5}, true, 8, true},
      // bf16 convolutions run on oneDNN bf16 primitives (fp16: the staged plan).
      {"conv1x28x28k5relu", [] { return make_conv2d({1, 28, 28}, 32, 5, true); }, {1, 28, 28, 32, 5}, true, 8},
  };
  return all;
}

class Native16Test : public ::testing::TestWithParam<std::tuple<std::size_t, bool>> {};

TEST_P(Native16Test, MatchesRoundedFp64Reference) {
  const auto& [index, bf16] = GetParam();
  const Case& tc = cases()[index];
  const ConvShape& s = tc.shape;
  const int n = tc.batch;
  auto layer = tc.make();
  const auto specs = layer->param_specs();
  const auto fan_in = static_cast<float>(specs[0].fan_in);
  Bits w = encode_all(random_on_grid(shape_size(specs[0].shape), 2, 1.0f / std::sqrt(fan_in), bf16), bf16);
  Bits b = encode_all(random_on_grid(shape_size(specs[1].shape), 3, 0.5f, bf16), bf16);
  Bits dw(w.size(), 0xffff), db(b.size(), 0xffff);  // garbage: gradients are overwritten
  const auto x = random_on_grid(static_cast<std::size_t>(n) * s.c * s.h * s.w, 1, 1.0f, bf16);
  const auto dy = random_on_grid(static_cast<std::size_t>(n) * s.oc * s.oh() * s.ow(), 4, 1.0f, bf16);
  const Bits x16 = encode_all(x, bf16), dy16 = encode_all(dy, bf16);
  Bits y16(dy.size(), 0xffff), dx16(x.size(), 0xffff);

  Executor exec;
  const Native16Tensors t{{w.data(), b.data()}, {dw.data(), db.data()}, bf16, !tc.fp32_tiled};
  // Sized exactly: a bf16 Linear on bf16 primitives gets an empty stage, so a fallback to the
  // tiled plan would fail here rather than pass unnoticed.
  const std::size_t stage_size = tc.whole_staging ? layer->Layer::stage16_floats(n, false)
                                                  : layer->stage16_floats(n, bf16 && !tc.fp32_tiled);
  std::vector<float> stage(stage_size, std::numeric_limits<float>::quiet_NaN());
  auto plan = tc.whole_staging ? layer->Layer::make_plan16(n, exec, t, stage) : layer->make_plan16(n, exec, t, stage);
  plan->forward(x16.data(), y16.data(), true);
  plan->backward(x16.data(), y16.data(), dy16.data(), dx16.data());
  const auto y = decode_all(y16, bf16), dx = decode_all(dx16, bf16);

  const auto wd = decode_all(w, bf16), bd = decode_all(b, bf16);
  const std::vector<double> xr(x.begin(), x.end()), wr(wd.begin(), wd.end()), br(bd.begin(), bd.end());
  const auto yr = testing::ref_conv2d(xr, wr, br, n, s.c, s.h, s.w, s.oc, s.k, tc.relu);
  // The ReLU gradient mask comes from the stored (rounded) output, as in the plan.
  std::vector<double> g(dy.begin(), dy.end());
  if (tc.relu)
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = round16(yr[i], bf16) > 0.0f ? g[i] : 0.0;
  const Grads gr = ref_conv_backward(xr, wr, g, n, s);

  std::size_t exact = 0;
  expect_within_ulp(y, yr, bf16, "y", exact);
  expect_within_ulp(dx, gr.dx, bf16, "dx", exact);
  expect_within_ulp(decode_all(dw, bf16), gr.dw, bf16, "dW", exact);
  expect_within_ulp(decode_all(db, bf16), gr.db, bf16, "db", exact);
  const std::size_t total = y.size() + dx.size() + dw.size() + db.size();
  EXPECT_GE(static_cast<double>(exact), 0.99 * static_cast<double>(total)) << exact << " of " << total << " exact";
}

INSTANTIATE_TEST_SUITE_P(Layers, Native16Test,
                         ::testing::Combine(::testing::Range<std::size_t>(0, cases().size()), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(cases()[std::get<0>(info.param)].name) +
                                  (std::get<1>(info.param) ? "_bf16" : "_fp16");
                         });

TEST(Native16, StageSizes) {
  // Tiled Linear: T * (in + 1) for the tile T, the largest divisor of out up to 64, then one
  // batch chunk's x and output gradient: min(batch, 64) * (in + out).
  EXPECT_EQ(make_linear(37, 10, false)->stage16_floats(8, false), 10u * 38 + 8u * (37 + 10));
  EXPECT_EQ(make_linear(50, 130, true)->stage16_floats(8, false), 26u * 51 + 8u * (50 + 130));
  EXPECT_EQ(make_linear(784, 512, true)->stage16_floats(64, false), 64u * 785 + 64u * (784 + 512));
  EXPECT_EQ(make_linear(784, 512, true)->stage16_floats(1000, false), 64u * 785 + 64u * (784 + 512));
  EXPECT_EQ(make_linear(784, 512, true)->stage16_floats(17, false), 64u * 785 + 17u * (784 + 512));
  EXPECT_EQ(make_linear(10, 67, false)->stage16_floats(8, false), 1u * 11 + 8u * (10 + 67));  // prime: one row per tile
  // Default plan: parameters and gradients, then one chunk's x, dx, y, dy (the whole batch of 8).
  EXPECT_EQ(make_conv2d({3, 8, 8}, 4, 3, true)->stage16_floats(8, false), 2u * (4 * 3 * 9 + 4) + 2u * 8 * (192 + 144));
  // 784 + 18432 values per sample: chunks of 3 and fp32 gradient sums; the same for any batch > 3.
  const std::size_t conv1 = 3u * (32 * 25 + 32) + 2u * 3 * (784 + 18432);
  EXPECT_EQ(make_conv2d({1, 28, 28}, 32, 5, true)->stage16_floats(8, false), conv1);
  EXPECT_EQ(make_conv2d({1, 28, 28}, 32, 5, true)->stage16_floats(1000, false), conv1);
  EXPECT_EQ(make_conv2d({1, 28, 28}, 32, 5, true)->stage16_floats(2, false), 2u * (32 * 25 + 32) + 2u * 2 * (784 + 18432));
  EXPECT_EQ(make_maxpool2d({32, 24, 24}, 2)->stage16_floats(64, false), 2u * 2 * (18432 + 4608));
  EXPECT_EQ(make_maxpool2d({32, 24, 24}, 2)->Layer::stage16_floats(64, true), 2u * 2 * (18432 + 4608));
}

// Max pooling in chunks of the default plan (2 samples of [32, 24, 24]; batch 5 = 2 + 2 + a tail
// of 1): the backward must redo each chunk's forward, since the argmax workspace is the plan's
// state and the second chunk overwrote the first's. Against the fp32 plan on the whole batch (pooling only moves
// values, so both are exact).
TEST(Native16, ChunkedMaxPoolMatchesFloatPlan) {
  const int n = 5;
  for (const bool bf16 : {true, false}) {
    auto pool = make_maxpool2d({32, 24, 24}, 2);
    const auto x = random_on_grid(static_cast<std::size_t>(n) * 18432, 11, 1.0f, bf16);
    const auto dy = random_on_grid(static_cast<std::size_t>(n) * 4608, 12, 1.0f, bf16);
    Executor exec;
    std::vector<float> y(dy.size()), dx(x.size());
    auto reference = pool->make_plan(n, exec, {}, {});
    reference->forward(x.data(), y.data(), true);
    reference->backward(x.data(), y.data(), dy.data(), dx.data());

    for (const bool staged : {true, false}) {  // staged: the default chunked plan; else the layer's (bf16 primitives)
      std::vector<float> stage(staged ? pool->Layer::stage16_floats(n, bf16) : pool->stage16_floats(n, bf16),
                               std::numeric_limits<float>::quiet_NaN());
      auto plan = staged ? pool->Layer::make_plan16(n, exec, {{}, {}, bf16}, stage)
                         : pool->make_plan16(n, exec, {{}, {}, bf16}, stage);
      const Bits x16 = encode_all(x, bf16), dy16 = encode_all(dy, bf16);
      Bits y16(y.size(), 0xffff), dx16(x.size(), 0xffff);
      plan->forward(x16.data(), y16.data(), true);
      plan->backward(x16.data(), y16.data(), dy16.data(), dx16.data());
      EXPECT_EQ(decode_all(y16, bf16), y) << "bf16 " << bf16 << " staged " << staged;
      EXPECT_EQ(decode_all(dx16, bf16), dx) << "bf16 " << bf16 << " staged " << staged;
    }
  }
}

// oneDNN 2.6 runs bf16 matmuls, convolutions and pooling on avx512_core and up (natively with
// avx512_bf16): there the bf16 plans work on the u16 tensors in place and need no staging.
TEST(Native16, Bf16PrimitivesNeedNoStaging) {
  if (dnnl::get_effective_cpu_isa() < dnnl::cpu_isa::avx512_core) GTEST_SKIP() << "no bf16 matmul before avx512_core";
  EXPECT_EQ(make_linear(37, 10, false)->stage16_floats(8, true), 0u);
  EXPECT_EQ(make_linear(784, 512, true)->stage16_floats(8, true), 0u);
  EXPECT_EQ(make_linear(10, 67, false)->stage16_floats(1, true), 0u);
  // bf16 convolution and max pooling too: the whole bf16 CNN computes without a stage.
  EXPECT_EQ(make_conv2d({3, 8, 8}, 4, 3, true)->stage16_floats(8, true), 0u);
  EXPECT_EQ(make_conv2d({1, 28, 28}, 32, 5, true)->stage16_floats(64, true), 0u);
  EXPECT_EQ(make_maxpool2d({32, 24, 24}, 2)->stage16_floats(64, true), 0u);
}

// A conv (whole staging) feeding a linear (tiled staging, or none on bf16 primitives), as in a CNN. Every call re-stages, so
// sharing one stage between the two plans changes nothing, and a second step gives the same bits
// (gradients overwritten, not accumulated).
TEST(Native16, SharedStageAndRepeatedStepsGiveIdenticalBits) {
  const int n = 4;
  for (const bool bf16 : {true, false}) {
    auto conv = make_conv2d({3, 8, 8}, 4, 3, true);
    auto fc = make_linear(4 * 6 * 6, 10, false);
    struct Tensors {
      Bits w, b, dw, db;
    };
    auto init = [&](const Layer& l, std::uint64_t seed) {
      const auto sp = l.param_specs();
      Tensors p{encode_all(random_on_grid(shape_size(sp[0].shape), seed, 0.3f, bf16), bf16),
                encode_all(random_on_grid(shape_size(sp[1].shape), seed + 1, 0.3f, bf16), bf16), {}, {}};
      p.dw.resize(p.w.size());
      p.db.resize(p.b.size());
      return p;
    };
    const Bits x = encode_all(random_on_grid(n * 3 * 8 * 8, 7, 1.0f, bf16), bf16);
    const Bits dy = encode_all(random_on_grid(n * 10, 8, 1.0f, bf16), bf16);

    struct Result {
      Bits h, y, dh, dx;
      Bits conv_dw, conv_db, fc_dw, fc_db;
      bool operator==(const Result&) const = default;
    };
    auto run = [&](bool shared, int steps) {
      Executor exec;
      Tensors pc = init(*conv, 10), pf = init(*fc, 20);
      const std::size_t conv_floats = conv->stage16_floats(n, bf16), fc_floats = fc->stage16_floats(n, bf16);
      std::vector<float> stage(shared ? std::max(conv_floats, fc_floats) : conv_floats + fc_floats);
      const std::span<float> all(stage);
      auto conv_plan = conv->make_plan16(n, exec, {{pc.w.data(), pc.b.data()}, {pc.dw.data(), pc.db.data()}, bf16},
                                         all.first(conv_floats));
      auto fc_plan = fc->make_plan16(n, exec, {{pf.w.data(), pf.b.data()}, {pf.dw.data(), pf.db.data()}, bf16},
                                     shared ? all.first(fc_floats) : all.subspan(conv_floats, fc_floats));
      Result r{Bits(n * 4 * 6 * 6), Bits(n * 10), Bits(n * 4 * 6 * 6), Bits(x.size()), {}, {}, {}, {}};
      for (int step = 0; step < steps; ++step) {
        conv_plan->forward(x.data(), r.h.data(), true);
        fc_plan->forward(r.h.data(), r.y.data(), true);
        fc_plan->backward(r.h.data(), r.y.data(), dy.data(), r.dh.data());
        conv_plan->backward(x.data(), r.h.data(), r.dh.data(), r.dx.data());
      }
      r.conv_dw = pc.dw, r.conv_db = pc.db, r.fc_dw = pf.dw, r.fc_db = pf.db;
      return r;
    };
    const Result separate = run(false, 1);
    EXPECT_TRUE(run(true, 1) == separate) << "bf16 " << bf16;
    EXPECT_TRUE(run(true, 2) == separate) << "bf16 " << bf16;
  }
}

}  // namespace
}  // namespace lowsync::layers
