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

// Y = Ba X Bb^T for one chunk: X [a, b] read from the tensor at chunk c, Y [a*b] written to out.
// Both products are axpy loops over contiguous rows (vectorisable without reassociation).
void forward_chunk(const TensorPlan& plan, const float* x, std::int64_t c, float* out, float* work) {
  const std::int64_t a = plan.chunk_rows, b = plan.chunk_cols;
  const float* ba = basis_for(a).forward.data();
  const float* bbt = basis_for(b).transposed.data();
  const float* block = x + chunk_origin(plan, c);
  // work[i, :] = sum_j X[i, j] * Bb^T[j, :]
  std::fill(work, work + a * b, 0.0f);
  for (std::int64_t i = 0; i < a; ++i) {
    float* row = work + i * b;
    for (std::int64_t j = 0; j < b; ++j) {
      const float xij = block[i * plan.cols + j];
      const float* brow = bbt + j * b;
      for (std::int64_t v = 0; v < b; ++v) row[v] += xij * brow[v];
    }
  }
  // out[u, :] = sum_i Ba[u, i] * work[i, :]
  std::fill(out, out + a * b, 0.0f);
  for (std::int64_t u = 0; u < a; ++u) {
    float* row = out + u * b;
    for (std::int64_t i = 0; i < a; ++i) {
      const float w = ba[u * a + i];
      const float* trow = work + i * b;
      for (std::int64_t v = 0; v < b; ++v) row[v] += w * trow[v];
    }
  }
}

// X = Ba^T Y Bb for one chunk: Y [a*b] -> the tensor block of chunk c in x.
void inverse_chunk(const TensorPlan& plan, const float* coeffs, std::int64_t c, float* x, float* work) {
  const std::int64_t a = plan.chunk_rows, b = plan.chunk_cols;
  const float* ba = basis_for(a).forward.data();
  const float* bb = basis_for(b).forward.data();
  // work[u, :] = sum_v Y[u, v] * Bb[v, :]
  std::fill(work, work + a * b, 0.0f);
  for (std::int64_t u = 0; u < a; ++u) {
    float* row = work + u * b;
    for (std::int64_t v = 0; v < b; ++v) {
      const float y = coeffs[u * b + v];
      const float* brow = bb + v * b;
      for (std::int64_t j = 0; j < b; ++j) row[j] += y * brow[j];
    }
  }
  // X[i, :] = sum_u Ba[u, i] * work[u, :]
  float* block = x + chunk_origin(plan, c);
  for (std::int64_t i = 0; i < a; ++i) {
    float* row = block + i * plan.cols;
    std::fill(row, row + b, 0.0f);
    for (std::int64_t u = 0; u < a; ++u) {
      const float w = ba[u * a + i];
      const float* srow = work + u * b;
      for (std::int64_t j = 0; j < b; ++j) row[j] += w * srow[j];
    }
  }
}

// Top-k of one chunk's coefficients [n]; idx/val [k] ascending by index. Each candidate is one
// u64 key: high half |x|'s bit pattern + 1 (monotonic for non-negative floats; NaN gets 0 so it
// ranks lowest), low half ~index (so on equal magnitude the lower index has the larger key).
// Larger key = preferred, a strict total order, so the selected set is unique.
void topk_chunk(const float* coeffs, std::int64_t n, std::int64_t k, std::int64_t* idx, float* val,
                std::vector<std::uint64_t>& keys) {
  keys.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float m = std::fabs(coeffs[i]);
    const std::uint64_t high = std::isnan(m) ? 0u : std::uint64_t{std::bit_cast<std::uint32_t>(m)} + 1u;
    keys[static_cast<std::size_t>(i)] = (high << 32) | (0xffffffffu - static_cast<std::uint32_t>(i));
  }
  if (k < n) std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<>());
  for (std::int64_t s = 0; s < k; ++s)
    idx[s] = 0xffffffffu - static_cast<std::uint32_t>(keys[static_cast<std::size_t>(s)] & 0xffffffffu);
  std::sort(idx, idx + k);
  for (std::int64_t s = 0; s < k; ++s) val[s] = coeffs[idx[s]];
}

// delta block of chunk c -= sum_s val[s] * (Ba[u_s, :]^T outer Bb[v_s, :]); the k products are
// summed into work first, then subtracted once.
void subtract_chunk(const TensorPlan& plan, const std::int64_t* idx, const float* val, std::int64_t c,
                    float* delta, float* work) {
  const std::int64_t a = plan.chunk_rows, b = plan.chunk_cols;
  const float* ba = basis_for(a).forward.data();
  const float* bb = basis_for(b).forward.data();
  std::fill(work, work + a * b, 0.0f);
  for (std::int64_t s = 0; s < plan.k; ++s) {
    const std::int64_t u = idx[s] / b, v = idx[s] % b;
    const float* brow = bb + v * b;
    for (std::int64_t i = 0; i < a; ++i) {
      const float w = val[s] * ba[u * a + i];
      float* row = work + i * b;
      for (std::int64_t j = 0; j < b; ++j) row[j] += w * brow[j];
    }
  }
  float* block = delta + chunk_origin(plan, c);
  for (std::int64_t i = 0; i < a; ++i) {
    float* row = block + i * plan.cols;
    const float* wrow = work + i * b;
    for (std::int64_t j = 0; j < b; ++j) row[j] -= wrow[j];
  }
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
  std::vector<float> work(static_cast<std::size_t>(plan.chunk_elems()));
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c)
    forward_chunk(plan, x.data(), c, coeffs.data() + c * plan.chunk_elems(), work.data());
}

