// DeMo codec (ALGORITHMS.md section 5): chunked orthonormal DCT-II as two small matrix products
// per chunk, per-chunk top-k, wire packing and the contributor-averaging decode. All loops run in
// a fixed order (chunks ascending, ranks 0..K-1, rows then columns), so the decoded Q is
// bit-identical on every rank given the same gathered bytes.
#include "lowsync/sync/demo_codec.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/tensor/half.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <numbers>
#include <type_traits>

namespace lowsync::sync::demo {
namespace {

struct Basis {
  std::vector<float> forward;     // [n, n], row k = k-th basis function
  std::vector<float> transposed;  // [n, n], forward^T
};

const Basis& basis_for(std::int64_t n) {
  // unique_ptr keeps each Basis at a fixed address while the map grows.
  static std::mutex mutex;
  static std::map<std::int64_t, std::unique_ptr<Basis>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[n];
  if (!slot) {
    if (n < 1) fail("DeMo: DCT size must be >= 1, got {}", n);
    auto basis = std::make_unique<Basis>();
    basis->forward.resize(static_cast<std::size_t>(n * n));
    basis->transposed.resize(static_cast<std::size_t>(n * n));
    const double nd = static_cast<double>(n);
    for (std::int64_t k = 0; k < n; ++k) {
      const double scale = k == 0 ? std::sqrt(1.0 / nd) : std::sqrt(2.0 / nd);
      for (std::int64_t i = 0; i < n; ++i) {
        const double angle = std::numbers::pi * static_cast<double>((2 * i + 1) * k) / (2.0 * nd);
        const auto value = static_cast<float>(scale * std::cos(angle));
        basis->forward[static_cast<std::size_t>(k * n + i)] = value;
        basis->transposed[static_cast<std::size_t>(i * n + k)] = value;
      }
    }
    slot = std::move(basis);
  }
  return *slot;
}

// Where chunk c's block starts in the tensor layout [rows, cols].
std::int64_t chunk_origin(const TensorPlan& plan, std::int64_t c) {
  const std::int64_t chunks_per_row = plan.cols / plan.chunk_cols;
  return (c / chunks_per_row) * plan.chunk_rows * plan.cols + (c % chunks_per_row) * plan.chunk_cols;
}

// ---- small matrix product --------------------------------------------------------------------
// C[m, n] = A[m, kk] B[kk, n] (or C -= that), row-major with leading dimensions. Every element of
// C is ((0 + a_0 b_0) + a_1 b_1) + ... in kk order, each a multiply then an add (the build uses
// -ffp-contract=off), whatever the tile it falls in: the bits depend neither on the tiling nor on
// the vector width, so ranks on different ISAs still decode the same Q. Register tiles of up to
// 4 rows x 64 columns (four 16-float vectors: one AVX-512 register each, two AVX2 halves where
// the build has no AVX-512) reuse each loaded row of B four times.
using V8 = float __attribute__((vector_size(32)));
using V16 = float __attribute__((vector_size(64)));

enum class Store { assign, subtract };

template <class V, int MR, int NV>
inline void gemm_tile(std::int64_t kk, const float* a, std::int64_t lda, const float* b,
                      std::int64_t ldb, float* c, std::int64_t ldc, Store store) {
  constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(float));
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = V{};
  for (std::int64_t k = 0; k < kk; ++k) {
    V brow[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&brow[j], b + k * ldb + kLanes * j, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      const float ar = a[r * lda + k];
      for (int j = 0; j < NV; ++j) acc[r][j] += ar * brow[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) {
      float* dst = c + r * ldc + kLanes * j;
      if (store == Store::assign) {
        std::memcpy(dst, &acc[r][j], sizeof(V));
      } else {
        V old;
        std::memcpy(&old, dst, sizeof(V));
        old -= acc[r][j];
        std::memcpy(dst, &old, sizeof(V));
      }
    }
}

template <int MR>
void gemm_rows(std::int64_t n, std::int64_t kk, const float* a, std::int64_t lda, const float* b,
               std::int64_t ldb, float* c, std::int64_t ldc, Store store) {
  std::int64_t j = 0;
  for (; j + 64 <= n; j += 64) gemm_tile<V16, MR, 4>(kk, a, lda, b + j, ldb, c + j, ldc, store);
  if (j + 32 <= n) {
    gemm_tile<V16, MR, 2>(kk, a, lda, b + j, ldb, c + j, ldc, store);
    j += 32;
  }
  if (j + 16 <= n) {
    gemm_tile<V16, MR, 1>(kk, a, lda, b + j, ldb, c + j, ldc, store);
    j += 16;
  }
  if (j + 8 <= n) {
    gemm_tile<V8, MR, 1>(kk, a, lda, b + j, ldb, c + j, ldc, store);
    j += 8;
  }
  for (; j < n; ++j)  // scalar tail, same summation order
    for (int r = 0; r < MR; ++r) {
      float acc = 0.0f;
      for (std::int64_t k = 0; k < kk; ++k) acc += a[r * lda + k] * b[k * ldb + j];
      float& dst = c[r * ldc + j];
      dst = store == Store::assign ? acc : dst - acc;
    }
}

void gemm(std::int64_t m, std::int64_t n, std::int64_t kk, const float* a, std::int64_t lda,
          const float* b, std::int64_t ldb, float* c, std::int64_t ldc, Store store) {
  std::int64_t i = 0;
  for (; i + 4 <= m; i += 4) gemm_rows<4>(n, kk, a + i * lda, lda, b, ldb, c + i * ldc, ldc, store);
  for (; i < m; ++i) gemm_rows<1>(n, kk, a + i * lda, lda, b, ldb, c + i * ldc, ldc, store);
}

// The bases one tensor needs, looked up once per call rather than per chunk.
struct Bases {
  const float* ba;   // [a, a]
  const float* bat;  // [a, a] = ba^T
  const float* bb;   // [b, b]
  const float* bbt;  // [b, b] = bb^T
};

Bases bases_for(const TensorPlan& plan) {
  const Basis& a = basis_for(plan.chunk_rows);
  const Basis& b = basis_for(plan.chunk_cols);
  return {a.forward.data(), a.transposed.data(), b.forward.data(), b.transposed.data()};
}

// Y = Ba X Bb^T for one chunk: X [a, b] read from the tensor at chunk c, Y [a*b] written to out.
void forward_chunk(const TensorPlan& plan, const Bases& bs, const float* x, std::int64_t c, float* out,
                   float* work) {
  const std::int64_t a = plan.chunk_rows, b = plan.chunk_cols;
  gemm(a, b, b, x + chunk_origin(plan, c), plan.cols, bs.bbt, b, work, b, Store::assign);  // X Bb^T
  gemm(a, b, a, bs.ba, a, work, b, out, b, Store::assign);                                 // Ba (.)
}

// Y = Ba X Bb^T for every chunk of row block `block` (tensor rows block*a .. block*a + a - 1) as
// two batched products: the block [a, cols] read as [a*cols/b, b] rows times Bb^T (all its chunks
// in one GEMM), then Ba times the whole [a, cols] result. work, coeffs: [a, cols] in tensor layout
// (coefficient (u, v) of chunk j at row u, column j*b + v). Each coefficient is summed in the
// same order as forward_chunk's, so the bits are those of the chunk-by-chunk transform.
void forward_row_block(const TensorPlan& plan, const Bases& bs, const float* x, std::int64_t block, float* work,
                       float* coeffs) {
  const std::int64_t a = plan.chunk_rows, b = plan.chunk_cols, cols = plan.cols;
  const float* xb = x + block * a * cols;
  gemm(a * cols / b, b, b, xb, b, bs.bbt, b, work, b, Store::assign);  // every chunk's X Bb^T
  gemm(a, cols, a, bs.ba, a, work, cols, coeffs, cols, Store::assign);  // Ba (.) for the whole block
}

// X = Ba^T Y Bb for one chunk: Y [a*b] -> the tensor block of chunk c in x (dense Y).
void inverse_chunk(const TensorPlan& plan, const Bases& bs, const float* coeffs, std::int64_t c, float* x,
                   float* work) {
  const std::int64_t a = plan.chunk_rows, b = plan.chunk_cols;
  gemm(a, b, b, coeffs, b, bs.bb, b, work, b, Store::assign);                                // Y Bb
  gemm(a, b, a, bs.bat, a, work, b, x + chunk_origin(plan, c), plan.cols, Store::assign);   // Ba^T (.)
}

// Sparse inverse of one chunk: Y has the m nonzeros (pos[s], y[s]) with pos ascending; the block
// of chunk c gets Ba^T Y Bb (assign) or loses it (subtract, error feedback). Only the rows u of Y
// that hold a value are transformed: work[t, :] = Y[u_t, :] Bb, then block = Ba[u_., :]^T work.
// work: [a, b] scratch, at: [a, a] scratch.
void sparse_inverse_chunk(const TensorPlan& plan, const Bases& bs, const std::int32_t* pos, const float* y,
                          std::int64_t m, std::int64_t c, float* x, float* work, float* at,
                          std::int32_t* rows, Store store) {
  const std::int64_t a = plan.chunk_rows, b = plan.chunk_cols;
  std::int64_t nu = 0, last_u = -1;
  std::int64_t u = 0, row_start = 0;  // positions ascend: walk the rows instead of dividing
  float* w = work;
  for (std::int64_t s = 0; s < m; ++s) {
    while (pos[s] >= row_start + b) ++u, row_start += b;
    const std::int64_t v = pos[s] - row_start;
    if (u != last_u) {
      w = work + nu * b;
      std::fill(w, w + b, 0.0f);
      rows[nu++] = static_cast<std::int32_t>(u);
      last_u = u;
    }
    const float ys = y[s];
    const float* brow = bs.bb + v * b;
    for (std::int64_t j = 0; j < b; ++j) w[j] += ys * brow[j];
  }
  for (std::int64_t i = 0; i < a; ++i)
    for (std::int64_t t = 0; t < nu; ++t) at[i * nu + t] = bs.ba[rows[t] * a + i];
  gemm(a, b, nu, at, nu, work, b, x + chunk_origin(plan, c), plan.cols, store);
}

// Top-k of one chunk's coefficients [n]; idx/val [k] ascending by index. Each candidate is one
// u64 key: high half |x|'s bit pattern + 1 (monotonic for non-negative floats; NaN gets 0 so it
// ranks lowest), low half ~index (so on equal magnitude the lower index has the larger key).
// Larger key = preferred, a strict total order, so the selected set is unique. Selection: the
// maxima of blocks of 16 give a bound, the k-th largest block maximum (std::nth_element over
// n/16 values), that is <= the k-th largest magnitude (k blocks each hold a value >= it); only
// the values >= the bound become candidate keys (a few times k), and std::nth_element over them
// picks the k largest keys. Any selection of the k largest keys gives the same set.
inline std::uint32_t topk_high(float x) {
  const std::uint32_t m = std::bit_cast<std::uint32_t>(x) & 0x7fffffffu;
  return m > 0x7f800000u ? 0u : m + 1u;  // NaN lowest
}
inline std::uint64_t topk_key(std::uint32_t high, std::int64_t i) {
  return (std::uint64_t{high} << 32) | (0xffffffffu - static_cast<std::uint32_t>(i));
}

constexpr std::int64_t kTopkBlock = 16;

template <typename Index>
void topk_chunk(const float* coeffs, std::int64_t n, std::int64_t k, Index* idx, float* val,
                std::vector<std::uint64_t>& keys, std::vector<std::uint32_t>& high) {
  const std::int64_t blocks = (n + kTopkBlock - 1) / kTopkBlock;
  if (high.size() < static_cast<std::size_t>(n + 2 * blocks)) high.resize(static_cast<std::size_t>(n + 2 * blocks));
  if (keys.size() < static_cast<std::size_t>(n)) keys.resize(static_cast<std::size_t>(n));
  std::uint32_t* h = high.data();
  std::uint32_t* block_max = h + n;       // [blocks]
  std::uint32_t* order = block_max + blocks;  // [blocks] scratch for nth_element
  for (std::int64_t i = 0; i < n; ++i) h[i] = topk_high(coeffs[i]);
  std::uint32_t bound = 0;  // every value >= 0: all candidates unless the blocks give a bound
  if (blocks >= k) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t first = b * kTopkBlock, last = std::min(n, first + kTopkBlock);
      std::uint32_t m = 0;
      for (std::int64_t i = first; i < last; ++i) m = std::max(m, h[i]);
      block_max[b] = order[b] = m;
    }
    std::nth_element(order, order + (k - 1), order + blocks, std::greater<>());
    bound = order[k - 1];
  }
  std::int64_t m = 0;
  std::uint64_t* cand = keys.data();
  for (std::int64_t b = 0; b < blocks; ++b) {
    if (blocks >= k && block_max[b] < bound) continue;
    const std::int64_t first = b * kTopkBlock, last = std::min(n, first + kTopkBlock);
    for (std::int64_t i = first; i < last; ++i)
      if (h[i] >= bound) cand[m++] = topk_key(h[i], i);
  }
  std::nth_element(cand, cand + (k - 1), cand + m, std::greater<>());
  for (std::int64_t s = 0; s < k; ++s)
    idx[s] = static_cast<Index>(0xffffffffu - static_cast<std::uint32_t>(cand[s] & 0xffffffffu));
  std::sort(idx, idx + k);
  for (std::int64_t s = 0; s < k; ++s) val[s] = coeffs[idx[s]];
}

void write_index(DType type, std::uint8_t* dst, std::int64_t value) {
  if (type == DType::u16) {
    const auto v = static_cast<std::uint16_t>(value);
    std::memcpy(dst, &v, sizeof v);
  } else {
    std::memcpy(dst, &value, sizeof value);
  }
}

std::int64_t read_index(DType type, const std::uint8_t* src) {
  if (type == DType::u16) {
    std::uint16_t v = 0;
    std::memcpy(&v, src, sizeof v);
    return v;
  }
  std::int64_t v = 0;
  std::memcpy(&v, src, sizeof v);
  return v;
}

void write_value(DType type, std::uint8_t* dst, float value) {
  if (type == DType::bf16) {
    const tensor::Bf16Bits h = tensor::bf16_encode(value);
    std::memcpy(dst, &h, sizeof h);
  } else {
    std::memcpy(dst, &value, sizeof value);
  }
}

float read_value(DType type, const std::uint8_t* src) {
  if (type == DType::bf16) {
    tensor::Bf16Bits h = 0;
    std::memcpy(&h, src, sizeof h);
    return tensor::bf16_decode(h);
  }
  float v = 0.0f;
  std::memcpy(&v, src, sizeof v);
  return v;
}

void check_size(const char* what, std::size_t got, std::size_t want) {
  if (got != want) fail("DeMo: {} has {} elements, expected {}", what, got, want);
}

}  // namespace

