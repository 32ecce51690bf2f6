// FP8 compute (precision.compute = fp8): the model's forward loss and gradients against a naive
// fake-quantized MLP written from ALGORITHMS.md §1 (E4M3 weights and inputs, amax scales, E5M2
// output gradients, straight-through estimator), and the fp32 master weights stay untouched.
#include "lowsync/core/rng.hpp"
#include "lowsync/model/model.hpp"
#include "lowsync/tensor/fp8.hpp"
#include "lowsync/tensor/half.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowsync::model {
namespace {

using tensor::Fp8Format;

// Round every element to the per-tensor scaled FP8 grid, nearest-even, scale = amax / Fmax.
std::vector<double> fq(const std::vector<double>& x, Fp8Format f) {
  double amax = 0.0;
  for (double v : x) amax = std::max(amax, std::fabs(v));
  const float s = tensor::fp8_scale_from_amax(static_cast<float>(amax), f);
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    out[i] = static_cast<double>(tensor::fp8_decode(tensor::fp8_encode_rne(static_cast<float>(x[i]) / s, f), f)) * s;
  return out;
}

struct Layer {
  int in, out;
  bool relu;
  std::vector<double> w, b, xq, wq, a;  // a = output after the activation
};

double rel_l2(const std::vector<double>& a, std::span<const float> b) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += a[i] * a[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(Fp8Compute, MlpLossAndGradientsMatchNaiveFakeQuantReference) {
  const int n = 8;
  Model m("mlp", n, 3, Compute::fp8);
  Model m32("mlp", n, 3, Compute::fp32);
  std::vector<float> images(n * 784);
  std::vector<std::int32_t> labels(n);
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = uniform01(5, i);
  for (int i = 0; i < n; ++i) labels[i] = i % 10;
  const data::Batch batch{images.data(), labels.data(), n};
  const std::vector<float> master_before(m.params().begin(), m.params().end());
  const float loss = m.forward_backward(batch);
  const float loss32 = m32.forward_backward(batch);
  EXPECT_TRUE(std::equal(master_before.begin(), master_before.end(), m.params().begin()))
      << "forward must not replace the fp32 master by its quantized copy";

  // Reference forward.
  std::vector<Layer> ls = {{784, 512, true, {}, {}, {}, {}, {}}, {512, 256, true, {}, {}, {}, {}, {}},
                           {256, 10, false, {}, {}, {}, {}, {}}};
  const auto& infos = m.param_infos();
  for (std::size_t l = 0; l < ls.size(); ++l) {
    const auto& wi = infos[2 * l];
    const auto& bi = infos[2 * l + 1];
    ls[l].w.assign(m.params().begin() + wi.offset, m.params().begin() + wi.offset + wi.count);
    ls[l].b.assign(m.params().begin() + bi.offset, m.params().begin() + bi.offset + bi.count);
  }
  std::vector<double> x(images.begin(), images.end());
  for (auto& L : ls) {
    L.xq = fq(x, Fp8Format::e4m3);
    L.wq = fq(L.w, Fp8Format::e4m3);
    L.a.assign(static_cast<std::size_t>(n) * L.out, 0.0);
    for (int s = 0; s < n; ++s)
      for (int o = 0; o < L.out; ++o) {
        double z = L.b[o];
        for (int i = 0; i < L.in; ++i) z += L.xq[s * L.in + i] * L.wq[o * L.in + i];
        L.a[s * L.out + o] = L.relu ? std::max(z, 0.0) : z;
      }
    x = L.a;
  }
  double ref_loss = 0.0;
  std::vector<double> dy(static_cast<std::size_t>(n) * 10);
  for (int s = 0; s < n; ++s) {
    const double* z = &x[s * 10];
    const double zmax = *std::max_element(z, z + 10);
    double sum = 0.0;
    for (int c = 0; c < 10; ++c) sum += std::exp(z[c] - zmax);
    ref_loss += (std::log(sum) + zmax - z[labels[s]]) / n;
    for (int c = 0; c < 10; ++c) dy[s * 10 + c] = (std::exp(z[c] - zmax) / sum - (c == labels[s])) / n;
  }
  EXPECT_NEAR(loss, ref_loss, 1e-4 * std::fabs(ref_loss) + 1e-5);
  // fp8 compute really quantizes: the fp32 model's loss is measurably different.
  EXPECT_GT(std::fabs(loss - loss32), 1e-4);

  // Reference backward, last layer first.
  for (std::size_t l = ls.size(); l-- > 0;) {
    auto& L = ls[l];
    std::vector<double> g = fq(dy, Fp8Format::e5m2);
    if (L.relu)
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = L.a[i] > 0.0 ? g[i] : 0.0;
    std::vector<double> dw(L.w.size(), 0.0), db(L.b.size(), 0.0), dx(static_cast<std::size_t>(n) * L.in, 0.0);
    for (int s = 0; s < n; ++s)
      for (int o = 0; o < L.out; ++o) {
        const double go = g[s * L.out + o];
        db[o] += go;
        for (int i = 0; i < L.in; ++i) {
          dw[o * L.in + i] += go * L.xq[s * L.in + i];
          dx[s * L.in + i] += go * L.wq[o * L.in + i];
        }
      }
    const auto& wi = infos[2 * l];
    const auto& bi = infos[2 * l + 1];
    // Amax scales never clamp, so the STE passes everything: the reference has no mask.
    EXPECT_LT(rel_l2(dw, m.grads().subspan(wi.offset, wi.count)), 1e-3) << wi.name;
    EXPECT_LT(rel_l2(db, m.grads().subspan(bi.offset, bi.count)), 1e-3) << bi.name;
    dy = dx;
  }
}

TEST(Fp8Compute, CnnTrainsAndKeepsMasterFp32) {
  // The conv path runs and its gradients differ from fp32 by quantization noise only.
  const int n = 4;
  Model m("cnn", n, 2, Compute::fp8), m32("cnn", n, 2, Compute::fp32);
  std::vector<float> images(n * 784);
  std::vector<std::int32_t> labels = {0, 3, 5, 7};
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = uniform01(6, i);
  const data::Batch batch{images.data(), labels.data(), n};
  const float l8 = m.forward_backward(batch), l32 = m32.forward_backward(batch);
  EXPECT_NEAR(l8, l32, 0.05 * std::fabs(l32));
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < m.num_params(); ++i) {
    num += std::pow(m.grads()[i] - m32.grads()[i], 2);
    den += std::pow(m32.grads()[i], 2);
  }
  EXPECT_GT(num, 0.0);
  EXPECT_LT(std::sqrt(num / den), 0.3);
}

}  // namespace
}  // namespace lowsync::model

