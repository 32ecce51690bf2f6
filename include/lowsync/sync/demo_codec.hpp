// DeMo codec (ALGORITHMS.md section 5): chunked orthonormal DCT-II, per-chunk top-k by magnitude,
// the wire packing of one rank's (index, value) pairs for all tensors of a step, and the decode
// that averages the K ranks' values over contributors and transforms back. Pure CPU code with
// fixed loop orders, so every rank computes bit-identical results from identical inputs.
#pragma once

#include "lowsync/core/dtype.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace lowsync::sync::demo {

// Largest divisor of n that is <= target; n itself when n <= target (n, target >= 1).
std::int64_t chunk_size(std::int64_t n, std::int64_t target);

// How one parameter tensor is chunked. Every tensor is viewed as 2-D rows x cols:
//   [n] -> 1 x n,  [R, C] -> R x C,  [out, in, kh, kw] -> out x (in*kh*kw),  [] -> 1 x 1.
// A 1-D tensor is thus a 2-D one with chunk_rows = 1 (a length-1 DCT is the identity), which is
// exactly the reference's (n/c, c) view. Coefficients live in chunk layout
// (rows/a, cols/b, a, b): chunk c = (i / a) * (cols / b) + j / b, position u * b + v inside it.
// Dense rule: a tensor goes dense when a dimension longer than 1 gets chunk size 1 (no divisor
// in [2, target], e.g. a prime > target), since its "sparse" message would not be smaller than
// the tensor. Dense tensors skip the DCT and send all values (spec: mean of lr*g, then sign).
struct TensorPlan {
  std::int64_t rows = 1;
  std::int64_t cols = 1;
  std::int64_t chunk_rows = 1;  // a | rows
  std::int64_t chunk_cols = 1;  // b | cols
  std::int64_t k = 1;           // coefficients kept per chunk, min(topk, a*b) >= 1 (sparse only)
  bool dense = false;

  std::int64_t numel() const { return rows * cols; }
  std::int64_t chunk_elems() const { return chunk_rows * chunk_cols; }
  std::int64_t num_chunks() const { return numel() / chunk_elems(); }
  // Values one rank sends per step for this tensor.
  std::int64_t coeffs_sent() const { return dense ? numel() : num_chunks() * k; }
};

// shape: the tensor's dimensions (ParamInfo.shape); chunk_target, topk >= 1.
TensorPlan plan_tensor(std::span<const std::int64_t> shape, std::int64_t chunk_target,
                       std::int64_t topk);

// Orthonormal DCT-II basis [n, n], row k = s_k cos(pi (2i+1) k / (2n)), s_0 = sqrt(1/n),
// s_k = sqrt(2/n); values computed in fp64, stored fp32. Built once per n and kept for the
// life of the process (thread-safe); the reference stays valid. Forward X = B x, inverse x = B^T X.
const std::vector<float>& dct_basis(std::int64_t n);

// x [rows, cols] (tensor layout) -> coeffs [rows/a, cols/b, a, b] (chunk layout). Dense plans copy.
void dct_forward(const TensorPlan& plan, std::span<const float> x, std::span<float> coeffs);
// coeffs (chunk layout) -> x (tensor layout); exact inverse of dct_forward up to rounding.
void dct_inverse(const TensorPlan& plan, std::span<const float> coeffs, std::span<float> x);

// Per chunk, the k coefficients of largest |value| (ties: lower index wins), listed in ascending
// index order. coeffs: chunk layout [numel]; idx, val: [num_chunks, k], idx inside the chunk.
void topk_encode(const TensorPlan& plan, std::span<const float> coeffs, std::span<std::int64_t> idx,
                 std::span<float> val);

// Error feedback (step 5): delta -= IDCT(sparse(idx, val)), delta in tensor layout [numel].
// Accumulates only the k selected basis products per chunk (cheaper than a dense inverse).
void subtract_sparse_inverse(const TensorPlan& plan, std::span<const std::int64_t> idx,
                             std::span<const float> val, std::span<float> delta);

// Wire format: index as u16 or i64, value as f32 or bf16 (round-to-nearest-even).
struct WireFormat {
  DType index = DType::u16;
  DType value = DType::f32;
};
// Throws lowsync::Error when the types are not one of the above, or a u16 index cannot address
// the plan's chunk (chunk_elems > 65536).
void check_wire(const TensorPlan& plan, WireFormat wire);

// Exact bytes of one tensor in one rank's block. Sparse: idx [num_chunks*k] then val
// [num_chunks*k]; dense: val [numel]. Native byte order (all ranks run the same build).
std::size_t tensor_payload_bytes(const TensorPlan& plan, WireFormat wire);

// value rounded to what the wire carries (identity for f32, bf16 round-trip for bf16).
float wire_round(float value, DType value_type);