std::int64_t chunk_size(std::int64_t n, std::int64_t target) {
  if (n < 1 || target < 1) fail("DeMo: chunk_size needs n >= 1 and target >= 1, got n={} target={}", n, target);
  if (n <= target) return n;
  for (std::int64_t c = target; c > 1; --c)
    if (n % c == 0) return c;
  return 1;
}

TensorPlan plan_tensor(std::span<const std::int64_t> shape, std::int64_t chunk_target,
                       std::int64_t topk) {
  if (chunk_target < 1) fail("DeMo: optim.demo.chunk must be >= 1, got {}", chunk_target);
  if (topk < 1) fail("DeMo: optim.demo.topk must be >= 1, got {}", topk);
  for (const std::int64_t d : shape)
    if (d < 1) fail("DeMo: tensor dimension must be >= 1, got {}", d);
  TensorPlan plan;
  if (shape.size() == 1) {
    plan.cols = shape[0];
  } else if (shape.size() >= 2) {
    plan.rows = shape[0];
    for (std::size_t i = 1; i < shape.size(); ++i) plan.cols *= shape[i];
  }
  plan.chunk_rows = chunk_size(plan.rows, chunk_target);
  plan.chunk_cols = chunk_size(plan.cols, chunk_target);
  plan.dense = (plan.rows > 1 && plan.chunk_rows == 1) || (plan.cols > 1 && plan.chunk_cols == 1);
  if (plan.dense) {
    // One "chunk" = the whole tensor, so num_chunks() = 1 and coeffs_sent() = numel.
    plan.chunk_rows = plan.rows;
    plan.chunk_cols = plan.cols;
    plan.k = plan.numel();
  } else {
    if (plan.chunk_elems() > (std::int64_t{1} << 31))
      fail("DeMo: chunk of {} coefficients is too large; lower optim.demo.chunk", plan.chunk_elems());
    plan.k = std::clamp<std::int64_t>(topk, 1, plan.chunk_elems());
  }
  return plan;
}