namespace lowsync::model {
namespace {

// Emulated standalone 16-bit compute: every stored value is on the 16-bit grid, and the loss and
// gradients stay close to fp32 (the 16-bit rounding is the only difference).
TEST(HalfCompute, ValuesStayOnTheSixteenBitGridAndNearFp32) {
  for (Compute c : {Compute::bf16, Compute::fp16}) {
    const bool bf16 = c == Compute::bf16;
    auto on_grid = [&](float x) { return (bf16 ? tensor::bf16_round(x) : tensor::fp16_round(x)) == x; };
    const int n = 8;
    Model m("cnn", n, 4, c), m32("cnn", n, 4, Compute::fp32);
    for (float w : m.params()) ASSERT_TRUE(on_grid(w));
    // Same starting point for the comparison: the 16-bit model's (rounded) parameters.
    std::copy(m.params().begin(), m.params().end(), m32.params().begin());
    std::vector<float> images(n * 784);
    std::vector<std::int32_t> labels(n);
    for (std::size_t i = 0; i < images.size(); ++i) images[i] = uniform01(8, i);
    for (int i = 0; i < n; ++i) labels[i] = (3 * i) % 10;
    const data::Batch batch{images.data(), labels.data(), n};
    const float l16 = m.forward_backward(batch), l32 = m32.forward_backward(batch);
    for (float g : m.grads()) ASSERT_TRUE(on_grid(g));
    EXPECT_NEAR(l16, l32, (bf16 ? 2e-2 : 2e-3) * std::fabs(l32));
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < m.num_params(); ++i) {
      num += std::pow(m.grads()[i] - m32.grads()[i], 2);
      den += std::pow(m32.grads()[i], 2);
    }
    EXPECT_GT(num, 0.0);
    // fp16 has no loss scaling here: gradients below 2^-14 lose bits as subnormals, so the
    // relative error is set by small gradients (measured 0.027), not by fp16's 2^-11 rounding.
    EXPECT_LT(std::sqrt(num / den), bf16 ? 0.1 : 0.05);
  }
}

}  // namespace
}  // namespace lowsync::model
