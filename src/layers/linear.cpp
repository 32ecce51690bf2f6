// Linear layer on oneDNN inner-product primitives: forward (bias + optional fused ReLU),
// backward-data and backward-weights (with bias). Argument maps are built once per plan; each
// call only swaps data handles. Native 16-bit storage: bf16 runs oneDNN bf16 matmuls on the u16
// tensors in place (Bf16LinearPlan16); fp16 (or bf16 where oneDNN refuses the bf16 primitives, or
// Native16Tensors::bf16_primitives = false) uses a row-tiled fp32 matmul plan (TiledLinearPlan16)
// and batch chunks, so only one tile of W and one chunk of activations are ever staged as floats.
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

class LinearPlan final : public LayerPlan {
 public:
  LinearPlan(int n, std::int64_t in, std::int64_t out, bool relu, Executor& exec, float* w, float* b, float* dw,
             float* db)
      : exec_(exec), relu_(relu), dy_pre_(relu ? lowsync::memory::TrackedBuffer<float>("linear.dy_pre", static_cast<std::size_t>(n) * out)
                                             : lowsync::memory::TrackedBuffer<float>()) {
    auto& eng = exec.engine();
    const memory::desc src_md({n, in}, dt::f32, tag::ab), dst_md({n, out}, dt::f32, tag::ab);
    const memory::desc w_md({out, in}, dt::f32, tag::ab), b_md({out}, dt::f32, tag::a);
    dnnl::primitive_attr attr;
    if (relu) {
      dnnl::post_ops po;
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      attr.set_post_ops(po);
    }
    // b == nullptr: no bias (a transformer's LM head); the primitives are made without one.
    const bool bias = b != nullptr;
    const auto fwd_pd = bias ? dnnl::inner_product_forward::primitive_desc(
                                   {dnnl::prop_kind::forward_training, src_md, w_md, b_md, dst_md}, attr, eng)
                             : dnnl::inner_product_forward::primitive_desc(
                                   {dnnl::prop_kind::forward_training, src_md, w_md, dst_md}, attr, eng);
    fwd_ = dnnl::inner_product_forward(fwd_pd);
    const dnnl::inner_product_backward_data::primitive_desc bwd_data_pd({src_md, w_md, dst_md}, eng, fwd_pd);
    bwd_data_ = dnnl::inner_product_backward_data(bwd_data_pd);
    const auto bwd_w_pd = bias ? dnnl::inner_product_backward_weights::primitive_desc({src_md, w_md, b_md, dst_md}, eng, fwd_pd)
                               : dnnl::inner_product_backward_weights::primitive_desc({src_md, w_md, dst_md}, eng, fwd_pd);
    bwd_weights_ = dnnl::inner_product_backward_weights(bwd_w_pd);

    src_ = memory(src_md, eng, nullptr);
    dst_ = memory(dst_md, eng, nullptr);
    dy_ = memory(dst_md, eng, nullptr);
    dx_ = memory(src_md, eng, nullptr);
    const memory w_mem(w_md, eng, w), dw_mem(w_md, eng, dw);
    fwd_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, dst_}};
    if (bias) fwd_args_.insert({DNNL_ARG_BIAS, memory(b_md, eng, b)});
    if (relu) {
      dy_pre_mem_ = memory(dst_md, eng, dy_pre_.data());
      const dnnl::eltwise_forward::primitive_desc relu_fwd_pd(
          {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst_md, 0.0f, 0.0f}, eng);
      const dnnl::eltwise_backward::primitive_desc relu_bwd_pd(
          {dnnl::algorithm::eltwise_relu_use_dst_for_bwd, dst_md, dst_md, 0.0f, 0.0f}, eng, relu_fwd_pd);
      relu_bwd_ = dnnl::eltwise_backward(relu_bwd_pd);
      relu_args_ = {{DNNL_ARG_DST, dst_}, {DNNL_ARG_DIFF_DST, dy_}, {DNNL_ARG_DIFF_SRC, dy_pre_mem_}};
    }
    const memory& grad_out = relu ? dy_pre_mem_ : dy_;
    bwd_data_args_ = {{DNNL_ARG_DIFF_DST, grad_out}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DIFF_SRC, dx_}};
    bwd_w_args_ = {{DNNL_ARG_SRC, src_}, {DNNL_ARG_DIFF_DST, grad_out}, {DNNL_ARG_DIFF_WEIGHTS, dw_mem}};
    if (bias) bwd_w_args_.insert({DNNL_ARG_DIFF_BIAS, memory(b_md, eng, db)});
  }

  void forward(const float* x, float* y, bool) override {
    src_.set_data_handle(const_cast<float*>(x));
    dst_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }

  void backward(const float* x, const float* y, const float* dy, float* dx) override {
    src_.set_data_handle(const_cast<float*>(x));
    dy_.set_data_handle(const_cast<float*>(dy));
    if (relu_) {
      dst_.set_data_handle(const_cast<float*>(y));
      exec_.run(relu_bwd_, relu_args_);
    }
    exec_.run(bwd_weights_, bwd_w_args_);
    if (dx != nullptr) {
      dx_.set_data_handle(dx);
      exec_.run(bwd_data_, bwd_data_args_);
    }
  }

 private:
  Executor& exec_;
  bool relu_;
  lowsync::memory::TrackedBuffer<float> dy_pre_;  // [N, out] gradient before the fused ReLU
  dnnl::memory src_, dst_, dy_, dx_, dy_pre_mem_;
  dnnl::primitive fwd_, bwd_data_, bwd_weights_, relu_bwd_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_data_args_, bwd_w_args_, relu_args_;
};