const std::vector<float>& dct_basis(std::int64_t n) { return basis_for(n).forward; }

void dct_forward(const TensorPlan& plan, std::span<const float> x, std::span<float> coeffs) {
  const auto n = static_cast<std::size_t>(plan.numel());
  check_size("dct_forward input", x.size(), n);
  check_size("dct_forward output", coeffs.size(), n);
  if (plan.dense) {
    std::copy(x.begin(), x.end(), coeffs.begin());
    return;
  }
  const Bases bs = bases_for(plan);
  std::vector<float> work(static_cast<std::size_t>(plan.chunk_elems()));
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c)
    forward_chunk(plan, bs, x.data(), c, coeffs.data() + c * plan.chunk_elems(), work.data());
}

void dct_inverse(const TensorPlan& plan, std::span<const float> coeffs, std::span<float> x) {
  const auto n = static_cast<std::size_t>(plan.numel());
  check_size("dct_inverse input", coeffs.size(), n);
  check_size("dct_inverse output", x.size(), n);
  if (plan.dense) {
    std::copy(coeffs.begin(), coeffs.end(), x.begin());
    return;
  }
  const Bases bs = bases_for(plan);
  std::vector<float> work(static_cast<std::size_t>(plan.chunk_elems()));
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c)
    inverse_chunk(plan, bs, coeffs.data() + c * plan.chunk_elems(), c, x.data(), work.data());
}