void dct_inverse(const TensorPlan& plan, std::span<const float> coeffs, std::span<float> x) {
  const auto n = static_cast<std::size_t>(plan.numel());
  check_size("dct_inverse input", coeffs.size(), n);
  check_size("dct_inverse output", x.size(), n);
  if (plan.dense) {
    std::copy(coeffs.begin(), coeffs.end(), x.begin());
    return;
  }
  std::vector<float> work(static_cast<std::size_t>(plan.chunk_elems()));
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c)
    inverse_chunk(plan, coeffs.data() + c * plan.chunk_elems(), c, x.data(), work.data());
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
  std::vector<float> work(static_cast<std::size_t>(plan.chunk_elems()));
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c)
    subtract_chunk(plan, idx.data() + c * plan.k, val.data() + c * plan.k, c, delta.data(), work.data());
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

void decode_average(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> gathered,
                    std::size_t block_bytes, std::size_t offset, int world_size, std::span<float> q) {
  check_wire(plan, wire);
  if (world_size < 1) fail("DeMo: decode needs world_size >= 1, got {}", world_size);
  const std::size_t tensor_bytes = tensor_payload_bytes(plan, wire);
  if (offset + tensor_bytes > block_bytes)
    fail("DeMo: tensor bytes [{}, {}) run past the block of {}", offset, offset + tensor_bytes, block_bytes);
  check_size("decode gathered bytes", gathered.size(), block_bytes * static_cast<std::size_t>(world_size));
  check_size("decode output", q.size(), static_cast<std::size_t>(plan.numel()));
  const std::size_t ib = dtype_bytes(wire.index), vb = dtype_bytes(wire.value);
  const std::int64_t n = plan.chunk_elems(), k = plan.k;
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

  std::vector<float> sum(static_cast<std::size_t>(n)), work(static_cast<std::size_t>(n));
  std::vector<std::int32_t> contributors(static_cast<std::size_t>(n));
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c) {
    std::fill(sum.begin(), sum.end(), 0.0f);
    std::fill(contributors.begin(), contributors.end(), 0);
    for (int r = 0; r < world_size; ++r) {
      const std::uint8_t* base = gathered.data() + static_cast<std::size_t>(r) * block_bytes + offset;
      const std::uint8_t* indices = base + static_cast<std::size_t>(c * k) * ib;
      const std::uint8_t* values = base + kept * ib + static_cast<std::size_t>(c * k) * vb;
      for (std::int64_t s = 0; s < k; ++s) {
        const std::int64_t p = read_index(wire.index, indices + s * ib);
        if (p < 0 || p >= n) fail("DeMo: rank {} sent coefficient index {} outside chunk of {}", r, p, n);
        sum[static_cast<std::size_t>(p)] += read_value(wire.value, values + s * vb);
        ++contributors[static_cast<std::size_t>(p)];
      }
    }
    for (std::size_t p = 0; p < sum.size(); ++p)
      sum[p] = contributors[p] > 0 ? sum[p] / static_cast<float>(contributors[p]) : 0.0f;
    inverse_chunk(plan, sum.data(), c, q.data(), work.data());
  }
}

Codec::Codec(const std::vector<std::vector<std::int64_t>>& shapes, std::int64_t chunk_target,
             std::int64_t topk, WireFormat wire)
    : wire_(wire) {
  std::int64_t largest_chunk = 1;
  for (const auto& shape : shapes) {
    const TensorPlan plan = plan_tensor(shape, chunk_target, topk);
    check_wire(plan, wire);
    plans_.push_back(plan);
    offsets_.push_back(block_bytes_);
    block_bytes_ += tensor_payload_bytes(plan, wire);
    coeffs_sent_ += plan.coeffs_sent();
    if (!plan.dense) largest_chunk = std::max(largest_chunk, plan.chunk_elems());
  }
  chunk_.resize(static_cast<std::size_t>(largest_chunk));
  work_.resize(static_cast<std::size_t>(largest_chunk));
  idx_.resize(static_cast<std::size_t>(largest_chunk));
  val_.resize(static_cast<std::size_t>(largest_chunk));
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

  for (std::int64_t c = 0; c < p.num_chunks(); ++c) {
    forward_chunk(p, delta.data(), c, chunk_.data(), work_.data());
    topk_chunk(chunk_.data(), p.chunk_elems(), p.k, idx_.data(), val_.data(), keys_);
    std::uint8_t* indices = base + static_cast<std::size_t>(c * p.k) * ib;
    std::uint8_t* values = base + kept * ib + static_cast<std::size_t>(c * p.k) * vb;
    for (std::int64_t s = 0; s < p.k; ++s) {
      val_[static_cast<std::size_t>(s)] = wire_round(val_[static_cast<std::size_t>(s)], wire_.value);
      write_index(wire_.index, indices + s * ib, idx_[static_cast<std::size_t>(s)]);
      write_value(wire_.value, values + s * vb, val_[static_cast<std::size_t>(s)]);
    }
    // The chunk's forward transform read delta before this subtraction touches it (chunks are
    // disjoint blocks of delta), so encoding chunk by chunk equals transform-all-then-subtract.
    subtract_chunk(p, idx_.data(), val_.data(), c, delta.data(), work_.data());
  }
}

void Codec::decode(std::size_t t, std::span<const std::uint8_t> gathered, int world_size,
                   std::span<float> q) const {
  decode_average(plan(t), wire_, gathered, block_bytes_, offsets_.at(t), world_size, q);
}

}  // namespace lowsync::sync::demo
