// model.arch = gpt (ALGORITHMS.md §8): parameter count and initialisation at the defaults, the
// whole tiny model (T 8, C 16, L 1, H 2) against an fp64 reference (loss, and the gradient against
// central differences of the reference loss), causality of the logits, per-position loss and
// accuracy, bf16 against fp32, and the refusals.
#include "support/reference_transformer.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace lowsync::model {
namespace {

const ArchOptions kTiny{8, 16, 1, 2};

// n windows of T bytes and their next-byte labels, drawn from a seed.
struct Windows {
  std::vector<float> inputs;
  std::vector<std::int32_t> labels;
  std::vector<int> tokens;
};
Windows windows(int n, int t, std::uint64_t seed) {
  Windows w;
  for (int i = 0; i < n * t; ++i) {
    const int byte = static_cast<int>(random_bits(seed, static_cast<std::uint64_t>(i)) % 256);
    w.tokens.push_back(byte);
    w.inputs.push_back(static_cast<float>(byte));
    w.labels.push_back(static_cast<std::int32_t>(random_bits(seed + 1, static_cast<std::uint64_t>(i)) % 256));
  }
  return w;
}

// Weights 5x the 0.02 initialisation (a trained model's size: outputs far from uniform, every path
// carrying a visible gradient); LayerNorm parameters and biases keep theirs.
void scale_weights(const Model& m, std::span<float> params) {
  for (const auto& info : m.param_infos()) {
    if (info.name.find("ln") != std::string::npos || info.name.starts_with("layernorm") || info.name.ends_with("bias")) continue;
    for (std::size_t i = 0; i < info.count; ++i) params[info.offset + i] *= 5.0f;
  }
}

double ref_loss(const Windows& w, const std::vector<double>& params, int n, const ArchOptions& o) {
  const auto logits = testing::ref_gpt_logits(w.tokens, params, n, o.gpt_ctx, o.gpt_width, o.gpt_layers, o.gpt_heads);
  return testing::ref_cross_entropy(logits, w.labels, n * o.gpt_ctx, 256);
}

TEST(Gpt, DefaultsHaveTheSpecifiedSizeAndInitialisation) {
  const Architecture a = find_architecture("gpt");
  EXPECT_EQ(a.input_shape, (layers::Shape{128}));
  EXPECT_EQ(a.positions, 128);
  EXPECT_EQ(a.num_classes, 256);
  Model m("gpt", 1, 5);
  EXPECT_EQ(m.num_params(), 875264u);
  EXPECT_EQ(m.positions(), 128);
  const auto& infos = m.param_infos();
  EXPECT_EQ(infos.front().name, "embedding.token");
  EXPECT_EQ(infos[2].name, "block0.ln1.weight");
  EXPECT_EQ(infos.back().name, "fc1.weight");
  EXPECT_EQ(infos.back().shape, (std::vector<std::int64_t>{256, 128}));
  const auto p = m.params();
  for (const auto& info : infos) {
    double sum = 0.0, sq = 0.0;
    for (std::size_t i = 0; i < info.count; ++i) sum += p[info.offset + i], sq += double{p[info.offset + i]} * p[info.offset + i];
    const double mean = sum / info.count, rms = std::sqrt(sq / info.count);
    if (info.name.ends_with("ln1.weight") || info.name.ends_with("ln2.weight") || info.name == "layernorm.weight") {
      EXPECT_EQ(mean, 1.0) << info.name;
      EXPECT_EQ(rms, 1.0) << info.name;
    } else if (info.name.ends_with("bias")) {
      EXPECT_EQ(rms, 0.0) << info.name;
    } else {  // normal(0, 0.02): the sample rms of >= 16k draws is within 3% of 0.02
      EXPECT_NEAR(rms, 0.02, 0.0006) << info.name;
      EXPECT_NEAR(mean, 0.0, 0.001) << info.name;
    }
  }
  Model same("gpt", 1, 5), other("gpt", 1, 6);
  EXPECT_TRUE(std::equal(p.begin(), p.end(), same.params().begin()));
  EXPECT_FALSE(std::equal(p.begin(), p.end(), other.params().begin()));
}

TEST(Gpt, TinyModelLossAndGradientMatchTheReference) {
  const int n = 2;
  Model m("gpt", n, 3, Compute::fp32, Storage::float32, kTiny);
  auto params = m.params();
  scale_weights(m, params);
  const Windows w = windows(n, kTiny.gpt_ctx, 21);
  const data::Batch batch{w.inputs.data(), w.labels.data(), n};
  const float loss = m.forward_backward(batch);
  const std::vector<double> pd(params.begin(), params.end());
  const double want = ref_loss(w, pd, n, kTiny);
  EXPECT_NEAR(loss, want, 1e-5 * want);
  EXPECT_NEAR(m.forward_loss(batch), want, 1e-5 * want);

  const std::vector<float> grads(m.grads().begin(), m.grads().end());
  std::vector<double> probe = pd;
  double scale = 0.0;
  for (float g : grads) scale = std::max(scale, double{std::abs(g)});
  int checked = 0;
  for (const auto& info : m.param_infos()) {
    for (std::size_t k = 0; k < info.count; ++k) {
      const std::size_t i = info.offset + k;
      // every coordinate of the small tensors, a quarter of the large ones
      if (info.count > 512 && random_bits(23, i) % 4 != 0) continue;
      const double eps = 1e-5;
      probe[i] = pd[i] + eps;
      const double lp = ref_loss(w, probe, n, kTiny);
      probe[i] = pd[i] - eps;
      const double lm = ref_loss(w, probe, n, kTiny);
      probe[i] = pd[i];
      const double fd = (lp - lm) / (2 * eps);
      ASSERT_NEAR(grads[i], fd, 1e-4 * scale + 1e-3 * std::abs(fd)) << info.name << " [" << k << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 2000);
}

TEST(Gpt, LogitsAtAPositionDependOnlyOnEarlierBytes) {
  const int n = 2, t = kTiny.gpt_ctx;
  for (const Compute c : {Compute::fp32, Compute::bf16}) {
    Model m("gpt", n, 4, c, c == Compute::bf16 ? Storage::native16 : Storage::float32, kTiny);
    Windows w = windows(n, t, 31);
    for (int cut = 0; cut < t - 1; cut += 3) {
      const auto before = m.logits(w.inputs.data(), n);
      const std::vector<float> kept(before.begin(), before.end());
      Windows changed = w;
      for (int s = 0; s < n; ++s)
        for (int p = cut + 1; p < t; ++p) changed.inputs[s * t + p] = static_cast<float>((changed.tokens[s * t + p] + 77) % 256);
      const auto after = m.logits(changed.inputs.data(), n);
      for (int s = 0; s < n; ++s) {
        for (int p = 0; p < t; ++p) {
          const std::size_t row = static_cast<std::size_t>(s * t + p) * 256;
          const bool same = std::equal(kept.begin() + row, kept.begin() + row + 256, after.begin() + row);
          if (p <= cut) {
            ASSERT_TRUE(same) << "compute " << static_cast<int>(c) << " cut " << cut << " position " << p;
          } else if (p == cut + 1) {
            EXPECT_FALSE(same) << "position " << p << " ignores its own byte";
          }
        }
      }
    }
  }
}

TEST(Gpt, EvaluateAveragesOverPositions) {
  const int n = 3;
  Model m("gpt", n, 6, Compute::fp32, Storage::float32, kTiny);
  const Windows w = windows(5, kTiny.gpt_ctx, 41);
  m.set_eval_batch(2);  // chunks of 2, 2, 1 samples
  const EvalResult r = m.evaluate(w.inputs.data(), w.labels.data(), 5);
  EXPECT_EQ(r.samples, 5);
  const auto logits = m.logits(w.inputs.data(), 3);  // first 3 samples, then the last 2 below
  std::vector<float> all(logits.begin(), logits.end());
  const auto rest = m.logits(w.inputs.data() + 3 * 8, 2);
  all.insert(all.end(), rest.begin(), rest.end());
  const std::vector<double> ld(all.begin(), all.end());
  EXPECT_NEAR(r.loss, testing::ref_cross_entropy(ld, w.labels, 5 * 8, 256), 1e-5);
  std::int64_t correct = 0;
  for (int row = 0; row < 5 * 8; ++row) {
    const auto* p = all.data() + row * 256;
    correct += std::max_element(p, p + 256) - p == w.labels[row] ? 1 : 0;
  }
  EXPECT_DOUBLE_EQ(r.accuracy, static_cast<double>(correct) / 40.0);
  // At initialisation (weights ~0.02) every byte is about equally likely: loss ~ ln 256.
  EXPECT_NEAR(r.loss, std::log(256.0), 0.05);
}

// bf16 (native storage: u16 parameters and activations) against fp32 on the same bf16-representable
// parameters: logits within 3% of their range (relative L2), the loss within 1%.
TEST(Gpt, Bf16ForwardIsCloseToFp32) {
  const int n = 2;
  const ArchOptions o{16, 32, 2, 4};
  Model f("gpt", n, 8, Compute::fp32, Storage::float32, o);
  Model h("gpt", n, 8, Compute::bf16, Storage::native16, o);
  auto pf = f.params();
  auto ph = h.params16();
  scale_weights(f, pf);
  for (std::size_t i = 0; i < pf.size(); ++i) {
    ph[i] = tensor::bf16_encode(pf[i]);
    pf[i] = tensor::bf16_decode(ph[i]);
  }
  const Windows w = windows(n, o.gpt_ctx, 51);
  const auto lf = f.logits(w.inputs.data(), n);
  const std::vector<float> a(lf.begin(), lf.end());
  const auto lh = h.logits(w.inputs.data(), n);
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) diff += (a[i] - lh[i]) * double{a[i] - lh[i]}, norm += double{a[i]} * a[i];
  EXPECT_LT(std::sqrt(diff / norm), 0.03);
  const data::Batch batch{w.inputs.data(), w.labels.data(), n};
  const double loss_f = f.forward_loss(batch), loss_h = h.forward_loss(batch);
  EXPECT_NEAR(loss_h, loss_f, 0.01 * loss_f);
  // and it trains: one bf16 step gives finite gradients and a loss equal to its forward loss
  EXPECT_FLOAT_EQ(h.forward_backward(batch), static_cast<float>(loss_h));
  EXPECT_TRUE(tensor::all_finite_16bit(h.grads16(), true));
}

TEST(Gpt, OptionsAndPrecisionAreValidated) {
  EXPECT_NO_THROW(arch_options(128, 128, 4, 4));
  try {
    arch_options(128, 130, 4, 4);
    FAIL() << "width 130 with 4 heads accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "model.gpt.width = 130 is not a multiple of model.gpt.heads = 4");
  }
  EXPECT_THROW(arch_options(0, 128, 4, 4), Error);
  EXPECT_THROW(arch_options(128, 128, 0, 4), Error);
  EXPECT_THROW(Model("gpt", 2, 1, Compute::fp8, Storage::float32, kTiny), Error);
  EXPECT_NO_THROW(validate_arch_compute("gpt", "bf16"));
  EXPECT_NO_THROW(validate_arch_compute("mlp", "fp8"));
  // fp16 runs through the generic 16-bit paths
  Model h("gpt", 2, 1, Compute::fp16, Storage::native16, kTiny);
  const Windows w = windows(2, 8, 61);
  EXPECT_NEAR(h.forward_loss({w.inputs.data(), w.labels.data(), 2}), std::log(256.0), 0.05);
}

}  // namespace
}  // namespace lowsync::model