void topk_encode(const TensorPlan& plan, std::span<const float> coeffs, std::span<std::int64_t> idx,
                 std::span<float> val) {
  if (plan.dense) fail("DeMo: topk_encode called on a dense tensor ({} x {})", plan.rows, plan.cols);
  check_size("topk_encode input", coeffs.size(), static_cast<std::size_t>(plan.numel()));
  const auto kept = static_cast<std::size_t>(plan.num_chunks() * plan.k);
  check_size("topk_encode indices", idx.size(), kept);
  check_size("topk_encode values", val.size(), kept);
  std::vector<std::uint64_t> keys;
  std::vector<std::uint32_t> high;
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c)
    topk_chunk(coeffs.data() + c * plan.chunk_elems(), plan.chunk_elems(), plan.k,
               idx.data() + c * plan.k, val.data() + c * plan.k, keys, high);
}

void subtract_sparse_inverse(const TensorPlan& plan, std::span<const std::int64_t> idx,
                             std::span<const float> val, std::span<float> delta) {
  if (plan.dense) fail("DeMo: subtract_sparse_inverse called on a dense tensor ({} x {})", plan.rows, plan.cols);
  const auto kept = static_cast<std::size_t>(plan.num_chunks() * plan.k);
  check_size("subtract_sparse_inverse indices", idx.size(), kept);
  check_size("subtract_sparse_inverse values", val.size(), kept);
  check_size("subtract_sparse_inverse delta", delta.size(), static_cast<std::size_t>(plan.numel()));
  for (const std::int64_t i : idx)
    if (i < 0 || i >= plan.chunk_elems()) fail("DeMo: coefficient index {} outside chunk of {}", i, plan.chunk_elems());
  const Bases bs = bases_for(plan);
  const auto k = static_cast<std::size_t>(plan.k);
  std::vector<float> work(static_cast<std::size_t>(plan.chunk_elems()));
  std::vector<float> at(static_cast<std::size_t>(plan.chunk_rows * plan.chunk_rows)), y(k);
  std::vector<std::int32_t> rows(static_cast<std::size_t>(plan.chunk_rows)), pos(k), order(k);
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c) {
    const std::size_t first = static_cast<std::size_t>(c) * k;
    std::iota(order.begin(), order.end(), 0);  // the sparse inverse wants ascending positions
    std::stable_sort(order.begin(), order.end(),
                     [&](std::int32_t l, std::int32_t r) { return idx[first + l] < idx[first + r]; });
    for (std::size_t s = 0; s < k; ++s) {
      pos[s] = static_cast<std::int32_t>(idx[first + order[s]]);
      y[s] = val[first + order[s]];
    }
    sparse_inverse_chunk(plan, bs, pos.data(), y.data(), plan.k, c, delta.data(), work.data(), at.data(),
                         rows.data(), Store::subtract);
  }
}