// Rows of W staged at a time by the native 16-bit plan: the largest divisor of `out` up to 64, so
// every tile is full (one set of primitives) while the stage stays ~2 * 64 * in floats.
std::int64_t tile_rows(std::int64_t out) {
  std::int64_t t = std::min<std::int64_t>(out, 64);
  while (out % t != 0) --t;
  return t;
}

// Samples per batch chunk of the same plan: the largest divisor of the batch up to kChunkCap
// (the default batch is one chunk: a smaller chunk means more, smaller oneDNN calls).
constexpr std::int64_t kChunkCap = 64;
std::int64_t chunk_rows(std::int64_t n) {
  std::int64_t m = std::min(n, kChunkCap);
  while (n % m != 0) --m;
  return m;
}

// Floats the tiled plan stages: a tile of W and b rows (dW and db reuse it: the dW pass reads no
// W), then one batch chunk's x (dx reuses it: the dx pass reads no x) and output gradient (the
// forward's output chunk reuses that). Bounded by the chunk cap rather than the chunk itself, so
// it never shrinks with the batch.
std::size_t tiled_stage_floats(std::int64_t n, std::int64_t in, std::int64_t out) {
  const std::int64_t rows = tile_rows(out), m = std::min(n, kChunkCap);
  return static_cast<std::size_t>(rows * (in + 1) + m * (in + out));
}

