// Token + position embedding (ALGORITHMS.md §8) as Kokkos kernels: forward gathers
// token[x[n, t]] + position[t] into each row; backward scatter-adds dy into the token gradient
// (threads own blocks of channels, so no two threads touch one value and the sums are deterministic) and
// sums dy over the batch into the position gradient.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/transformer.hpp"

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>

namespace lowsync::layers {
namespace {

using Host = Kokkos::DefaultHostExecutionSpace;

class EmbeddingPlan final : public LayerPlan {
 public:
  EmbeddingPlan(std::int64_t batch, std::int64_t ctx, std::int64_t width, std::int64_t vocab, float* tok, float* pos,
                float* dtok, float* dpos)
      : batch_(batch), ctx_(ctx), width_(width), vocab_(vocab), tok_(tok), pos_(pos), dtok_(dtok), dpos_(dpos) {}

  void forward(const float* x, float* y, bool) override {
    check_tokens(x);
    const std::int64_t ctx = ctx_, width = width_;
    const float *tok = tok_, *pos = pos_;
    // y[r, :] = token[x[r], :] + position[r % T, :]   (r = n*T + t)
    Kokkos::parallel_for(
        "embedding_forward", Kokkos::RangePolicy<Host>(0, batch_ * ctx_), [=](const std::int64_t r) {
          const float* tr = tok + static_cast<std::int64_t>(x[r]) * width;
          const float* pr = pos + (r % ctx) * width;
          float* yr = y + r * width;
          for (std::int64_t c = 0; c < width; ++c) yr[c] = tr[c] + pr[c];
        });
  }

  void backward(const float* x, const float*, const float* dy, float*) override {
    const std::int64_t rows = batch_ * ctx_, ctx = ctx_, width = width_, batch = batch_, vocab = vocab_;
    float *dtok = dtok_, *dpos = dpos_;
    // dtoken[v, c] = sum of dy[r, c] over rows r with x[r] = v, in row order. Threads split the
    // channels into blocks of kBlock; each walks the rows in order over its own block, so no two
    // threads touch one value and the sums are deterministic, and the inner loop is contiguous (a
    // thread per channel strode through dy a row apart).
    constexpr std::int64_t kBlock = 32;
    const std::int64_t blocks = (width + kBlock - 1) / kBlock;
    Kokkos::parallel_for(
        "embedding_backward_token", Kokkos::RangePolicy<Host>(0, blocks), [=](const std::int64_t b) {
          const std::int64_t c0 = b * kBlock, c1 = std::min(width, c0 + kBlock);
          for (std::int64_t v = 0; v < vocab; ++v)
            for (std::int64_t c = c0; c < c1; ++c) dtok[v * width + c] = 0.0f;
          for (std::int64_t r = 0; r < rows; ++r) {
            float* dt = dtok + static_cast<std::int64_t>(x[r]) * width;
            const float* dr = dy + r * width;
            for (std::int64_t c = c0; c < c1; ++c) dt[c] += dr[c];
          }
        });
    // dposition[t, c] = sum over n of dy[n*T + t, c], in n order (one thread per position t)
    Kokkos::parallel_for(
        "embedding_backward_position", Kokkos::RangePolicy<Host>(0, ctx_), [=](const std::int64_t t) {
          float* dp = dpos + t * width;
          for (std::int64_t c = 0; c < width; ++c) dp[c] = 0.0f;
          for (std::int64_t n = 0; n < batch; ++n) {
            const float* dr = dy + (n * ctx + t) * width;
            for (std::int64_t c = 0; c < width; ++c) dp[c] += dr[c];
          }
        });
  }

 private:
  // Bytes must index the token table: checked before the kernel (which cannot throw).
  void check_tokens(const float* x) const {
    for (std::int64_t r = 0; r < batch_ * ctx_; ++r) {
      const float v = x[r];
      if (!(v >= 0.0f && v < static_cast<float>(vocab_) && v == std::floor(v)))
        fail("embedding: input value {} at sample {} position {} is not a token 0..{}", v, r / ctx_, r % ctx_, vocab_ - 1);
    }
  }

  std::int64_t batch_, ctx_, width_, vocab_;
  float *tok_, *pos_, *dtok_, *dpos_;
};

class Embedding final : public Layer {
 public:
  Embedding(std::int64_t ctx, std::int64_t width, std::int64_t vocab) : ctx_(ctx), width_(width), vocab_(vocab) {}
  std::string name() const override { return "embedding"; }
  Shape input_shape() const override { return {ctx_}; }
  Shape output_shape() const override { return {ctx_, width_}; }
  std::vector<ParamSpec> param_specs() const override {
    return {{"token", {vocab_, width_}, width_, ParamInit::normal_002},
            {"position", {ctx_, width_}, width_, ParamInit::normal_002}};
  }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor&, std::vector<float*> p, std::vector<float*> g) override {
    return std::make_unique<EmbeddingPlan>(batch, ctx_, width_, vocab_, p[0], p[1], g[0], g[1]);
  }

 private:
  std::int64_t ctx_, width_, vocab_;
};

}  // namespace

std::unique_ptr<Layer> make_embedding(std::int64_t ctx, std::int64_t width, std::int64_t vocab) {
  if (ctx <= 0 || width <= 0 || vocab <= 0) fail("embedding needs positive sizes, got T {} C {} vocab {}", ctx, width, vocab);
  return std::make_unique<Embedding>(ctx, width, vocab);
}

}  // namespace lowsync::layers