void check_wire(const TensorPlan& plan, WireFormat wire) {
  if (wire.index != DType::u16 && wire.index != DType::i64)
    fail("DeMo: optim.demo.index must be u16 or i64, got {}", dtype_name(wire.index));
  if (wire.value != DType::f32 && wire.value != DType::bf16)
    fail("DeMo: optim.demo.value must be fp32 or bf16, got {}", dtype_name(wire.value));
  if (!plan.dense && wire.index == DType::u16 && plan.chunk_elems() > 65536)
    fail("DeMo: u16 indices cannot address a chunk of {} coefficients; use optim.demo.index=i64",
         plan.chunk_elems());
}

std::size_t tensor_payload_bytes(const TensorPlan& plan, WireFormat wire) {
  const auto sent = static_cast<std::size_t>(plan.coeffs_sent());
  if (plan.dense) return sent * dtype_bytes(wire.value);
  return sent * (dtype_bytes(wire.index) + dtype_bytes(wire.value));
}

float wire_round(float value, DType value_type) {
  return value_type == DType::bf16 ? tensor::bf16_round(value) : value;
}

void pack_tensor(const TensorPlan& plan, WireFormat wire, std::span<const std::int64_t> idx,
                 std::span<const float> val, std::span<std::uint8_t> out) {
  check_wire(plan, wire);
  const auto sent = static_cast<std::size_t>(plan.coeffs_sent());
  check_size("pack_tensor values", val.size(), sent);
  check_size("pack_tensor indices", idx.size(), plan.dense ? 0 : sent);
  check_size("pack_tensor output bytes", out.size(), tensor_payload_bytes(plan, wire));
  const std::size_t ib = dtype_bytes(wire.index), vb = dtype_bytes(wire.value);
  std::uint8_t* values = out.data() + (plan.dense ? 0 : sent * ib);
  for (std::size_t s = 0; s < idx.size(); ++s) write_index(wire.index, out.data() + s * ib, idx[s]);
  for (std::size_t s = 0; s < sent; ++s) write_value(wire.value, values + s * vb, val[s]);
}