// Native 16-bit storage for Linear in fp32: W [out, in], b and the activations stay u16. The batch
// runs in chunks of M samples and W in tiles of T output rows, each decoded into `stage` and
// multiplied by oneDNN fp32 matmuls on strided views (a column block of the chunk's y / dy, the
// staged rows read transposed), so no full-size float copy of W, dW or an activation exists.
//   forward:  per chunk, per tile: y block = x . W_rows^T + b_rows (ReLU fused); encode the chunk.
//   backward: per tile, per chunk: dW_rows += g_block^T . x (sum post-op), db_rows += column sums
//             of g (g = dy where y > 0); encode the tile. Then per chunk, per tile:
//             dx += g_block . W_rows; encode the chunk.
// W is decoded once per chunk in forward and in the dx pass, x once per tile in the dW pass.
// Rounding points match the emulated path (half_plan.cpp): y, dx and the encoded gradients.
class TiledLinearPlan16 final : public LayerPlan16 {
 public:
  TiledLinearPlan16(int n, std::int64_t in, std::int64_t out, bool relu, Executor& exec, const Native16Tensors& t,
                    std::span<float> stage)
      : exec_(exec), n_(n), in_(in), out_(out), rows_(tile_rows(out)), m_(chunk_rows(n)), relu_(relu), bf16_(t.bf16),
        w_(t.params[0]), b_(t.params[1]), dw_(t.grads[0]), db_(t.grads[1]) {
    if (stage.size() < tiled_stage_floats(n, in, out))
      fail("linear: stage of {} floats, needs {}", stage.size(), tiled_stage_floats(n, in, out));
    std::size_t offset = 0;
    auto take = [&](std::int64_t count) {
      const auto s = stage.subspan(offset, static_cast<std::size_t>(count));
      offset += static_cast<std::size_t>(count);
      return s;
    };
    w_tile_ = take(rows_ * in), b_tile_ = take(rows_), x_ = take(m_ * in), g_ = take(m_ * out);
    dw_tile_ = w_tile_, db_tile_ = b_tile_, dx_ = x_;  // never live at the same time (tiled_stage_floats)

    auto& eng = exec.engine();
    const std::int64_t rows = rows_, m = m_;
    using dims = memory::dims;
    const memory::desc x_md({m, in}, dt::f32, dims{in, 1});
    const memory::desc w_rows_md({rows, in}, dt::f32, dims{in, 1});
    const memory::desc w_cols_md({in, rows}, dt::f32, dims{1, in});   // the staged rows, transposed
    const memory::desc b_md({1, rows}, dt::f32, dims{rows, 1});
    const memory::desc block_md({m, rows}, dt::f32, dims{out, 1});    // columns r0.. of a [M, out] chunk
    const memory::desc block_t_md({rows, m}, dt::f32, dims{1, out});  // the same block, transposed

    dnnl::primitive_attr fwd_attr, accumulate_attr;
    if (relu) {
      dnnl::post_ops po;
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      fwd_attr.set_post_ops(po);
    }
    dnnl::post_ops sum;
    sum.append_sum(1.0f);
    accumulate_attr.set_post_ops(sum);
    // y block = x . W_rows^T + b_rows
    fwd_ = dnnl::matmul({{x_md, w_cols_md, b_md, block_md}, fwd_attr, eng});
    // dW_rows (+)= g_block^T . x
    bwd_weights_first_ = dnnl::matmul({{block_t_md, x_md, w_rows_md}, eng});
    bwd_weights_rest_ = dnnl::matmul({{block_t_md, x_md, w_rows_md}, accumulate_attr, eng});
    // dx (+)= g_block . W_rows
    bwd_data_first_ = dnnl::matmul({{block_md, w_rows_md, x_md}, eng});
    bwd_data_rest_ = dnnl::matmul({{block_md, w_rows_md, x_md}, accumulate_attr, eng});

    block_ = memory(block_md, eng, nullptr);
    block_t_ = memory(block_t_md, eng, nullptr);
    const memory x_mem(x_md, eng, x_.data()), dx_mem(x_md, eng, dx_.data());
    const memory w_cols(w_cols_md, eng, w_tile_.data()), w_rows(w_rows_md, eng, w_tile_.data());
    const memory b_mem(b_md, eng, b_tile_.data()), dw_mem(w_rows_md, eng, dw_tile_.data());
    fwd_args_ = {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_cols}, {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, block_}};
    bwd_w_args_ = {{DNNL_ARG_SRC, block_t_}, {DNNL_ARG_WEIGHTS, x_mem}, {DNNL_ARG_DST, dw_mem}};
    bwd_data_args_ = {{DNNL_ARG_SRC, block_}, {DNNL_ARG_WEIGHTS, w_rows}, {DNNL_ARG_DST, dx_mem}};
  }

  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override {
    for (std::int64_t c0 = 0; c0 < n_; c0 += m_) {
      decode_x_chunk(x, c0);
      for (std::int64_t r0 = 0; r0 < out_; r0 += rows_) {
        stage_rows(r0);
        tensor::decode_16bit({b_ + r0, b_tile_.size()}, b_tile_, bf16_);
        block_.set_data_handle(g_.data() + r0);  // the chunk's output, staged in g_
        exec_.run(fwd_, fwd_args_);
      }
      tensor::encode_16bit(g_, {y + c0 * out_, g_.size()}, bf16_);
    }
  }

  void backward(const std::uint16_t* x, const std::uint16_t* y, const std::uint16_t* dy, std::uint16_t* dx) override {
    for (std::int64_t r0 = 0; r0 < out_; r0 += rows_) {
      std::fill(db_tile_.begin(), db_tile_.end(), 0.0f);
      for (std::int64_t c0 = 0; c0 < n_; c0 += m_) {
        decode_x_chunk(x, c0);
        stage_gradient(y, dy, c0, r0, rows_);
        for (std::int64_t i = 0; i < m_; ++i)
          for (std::int64_t j = 0; j < rows_; ++j) db_tile_[j] += g_[i * out_ + r0 + j];
        block_t_.set_data_handle(g_.data() + r0);
        exec_.run(c0 == 0 ? bwd_weights_first_ : bwd_weights_rest_, bwd_w_args_);
      }
      tensor::encode_16bit(dw_tile_, {dw_ + r0 * in_, dw_tile_.size()}, bf16_);
      tensor::encode_16bit(db_tile_, {db_ + r0, db_tile_.size()}, bf16_);
    }
    if (dx == nullptr) return;
    for (std::int64_t c0 = 0; c0 < n_; c0 += m_) {
      stage_gradient(y, dy, c0, 0, out_);
      for (std::int64_t r0 = 0; r0 < out_; r0 += rows_) {
        stage_rows(r0);
        block_.set_data_handle(g_.data() + r0);
        exec_.run(r0 == 0 ? bwd_data_first_ : bwd_data_rest_, bwd_data_args_);
      }
      tensor::encode_16bit(dx_, {dx + c0 * in_, dx_.size()}, bf16_);
    }
  }

 private:
  void stage_rows(std::int64_t r0) { tensor::decode_16bit({w_ + r0 * in_, w_tile_.size()}, w_tile_, bf16_); }
  void decode_x_chunk(const std::uint16_t* x, std::int64_t c0) {
    tensor::decode_16bit({x + c0 * in_, x_.size()}, x_, bf16_);
  }
  // g_[i, cols] = dy where y > 0 (ReLU: y = max(pre, 0) was kept) for the chunk's rows, columns
  // [col0, col0 + cols).
  void stage_gradient(const std::uint16_t* y, const std::uint16_t* dy, std::int64_t c0, std::int64_t col0,
                      std::int64_t cols) {
    for (std::int64_t i = 0; i < m_; ++i) {
      const std::int64_t row = (c0 + i) * out_ + col0;
      float* g = g_.data() + i * out_ + col0;
      for (std::int64_t j = 0; j < cols; ++j) {
        const bool passes = !relu_ || tensor::decode_16bit(y[row + j], bf16_) > 0.0f;
        g[j] = passes ? tensor::decode_16bit(dy[row + j], bf16_) : 0.0f;
      }
    }
  }

  Executor& exec_;
  std::int64_t n_, in_, out_, rows_, m_;
  bool relu_, bf16_;
  std::uint16_t *w_, *b_, *dw_, *db_;
  std::span<float> w_tile_, b_tile_, dw_tile_, db_tile_;  // a tile of rows, in the shared stage (dW on W)
  std::span<float> x_, dx_, g_;                            // a chunk of samples, in the shared stage (dx on x)
  dnnl::memory block_, block_t_;
  dnnl::primitive fwd_, bwd_weights_first_, bwd_weights_rest_, bwd_data_first_, bwd_data_rest_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_w_args_, bwd_data_args_;
};