// Sparse plans: idx/val [num_chunks*k]; dense plans: idx empty, val [numel].
// out / in: exactly tensor_payload_bytes(plan, wire) bytes.
void pack_tensor(const TensorPlan& plan, WireFormat wire, std::span<const std::int64_t> idx,
                 std::span<const float> val, std::span<std::uint8_t> out);
void unpack_tensor(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> in,
                   std::span<std::int64_t> idx, std::span<float> val);

// Step 7 for one tensor: gathered holds world_size blocks of block_bytes each in rank order
// 0..K-1; this tensor's bytes start at `offset` inside every block. At each coefficient the
// values of the ranks that selected it are summed in rank order and divided by their count
// (positions nobody chose stay 0; dense tensors: every rank contributes), then inverse DCT.
// q: [numel] in tensor layout.
void decode_average(const TensorPlan& plan, WireFormat wire, std::span<const std::uint8_t> gathered,
                    std::size_t block_bytes, std::size_t offset, int world_size, std::span<float> q);

// Scratch of the sparse decode and of the error feedback, kept so that a step allocates nothing.
// sum and count are all zero between chunks (each chunk resets the positions it touched).
struct DecodeScratch {
  std::vector<float> sum;           // [chunk elems] per-position sums of the ranks' values
  std::vector<std::int32_t> count;  // [chunk elems] contributors per position
  std::vector<std::uint64_t> mask;  // [chunk elems / 64] bitmap of the touched positions
  std::vector<std::int32_t> pos;    // [K*k] positions touched in the chunk, ascending
  std::vector<float> y;             // [K*k] their averages
  std::vector<float> work;          // [chunk elems] transform intermediate
  std::vector<float> at;            // [a*a] rows of the basis the sparse inverse needs
  std::vector<std::int32_t> rows;   // [a] which rows of Y hold a value
  // Grows (never shrinks) every buffer to the given sizes.
  void reserve(std::int64_t chunk_elems, std::int64_t chunk_rows, std::int64_t touched);
};

// All tensors of one step: the plans, where each tensor sits in a rank's block, and the
// per-chunk encode (steps 4-5) and decode (step 7). Scratch is a few chunks, held here, so a
// Codec is not safe to share between threads.
class Codec {
 public:
  // shapes: one per tensor, in the order the block lays them out.
  Codec(const std::vector<std::vector<std::int64_t>>& shapes, std::int64_t chunk_target,
        std::int64_t topk, WireFormat wire);

  std::size_t num_tensors() const { return plans_.size(); }
  const TensorPlan& plan(std::size_t t) const { return plans_.at(t); }
  WireFormat wire() const { return wire_; }
  std::size_t offset(std::size_t t) const { return offsets_.at(t); }
  std::size_t block_bytes() const { return block_bytes_; }  // what one rank sends per step
  std::int64_t coeffs_sent() const { return coeffs_sent_; }  // per rank per step

  // Steps 4-5 for tensor t: DCT of delta [numel] chunk by chunk, top-k, values rounded to the
  // wire type and written into block (block_bytes() bytes) at offset(t); then delta minus the
  // IDCT of exactly what was written (so bf16 rounding error stays in delta too).
  void encode(std::size_t t, std::span<float> delta, std::span<std::uint8_t> block);
  // Step 7 for tensor t over world_size gathered blocks; q: [numel] in tensor layout.
  void decode(std::size_t t, std::span<const std::uint8_t> gathered, int world_size,
              std::span<float> q);
  // Steps 7-8 fused: decode as above and apply params -= lr * sign(q) (sign(0) = 0) chunk by
  // chunk while each block of q is in cache; the same bits as decode then a separate pass.
  // params: [numel] in tensor layout; q: [numel] scratch (holds the decoded q afterwards).
  void decode_sign_step(std::size_t t, std::span<const std::uint8_t> gathered, int world_size,
                        std::span<float> q, std::span<float> params, float lr);

 private:
  std::vector<TensorPlan> plans_;
  std::vector<std::size_t> offsets_;
  WireFormat wire_;
  std::size_t block_bytes_ = 0;
  std::int64_t coeffs_sent_ = 0;
  std::vector<float> chunk_;            // one chunk's coefficients
  std::vector<float> block_work_;       // [a, cols] one row block's X Bb^T (batched forward DCT)
  std::vector<float> block_coeffs_;     // [a, cols] one row block's coefficients, tensor layout
  std::vector<std::int32_t> idx_;       // one chunk's kept indices
  std::vector<float> val_;              // one chunk's kept values
  std::vector<std::uint64_t> heap_;     // [chunk elems] top-k: candidate keys of one chunk
  std::vector<std::uint32_t> high_;     // [chunk elems + blocks] top-k: |coefficient| keys, block maxima
  DecodeScratch scratch_;
};

}  // namespace lowsync::sync::demo