void unpack_tensor(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> in,
                   std::span<std::int64_t> idx, std::span<float> val) {
  check_wire(plan, wire);
  const auto sent = static_cast<std::size_t>(plan.coeffs_sent());
  check_size("unpack_tensor values", val.size(), sent);
  check_size("unpack_tensor indices", idx.size(), plan.dense ? 0 : sent);
  check_size("unpack_tensor input bytes", in.size(), tensor_payload_bytes(plan, wire));
  const std::size_t ib = dtype_bytes(wire.index), vb = dtype_bytes(wire.value);
  const std::uint8_t* values = in.data() + (plan.dense ? 0 : sent * ib);
  for (std::size_t s = 0; s < idx.size(); ++s) idx[s] = read_index(wire.index, in.data() + s * ib);
  for (std::size_t s = 0; s < sent; ++s) val[s] = read_value(wire.value, values + s * vb);
}

namespace {

void check_decode(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> gathered,
                  std::size_t block_bytes, std::size_t offset, int world_size, std::span<float> q) {
  check_wire(plan, wire);
  if (world_size < 1) fail("DeMo: decode needs world_size >= 1, got {}", world_size);
  const std::size_t tensor_bytes = tensor_payload_bytes(plan, wire);
  if (offset + tensor_bytes > block_bytes)
    fail("DeMo: tensor bytes [{}, {}) run past the block of {}", offset, offset + tensor_bytes, block_bytes);
  check_size("decode gathered bytes", gathered.size(), block_bytes * static_cast<std::size_t>(world_size));
  check_size("decode output", q.size(), static_cast<std::size_t>(plan.numel()));
}

// Wire element types as C++ types, so the decode's inner loop has no per-element type switch.
template <typename T>
inline T load(const std::uint8_t* src) {
  T v;
  std::memcpy(&v, src, sizeof v);
  return v;
}
template <typename V>
inline float value_of(const std::uint8_t* src) {
  if constexpr (std::is_same_v<V, tensor::Bf16Bits>)
    return tensor::bf16_decode(load<tensor::Bf16Bits>(src));
  else
    return load<float>(src);
}

// Step 7 of a sparse tensor, chunk by chunk: sums per position in rank order 0..K-1 over the
// positions some rank chose (only those are touched), divided by their contributor count, then
// the sparse inverse DCT over the touched positions in ascending order. Arguments checked.
// on_chunk(c) runs right after chunk c's block of q is written (the fused sign step).
template <typename I, typename V, typename OnChunk>
void decode_sparse_typed(const TensorPlan& plan, std::span<const std::uint8_t> gathered, std::size_t block_bytes,
                         std::size_t offset, int world_size, std::span<float> q, DecodeScratch& sc,
                         OnChunk&& on_chunk) {
  constexpr std::size_t ib = sizeof(I), vb = sizeof(V);
  const std::int64_t n = plan.chunk_elems(), k = plan.k;
  const auto kept = static_cast<std::size_t>(plan.coeffs_sent());
  const Bases bs = bases_for(plan);
  float* sum = sc.sum.data();
  std::int32_t* count = sc.count.data();
  std::int32_t* pos = sc.pos.data();
  std::uint64_t* mask = sc.mask.data();  // all zero between chunks, like sum and count
  const std::int64_t words = (n + 63) / 64;
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c) {
    std::int64_t m = 0;
    for (int r = 0; r < world_size; ++r) {
      const std::uint8_t* base = gathered.data() + static_cast<std::size_t>(r) * block_bytes + offset;
      const std::uint8_t* indices = base + static_cast<std::size_t>(c * k) * ib;
      const std::uint8_t* values = base + kept * ib + static_cast<std::size_t>(c * k) * vb;
      for (std::int64_t s = 0; s < k; ++s) {
        const auto p = static_cast<std::int64_t>(load<I>(indices + s * ib));
        if (p < 0 || p >= n) {
          std::fill(sc.sum.begin(), sc.sum.end(), 0.0f);  // keep the all-zero invariant
          std::fill(sc.count.begin(), sc.count.end(), 0);
          std::fill(sc.mask.begin(), sc.mask.end(), 0);
          fail("DeMo: rank {} sent coefficient index {} outside chunk of {}", r, p, n);
        }
        if (count[p]++ == 0) mask[p >> 6] |= std::uint64_t{1} << (p & 63), ++m;
        sum[p] += value_of<V>(values + s * vb);
      }
    }
    // The touched positions in ascending order from the bitmap (no sort), averaged and reset.
    std::int64_t t = 0;
    for (std::int64_t word = 0; word < words && t < m; ++word) {
      for (std::uint64_t bits = mask[word]; bits != 0; bits &= bits - 1) {
        const auto p = static_cast<std::int32_t>(word * 64 + std::countr_zero(bits));
        pos[t] = p;
        sc.y[static_cast<std::size_t>(t++)] = sum[p] / static_cast<float>(count[p]);
        sum[p] = 0.0f;
        count[p] = 0;
      }
      mask[word] = 0;
    }
    sparse_inverse_chunk(plan, bs, pos, sc.y.data(), m, c, q.data(), sc.work.data(), sc.at.data(),
                         sc.rows.data(), Store::assign);
    on_chunk(c);
  }
}