// bf16 primitives of the native bf16 plan for one batch size. Throws dnnl::error when this
// oneDNN build or CPU refuses a combination (the caller then stages W in fp32 instead).
struct Bf16LinearPrims {
  dnnl::matmul::primitive_desc fwd, bwd_weights, bwd_data;
  bool bias_bf16 = true;  // false: the bias goes to the forward matmul decoded to f32
};

Bf16LinearPrims make_bf16_linear_prims(const dnnl::engine& eng, std::int64_t n, std::int64_t in, std::int64_t out,
                                       bool relu) {
  using dims = memory::dims;
  const memory::desc x_md({n, in}, dt::bf16, dims{in, 1});
  const memory::desc w_t_md({in, out}, dt::bf16, dims{1, in});  // W [out, in] read as W^T
  const memory::desc w_md({out, in}, dt::bf16, dims{in, 1});
  const memory::desc y_md({n, out}, dt::bf16, dims{out, 1});
  const memory::desc g_md({n, out}, dt::bf16, dims{out, 1});
  const memory::desc g_t_md({out, n}, dt::bf16, dims{1, out});  // the same gradient, transposed
  const memory::desc dx_md({n, in}, dt::bf16, dims{in, 1});
  dnnl::primitive_attr fwd_attr;
  if (relu) {
    dnnl::post_ops po;
    po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    fwd_attr.set_post_ops(po);
  }
  Bf16LinearPrims p;
  try {
    const memory::desc b_md({1, out}, dt::bf16, dims{out, 1});
    p.fwd = dnnl::matmul::primitive_desc({x_md, w_t_md, b_md, y_md}, fwd_attr, eng);
  } catch (const dnnl::error&) {
    const memory::desc b_md({1, out}, dt::f32, dims{out, 1});
    p.fwd = dnnl::matmul::primitive_desc({x_md, w_t_md, b_md, y_md}, fwd_attr, eng);
    p.bias_bf16 = false;
  }
  // dW = g^T . x, rounded to bf16 (nearest-even) by the primitive straight into the u16 gradient.
  p.bwd_weights = dnnl::matmul::primitive_desc({g_t_md, x_md, w_md}, eng);
  // dx = g . W
  p.bwd_data = dnnl::matmul::primitive_desc({g_md, w_md, dx_md}, eng);
  return p;
}

