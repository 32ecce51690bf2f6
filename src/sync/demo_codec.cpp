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
// 4 rows x 32 columns reuse each loaded row of B four times.
using V8 = float __attribute__((vector_size(32)));

enum class Store { assign, subtract };

template <int MR, int NV>
inline void gemm_tile(std::int64_t kk, const float* a, std::int64_t lda, const float* b,
                      std::int64_t ldb, float* c, std::int64_t ldc, Store store) {
  V8 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = V8{};
  for (std::int64_t k = 0; k < kk; ++k) {
    V8 brow[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&brow[j], b + k * ldb + 8 * j, sizeof(V8));
    for (int r = 0; r < MR; ++r) {
      const float ar = a[r * lda + k];
      for (int j = 0; j < NV; ++j) acc[r][j] += ar * brow[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) {
      float* dst = c + r * ldc + 8 * j;
      if (store == Store::assign) {
        std::memcpy(dst, &acc[r][j], sizeof(V8));
      } else {
        V8 old;
        std::memcpy(&old, dst, sizeof(V8));
        old -= acc[r][j];
        std::memcpy(dst, &old, sizeof(V8));
      }
    }
}

template <int MR>
void gemm_rows(std::int64_t n, std::int64_t kk, const float* a, std::int64_t lda, const float* b,
               std::int64_t ldb, float* c, std::int64_t ldc, Store store) {
  std::int64_t j = 0;
  for (; j + 32 <= n; j += 32) gemm_tile<MR, 4>(kk, a, lda, b + j, ldb, c + j, ldc, store);
  if (j + 16 <= n) {
    gemm_tile<MR, 2>(kk, a, lda, b + j, ldb, c + j, ldc, store);
    j += 16;
  }
  if (j + 8 <= n) {
    gemm_tile<MR, 1>(kk, a, lda, b + j, ldb, c + j, ldc, store);
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
  float* w = work;
  for (std::int64_t s = 0; s < m; ++s) {
    const std::int64_t u = pos[s] / b, v = pos[s] % b;
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
// Larger key = preferred, a strict total order, so the selected set is unique. One pass with a
// min-heap of the k best keys so far; most candidates fail the cheap magnitude test at the root.
inline std::uint64_t topk_key(float x, std::int64_t i) {
  const float m = std::fabs(x);
  const std::uint64_t high = std::isnan(m) ? 0u : std::uint64_t{std::bit_cast<std::uint32_t>(m)} + 1u;
  return (high << 32) | (0xffffffffu - static_cast<std::uint32_t>(i));
}

template <typename Index>
void topk_chunk(const float* coeffs, std::int64_t n, std::int64_t k, Index* idx, float* val,
                std::vector<std::uint64_t>& heap) {
  heap.resize(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < k; ++i) heap[static_cast<std::size_t>(i)] = topk_key(coeffs[i], i);
  std::make_heap(heap.begin(), heap.end(), std::greater<>());  // root = smallest kept key
  for (std::int64_t i = k; i < n; ++i) {
    const std::uint64_t key = topk_key(coeffs[i], i);
    if (key > heap.front()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      heap.back() = key;
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  }
  for (std::int64_t s = 0; s < k; ++s)
    idx[s] = static_cast<Index>(0xffffffffu - static_cast<std::uint32_t>(heap[static_cast<std::size_t>(s)] & 0xffffffffu));
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
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c)
    topk_chunk(coeffs.data() + c * plan.chunk_elems(), plan.chunk_elems(), plan.k,
               idx.data() + c * plan.k, val.data() + c * plan.k, keys);
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

// Step 7 of a sparse tensor, chunk by chunk: sums per position in rank order 0..K-1 over the
// positions some rank chose (only those are touched), divided by their contributor count, then
// the sparse inverse DCT over the touched positions in ascending order. Arguments checked.
void decode_sparse(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> gathered,
                   std::size_t block_bytes, std::size_t offset, int world_size, std::span<float> q,
                   DecodeScratch& sc) {
  const std::size_t ib = dtype_bytes(wire.index), vb = dtype_bytes(wire.value);
  const std::int64_t n = plan.chunk_elems(), k = plan.k;
  const auto kept = static_cast<std::size_t>(plan.coeffs_sent());
  const Bases bs = bases_for(plan);
  float* sum = sc.sum.data();
  std::int32_t* count = sc.count.data();
  std::int32_t* pos = sc.pos.data();
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c) {
    std::int64_t m = 0;
    for (int r = 0; r < world_size; ++r) {
      const std::uint8_t* base = gathered.data() + static_cast<std::size_t>(r) * block_bytes + offset;
      const std::uint8_t* indices = base + static_cast<std::size_t>(c * k) * ib;
      const std::uint8_t* values = base + kept * ib + static_cast<std::size_t>(c * k) * vb;
      for (std::int64_t s = 0; s < k; ++s) {
        const std::int64_t p = read_index(wire.index, indices + s * ib);
        if (p < 0 || p >= n) {
          for (std::int64_t t = 0; t < m; ++t) sum[pos[t]] = 0.0f, count[pos[t]] = 0;  // keep the invariant
          fail("DeMo: rank {} sent coefficient index {} outside chunk of {}", r, p, n);
        }
        if (count[p]++ == 0) pos[m++] = static_cast<std::int32_t>(p);
        sum[p] += read_value(wire.value, values + s * vb);
      }
    }
    std::sort(pos, pos + m);
    for (std::int64_t t = 0; t < m; ++t) {
      const std::int32_t p = pos[t];
      sc.y[static_cast<std::size_t>(t)] = sum[p] / static_cast<float>(count[p]);
      sum[p] = 0.0f;
      count[p] = 0;
    }
    sparse_inverse_chunk(plan, bs, pos, sc.y.data(), m, c, q.data(), sc.work.data(), sc.at.data(),
                         sc.rows.data(), Store::assign);
  }
}

}  // namespace

void DecodeScratch::reserve(std::int64_t chunk_elems, std::int64_t chunk_rows, std::int64_t touched) {
  auto grow = [](auto& v, std::int64_t size) {
    if (v.size() < static_cast<std::size_t>(size)) v.resize(static_cast<std::size_t>(size));
  };
  grow(sum, chunk_elems);
  grow(count, chunk_elems);
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
  decode_sparse(plan, wire, gathered, block_bytes, offset, world_size, q, scratch);
}

Codec::Codec(const std::vector<std::vector<std::int64_t>>& shapes, std::int64_t chunk_target,
             std::int64_t topk, WireFormat wire)
    : wire_(wire) {
  std::int64_t largest_chunk = 1, largest_rows = 1, largest_k = 1;
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
    }
  }
  chunk_.resize(static_cast<std::size_t>(largest_chunk));
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
  for (std::int64_t c = 0; c < p.num_chunks(); ++c) {
    forward_chunk(p, bs, delta.data(), c, chunk_.data(), scratch_.work.data());
    topk_chunk(chunk_.data(), p.chunk_elems(), p.k, idx_.data(), val_.data(), heap_);
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
  decode_sparse(p, wire_, gathered, block_bytes_, offsets_.at(t), world_size, q, scratch_);
}

}  // namespace lowsync::sync::demo