template <typename OnChunk>
void decode_sparse(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> gathered,
                   std::size_t block_bytes, std::size_t offset, int world_size, std::span<float> q,
                   DecodeScratch& sc, OnChunk&& on_chunk) {
  const bool u16 = wire.index == DType::u16, bf16 = wire.value == DType::bf16;
  if (u16 && bf16)
    decode_sparse_typed<std::uint16_t, tensor::Bf16Bits>(plan, gathered, block_bytes, offset, world_size, q, sc, on_chunk);
  else if (u16)
    decode_sparse_typed<std::uint16_t, float>(plan, gathered, block_bytes, offset, world_size, q, sc, on_chunk);
  else if (bf16)
    decode_sparse_typed<std::int64_t, tensor::Bf16Bits>(plan, gathered, block_bytes, offset, world_size, q, sc, on_chunk);
  else
    decode_sparse_typed<std::int64_t, float>(plan, gathered, block_bytes, offset, world_size, q, sc, on_chunk);
}

void no_op(std::int64_t) {}

// Step 8 on n values: p -= lr * sign(q), sign(0) = 0 (no move); the strategy's formula.
inline void sign_step(float* p, const float* q, std::int64_t n, float lr) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float sign = static_cast<float>((q[i] > 0.0f) - (q[i] < 0.0f));
    p[i] -= lr * sign;
  }
}

}  // namespace

void DecodeScratch::reserve(std::int64_t chunk_elems, std::int64_t chunk_rows, std::int64_t touched) {
  auto grow = [](auto& v, std::int64_t size) {
    if (v.size() < static_cast<std::size_t>(size)) v.resize(static_cast<std::size_t>(size));
  };
  grow(sum, chunk_elems);
  grow(count, chunk_elems);
  grow(mask, (chunk_elems + 63) / 64);
  grow(work, chunk_elems);
  grow(pos, touched);
  grow(y, touched);
  grow(at, chunk_rows * chunk_rows);
  grow(rows, chunk_rows);
}

void decode_average(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> gathered,
                    std::size_t block_bytes, std::size_t offset, int world_size, std::span<float> q) {
  check_decode(plan, wire, gathered, block_bytes, offset, world_size, q);
  const std::size_t vb = dtype_bytes(wire.value);
  const auto kept = static_cast<std::size_t>(plan.coeffs_sent());

  if (plan.dense) {  // every rank contributes every position: plain mean in rank order
    std::fill(q.begin(), q.end(), 0.0f);
    for (int r = 0; r < world_size; ++r) {
      const std::uint8_t* values = gathered.data() + static_cast<std::size_t>(r) * block_bytes + offset;
      for (std::size_t i = 0; i < kept; ++i) q[i] += read_value(wire.value, values + i * vb);
    }
    const auto divisor = static_cast<float>(world_size);
    for (float& v : q) v /= divisor;
    return;
  }

  DecodeScratch scratch;
  scratch.reserve(plan.chunk_elems(), plan.chunk_rows, plan.k * world_size);
  decode_sparse(plan, wire, gathered, block_bytes, offset, world_size, q, scratch, no_op);
}

Codec::Codec(const std::vector<std::vector<std::int64_t>>& shapes, std::int64_t chunk_target,
             std::int64_t topk, WireFormat wire)
    : wire_(wire) {
  std::int64_t largest_chunk = 1, largest_rows = 1, largest_k = 1, largest_block = 1;
  for (const auto& shape : shapes) {
    const TensorPlan plan = plan_tensor(shape, chunk_target, topk);
    check_wire(plan, wire);
    plans_.push_back(plan);
    offsets_.push_back(block_bytes_);
    block_bytes_ += tensor_payload_bytes(plan, wire);
    coeffs_sent_ += plan.coeffs_sent();
    if (!plan.dense) {
      largest_chunk = std::max(largest_chunk, plan.chunk_elems());
      largest_rows = std::max(largest_rows, plan.chunk_rows);
      largest_k = std::max(largest_k, plan.k);
      largest_block = std::max(largest_block, plan.chunk_rows * plan.cols);
    }
  }
  chunk_.resize(static_cast<std::size_t>(largest_chunk));
  block_work_.resize(static_cast<std::size_t>(largest_block));
  block_coeffs_.resize(static_cast<std::size_t>(largest_block));
  high_.resize(static_cast<std::size_t>(largest_chunk + 2 * (largest_chunk / kTopkBlock + 1)));
  heap_.resize(static_cast<std::size_t>(largest_chunk));
  idx_.resize(static_cast<std::size_t>(largest_k));
  val_.resize(static_cast<std::size_t>(largest_k));
  // Decode scratch for any world size up to what the first decode asks for (grown there once).
  scratch_.reserve(largest_chunk, largest_rows, largest_k);
}