// Whether the bf16 plan can be made for these sizes (probed on a CPU engine of its own).
bool bf16_linear_supported(std::int64_t n, std::int64_t in, std::int64_t out, bool relu) {
  try {
    static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    make_bf16_linear_prims(eng, n, in, out, relu);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

// Native bf16 storage on oneDNN bf16 matmuls: W, b, dW and the activations x, y, dx are used in
// place as bf16 (no staging, no tiling); only the output gradient is masked by the ReLU into a
// plan-owned bf16 copy. Accumulation is fp32 inside the primitives, which round y, dx and dW to
// bf16 (nearest-even) on store, the rounding points of the staged plans; db is summed in fp32 here.
class Bf16LinearPlan16 final : public LayerPlan16 {
 public:
  Bf16LinearPlan16(int n, std::int64_t in, std::int64_t out, bool relu, Executor& exec, const Native16Tensors& t)
      : exec_(exec), n_(n), out_(out), relu_(relu), b_(t.params[1]), db_(t.grads[1]),
        g16_("linear16.dy_bf16", relu ? static_cast<std::size_t>(n) * out : 0), db_sum_("linear16.db", static_cast<std::size_t>(out)) {
    auto& eng = exec.engine();
    const Bf16LinearPrims p = make_bf16_linear_prims(eng, n, in, out, relu);
    fwd_ = dnnl::matmul(p.fwd);
    bwd_weights_ = dnnl::matmul(p.bwd_weights);
    bwd_data_ = dnnl::matmul(p.bwd_data);
    x_ = memory(p.fwd.src_desc(), eng, nullptr);
    const memory w_t(p.fwd.weights_desc(), eng, t.params[0]);
    if (!p.bias_bf16) b_f32_ = lowsync::memory::TrackedBuffer<float>("linear16.b_f32", static_cast<std::size_t>(out));
    const memory bias(p.fwd.bias_desc(), eng, p.bias_bf16 ? static_cast<void*>(t.params[1]) : b_f32_.data());
    y_ = memory(p.fwd.dst_desc(), eng, nullptr);
    g_t_ = memory(p.bwd_weights.src_desc(), eng, relu ? g16_.data() : nullptr);
    g_ = memory(p.bwd_data.src_desc(), eng, relu ? g16_.data() : nullptr);
    const memory dw(p.bwd_weights.dst_desc(), eng, t.grads[0]), w(p.bwd_data.weights_desc(), eng, t.params[0]);
    dx_ = memory(p.bwd_data.dst_desc(), eng, nullptr);
    fwd_args_ = {{DNNL_ARG_SRC, x_}, {DNNL_ARG_WEIGHTS, w_t}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, y_}};
    bwd_w_args_ = {{DNNL_ARG_SRC, g_t_}, {DNNL_ARG_WEIGHTS, x_}, {DNNL_ARG_DST, dw}};
    bwd_data_args_ = {{DNNL_ARG_SRC, g_}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dx_}};
  }

  void forward(const std::uint16_t* x, std::uint16_t* y, bool) override {
    if (b_f32_.size() != 0) tensor::bf16_decode({b_, b_f32_.size()}, b_f32_.span());
    x_.set_data_handle(const_cast<std::uint16_t*>(x));
    y_.set_data_handle(y);
    exec_.run(fwd_, fwd_args_);
  }

  void backward(const std::uint16_t* x, const std::uint16_t* y, const std::uint16_t* dy, std::uint16_t* dx) override {
    // g = dy where y > 0 (ReLU; y = max(pre, 0) was kept), else g = dy in place; db = fp32 column
    // sums of g, row by row.
    float* db = db_sum_.data();
    std::fill(db, db + out_, 0.0f);
    if (relu_) {
      for (std::int64_t i = 0; i < n_; ++i) {
        const std::uint16_t* dy_row = dy + i * out_;
        const std::uint16_t* y_row = y + i * out_;
        std::uint16_t* g_row = g16_.data() + i * out_;
        for (std::int64_t j = 0; j < out_; ++j) {
          const bool passes = tensor::bf16_decode(y_row[j]) > 0.0f;
          g_row[j] = passes ? dy_row[j] : std::uint16_t{0};
          db[j] += tensor::bf16_decode(g_row[j]);
        }
      }
    } else {
      for (std::int64_t i = 0; i < n_; ++i) {
        const std::uint16_t* dy_row = dy + i * out_;
        for (std::int64_t j = 0; j < out_; ++j) db[j] += tensor::bf16_decode(dy_row[j]);
      }
      g_t_.set_data_handle(const_cast<std::uint16_t*>(dy));
      g_.set_data_handle(const_cast<std::uint16_t*>(dy));
    }
    tensor::bf16_encode(db_sum_.span(), {db_, static_cast<std::size_t>(out_)});
    x_.set_data_handle(const_cast<std::uint16_t*>(x));
    exec_.run(bwd_weights_, bwd_w_args_);
    if (dx != nullptr) {
      dx_.set_data_handle(dx);
      exec_.run(bwd_data_, bwd_data_args_);
    }
  }

 private:
  Executor& exec_;
  std::int64_t n_, out_;
  bool relu_;
  std::uint16_t *b_, *db_;
  lowsync::memory::TrackedBuffer<std::uint16_t> g16_;     // [N, out] the masked output gradient (ReLU only)
  lowsync::memory::TrackedBuffer<float> db_sum_, b_f32_;  // [out]; b_f32_ only if bf16 bias is refused
  dnnl::memory x_, y_, dx_, g_t_, g_;                      // g_t_, g_: g16_ (ReLU) or the dy passed in
  dnnl::primitive fwd_, bwd_weights_, bwd_data_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_w_args_, bwd_data_args_;
};