void Codec::encode(std::size_t t, std::span<float> delta, std::span<std::uint8_t> block) {
  const TensorPlan& p = plan(t);
  check_size("DeMo encode delta", delta.size(), static_cast<std::size_t>(p.numel()));
  check_size("DeMo encode block bytes", block.size(), block_bytes_);
  const std::size_t ib = dtype_bytes(wire_.index), vb = dtype_bytes(wire_.value);
  const auto kept = static_cast<std::size_t>(p.coeffs_sent());
  std::uint8_t* base = block.data() + offsets_[t];

  if (p.dense) {  // send delta itself; what is sent leaves delta (0 for fp32, rounding for bf16)
    for (std::size_t i = 0; i < kept; ++i) {
      const float sent = wire_round(delta[i], wire_.value);
      write_value(wire_.value, base + i * vb, sent);
      delta[i] -= sent;
    }
    return;
  }

  const Bases bs = bases_for(p);
  const std::int64_t a = p.chunk_rows, b = p.chunk_cols, per_row_block = p.cols / b;
  for (std::int64_t c = 0; c < p.num_chunks(); ++c) {
    const std::int64_t j = c % per_row_block;
    // Each row block's chunks are transformed together when its first chunk comes up; the
    // subtractions below touch only chunks already transformed.
    if (j == 0) forward_row_block(p, bs, delta.data(), c / per_row_block, block_work_.data(), block_coeffs_.data());
    for (std::int64_t u = 0; u < a; ++u)  // chunk j into chunk layout [a, b]
      std::memcpy(chunk_.data() + u * b, block_coeffs_.data() + u * p.cols + j * b, static_cast<std::size_t>(b) * sizeof(float));
    topk_chunk(chunk_.data(), p.chunk_elems(), p.k, idx_.data(), val_.data(), heap_, high_);
    std::uint8_t* indices = base + static_cast<std::size_t>(c * p.k) * ib;
    std::uint8_t* values = base + kept * ib + static_cast<std::size_t>(c * p.k) * vb;
    for (std::int64_t s = 0; s < p.k; ++s) {
      val_[static_cast<std::size_t>(s)] = wire_round(val_[static_cast<std::size_t>(s)], wire_.value);
      write_index(wire_.index, indices + s * ib, idx_[static_cast<std::size_t>(s)]);
      write_value(wire_.value, values + s * vb, val_[static_cast<std::size_t>(s)]);
    }
    // The chunk's forward transform read delta before this subtraction touches it (chunks are
    // disjoint blocks of delta), so encoding chunk by chunk equals transform-all-then-subtract.
    sparse_inverse_chunk(p, bs, idx_.data(), val_.data(), p.k, c, delta.data(), scratch_.work.data(),
                         scratch_.at.data(), scratch_.rows.data(), Store::subtract);
  }
}

void Codec::decode(std::size_t t, std::span<const std::uint8_t> gathered, int world_size,
                   std::span<float> q) {
  const TensorPlan& p = plan(t);
  if (p.dense) {
    decode_average(p, wire_, gathered, block_bytes_, offsets_.at(t), world_size, q);
    return;
  }
  check_decode(p, wire_, gathered, block_bytes_, offsets_.at(t), world_size, q);
  scratch_.reserve(p.chunk_elems(), p.chunk_rows, p.k * world_size);
  decode_sparse(p, wire_, gathered, block_bytes_, offsets_.at(t), world_size, q, scratch_, no_op);
}

void Codec::decode_sign_step(std::size_t t, std::span<const std::uint8_t> gathered, int world_size,
                             std::span<float> q, std::span<float> params, float lr) {
  const TensorPlan& p = plan(t);
  check_size("DeMo sign step parameters", params.size(), static_cast<std::size_t>(p.numel()));
  if (p.dense) {
    decode(t, gathered, world_size, q);
    sign_step(params.data(), q.data(), p.numel(), lr);
    return;
  }
  check_decode(p, wire_, gathered, block_bytes_, offsets_.at(t), world_size, q);
  scratch_.reserve(p.chunk_elems(), p.chunk_rows, p.k * world_size);
  const std::int64_t a = p.chunk_rows, b = p.chunk_cols;
  // Each chunk's block of q is still in cache when its rows are applied.
  decode_sparse(p, wire_, gathered, block_bytes_, offsets_.at(t), world_size, q, scratch_, [&](std::int64_t c) {
    const std::int64_t origin = chunk_origin(p, c);
    for (std::int64_t u = 0; u < a; ++u)
      sign_step(params.data() + origin + u * p.cols, q.data() + origin + u * p.cols, b, lr);
  });
}

}  // namespace lowsync::sync::demo