// rows_ > 0: a row-wise Linear over [rows_, in] per sample (one GEMM over batch * rows_ rows);
// rows_ == 0: the classic [in] -> [out] layer (mlp, cnn), whose shapes and names stay as they were.
class Linear final : public Layer {
 public:
  Linear(std::int64_t rows, std::int64_t in, std::int64_t out, bool relu, bool bias, ParamInit init)
      : rows_(rows), in_(in), out_(out), relu_(relu), bias_(bias), init_(init) {}
  std::string name() const override { return relu_ ? "linear+relu" : "linear"; }
  Shape input_shape() const override { return rows_ > 0 ? Shape{rows_, in_} : Shape{in_}; }
  Shape output_shape() const override { return rows_ > 0 ? Shape{rows_, out_} : Shape{out_}; }
  std::vector<ParamSpec> param_specs() const override {
    std::vector<ParamSpec> specs{{"weight", {out_, in_}, in_, init_}};
    const ParamInit bias_init = init_ == ParamInit::kaiming_uniform ? ParamInit::kaiming_uniform : ParamInit::zeros;
    if (bias_) specs.push_back({"bias", {out_}, in_, bias_init});
    return specs;
  }
  std::unique_ptr<LayerPlan> make_plan(int batch, Executor& exec, std::vector<float*> p,
                                       std::vector<float*> g) override {
    return std::make_unique<LinearPlan>(gemm_rows(batch), in_, out_, relu_, exec, p[0], bias_ ? p[1] : nullptr, g[0],
                                        bias_ ? g[1] : nullptr);
  }
  std::unique_ptr<LayerPlan16> make_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                           std::span<float> stage) override {
    if (!bias_) return Layer::make_plan16(batch, exec, t, stage);  // the 16-bit plans below need a bias
    if (t.params.size() != 2 || t.grads.size() != 2)
      fail("{}: native 16-bit plan needs weight and bias tensors, got {} params / {} grads", name(),
           t.params.size(), t.grads.size());
    if (t.bf16 && t.bf16_primitives) {
      try {
        return std::make_unique<Bf16LinearPlan16>(gemm_rows(batch), in_, out_, relu_, exec, t);
      } catch (const dnnl::error&) {  // refused by oneDNN / this CPU: stage W in fp32 below
      }
    }
    return std::make_unique<TiledLinearPlan16>(gemm_rows(batch), in_, out_, relu_, exec, t, stage);
  }
  // bf16 primitives: no staging. Otherwise tiled_stage_floats.
  std::size_t stage16_floats(int batch, bool bf16_primitives) const override {
    if (!bias_) return Layer::stage16_floats(batch, bf16_primitives);
    if (bf16_primitives && bf16_linear_supported(gemm_rows(batch), in_, out_, relu_)) return 0;
    return tiled_stage_floats(gemm_rows(batch), in_, out_);
  }
  double flops_per_sample() const override { return 2.0 * static_cast<double>(std::max<std::int64_t>(rows_, 1) * in_ * out_); }

 private:
  int gemm_rows(int batch) const { return batch * static_cast<int>(std::max<std::int64_t>(rows_, 1)); }

  std::int64_t rows_, in_, out_;
  bool relu_, bias_;
  ParamInit init_;
};

}  // namespace

std::unique_ptr<Layer> make_linear(std::int64_t in, std::int64_t out, bool relu) {
  if (in <= 0 || out <= 0) fail("linear layer needs positive sizes, got {} -> {}", in, out);
  return std::make_unique<Linear>(0, in, out, relu, true, ParamInit::kaiming_uniform);
}

std::unique_ptr<Layer> make_linear_rows(std::int64_t rows, std::int64_t in, std::int64_t out, bool bias, ParamInit init) {
  if (rows <= 0 || in <= 0 || out <= 0) fail("linear layer needs positive sizes, got [{}, {}] -> [{}, {}]", rows, in, rows, out);
  return std::make_unique<Linear>(rows, in, out, false, bias, init);
}

}  // namespace lowsync::layers
