// DeMo codec (ALGORITHMS.md section 5) against tests/support/reference_demo.hpp: chunk rule,
// DCT basis and chunk layout against the naive cosine formula, top-k ties, error feedback,
// wire packing for every index/value type, and the contributor-averaging decode.
#include "lowsync/sync/demo_codec.hpp"

#include "lowsync/core/error.hpp"
#include "lowsync/tensor/half.hpp"

#include "../../support/reference_demo.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace lowsync::sync::demo {
namespace {

namespace ref = lowsync::reference;
using Shape = std::vector<std::int64_t>;

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(gen);
  return x;
}

std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }

TEST(DemoChunk, LargestDivisorUpToTarget) {
  for (std::int64_t n = 1; n <= 300; ++n)
    for (std::int64_t target = 1; target <= 70; ++target)
      ASSERT_EQ(chunk_size(n, target), ref::demo_chunk(n, target)) << "n=" << n << " target=" << target;
  EXPECT_EQ(chunk_size(784, 64), 56);
  EXPECT_EQ(chunk_size(800, 64), 50);
  EXPECT_EQ(chunk_size(10, 64), 10);
  EXPECT_EQ(chunk_size(67, 64), 1);
  EXPECT_THROW(chunk_size(0, 64), Error);
}

TEST(DemoPlan, ShapesAndDenseRule) {
  const TensorPlan bias = plan_tensor(Shape{10}, 64, 32);
  EXPECT_EQ(bias.rows, 1);
  EXPECT_EQ(bias.cols, 10);
  EXPECT_EQ(bias.chunk_cols, 10);
  EXPECT_EQ(bias.k, 10);  // topk clamped to the chunk
  EXPECT_FALSE(bias.dense);

  const TensorPlan fc = plan_tensor(Shape{512, 784}, 64, 32);
  EXPECT_EQ(fc.chunk_rows, 64);
  EXPECT_EQ(fc.chunk_cols, 56);
  EXPECT_EQ(fc.num_chunks(), 8 * 14);
  EXPECT_EQ(fc.coeffs_sent(), 8 * 14 * 32);

  const TensorPlan conv = plan_tensor(Shape{64, 32, 5, 5}, 64, 32);  // -> 64 x 800
  EXPECT_EQ(conv.rows, 64);
  EXPECT_EQ(conv.cols, 800);
  EXPECT_EQ(conv.chunk_cols, 50);
  EXPECT_FALSE(conv.dense);

  EXPECT_TRUE(plan_tensor(Shape{67}, 64, 32).dense);         // prime > target
  EXPECT_TRUE(plan_tensor(Shape{67, 64}, 64, 32).dense);     // one prime dimension is enough
  EXPECT_FALSE(plan_tensor(Shape{1, 64}, 64, 32).dense);     // size-1 dimension is fine
  EXPECT_FALSE(plan_tensor(Shape{134}, 64, 32).dense);       // 134 = 2 * 67 -> chunk 2
  EXPECT_EQ(plan_tensor(Shape{67}, 64, 32).coeffs_sent(), 67);
  const TensorPlan scalar = plan_tensor(Shape{}, 64, 32);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.k, 1);
  EXPECT_THROW(plan_tensor(Shape{4, 0}, 64, 32), Error);
}

TEST(DemoDct, BasisIsOrthonormalAndMatchesFormula) {
  for (const std::int64_t n : {1, 2, 3, 7, 8, 25, 50, 56, 64}) {
    const std::vector<float>& basis = dct_basis(n);
    ASSERT_EQ(basis.size(), static_cast<std::size_t>(n * n));
    EXPECT_EQ(&basis, &dct_basis(n)) << "basis must be cached";
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        double dot = 0.0;
        for (std::int64_t m = 0; m < n; ++m)
          dot += static_cast<double>(basis[i * n + m]) * basis[j * n + m];
        EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-6) << "n=" << n << " (" << i << "," << j << ")";
        EXPECT_NEAR(basis[i * n + j], ref::dct_weight(n, i, j), 1e-7);
      }
  }
}

TEST(DemoDct, OneDimensionalMatchesNaiveFormulaPerChunk) {
  const TensorPlan plan = plan_tensor(Shape{96}, 32, 4);  // 3 chunks of 32
  ASSERT_EQ(plan.chunk_cols, 32);
  const std::vector<float> x = random_floats(96, 1);
  std::vector<float> coeffs(96);
  dct_forward(plan, x, coeffs);
  for (std::int64_t c = 0; c < 3; ++c)
    for (std::int64_t k = 0; k < 32; ++k) {
      double want = 0.0;  // X_k = s_k sum_n x_n cos(pi (2n+1) k / (2N))
      const double s = k == 0 ? std::sqrt(1.0 / 32) : std::sqrt(2.0 / 32);
      for (std::int64_t n = 0; n < 32; ++n)
        want += s * x[c * 32 + n] * std::cos(std::numbers::pi * (2 * n + 1) * k / 64.0);
      EXPECT_NEAR(coeffs[c * 32 + k], want, 1e-5) << "chunk " << c << " k " << k;
    }
}

TEST(DemoDct, TwoDimensionalChunkLayoutMatchesReference) {
  for (const Shape& shape : {Shape{12, 15}, Shape{4, 2, 3, 3}, Shape{1, 20}, Shape{9, 8}}) {
    const TensorPlan plan = plan_tensor(shape, 6, 3);
    const ref::DemoView view = ref::demo_view(shape, 6, 3);
    ASSERT_EQ(plan.chunk_rows, view.a);
    ASSERT_EQ(plan.chunk_cols, view.b);
    ASSERT_FALSE(plan.dense);
    const auto n = static_cast<std::size_t>(plan.numel());
    const std::vector<float> x = random_floats(n, 2);
    std::vector<float> coeffs(n), back(n);
    dct_forward(plan, x, coeffs);
    const std::vector<double> want = ref::demo_dct(view, to_double(x));
    for (std::size_t i = 0; i < n; ++i) EXPECT_NEAR(coeffs[i], want[i], 1e-5) << "coefficient " << i;
    dct_inverse(plan, coeffs, back);
    for (std::size_t i = 0; i < n; ++i) EXPECT_NEAR(back[i], x[i], 1e-5) << "element " << i;
  }
}

TEST(DemoDct, RoundTripOnModelShapesAndDenseIsIdentity) {
  for (const Shape& shape : {Shape{512}, Shape{256, 512}, Shape{32, 1, 5, 5}, Shape{67}}) {
    const TensorPlan plan = plan_tensor(shape, 64, 32);
    const auto n = static_cast<std::size_t>(plan.numel());
    const std::vector<float> x = random_floats(n, 3);
    std::vector<float> coeffs(n), back(n);
    dct_forward(plan, x, coeffs);
    dct_inverse(plan, coeffs, back);
    double energy_x = 0.0, energy_c = 0.0;  // Parseval: orthonormal transforms keep the norm
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(back[i], x[i], 1e-5);
      energy_x += static_cast<double>(x[i]) * x[i];
      energy_c += static_cast<double>(coeffs[i]) * coeffs[i];
    }
    EXPECT_NEAR(energy_c / energy_x, 1.0, 1e-5);
    if (plan.dense) {
      EXPECT_EQ(coeffs, x);
    }
  }
}

TEST(DemoTopk, TiesGoToTheLowerIndex) {
  const TensorPlan plan = plan_tensor(Shape{8}, 8, 2);
  const std::vector<float> coeffs = {1.0f, -3.0f, 3.0f, 0.5f, -3.0f, 2.0f, 0.0f, 3.0f};
  std::vector<std::int64_t> idx(2);
  std::vector<float> val(2);
  topk_encode(plan, coeffs, idx, val);
  EXPECT_EQ(idx, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(val, (std::vector<float>{-3.0f, 3.0f}));

  // Four magnitudes of 3 compete for three slots: index 7 loses.
  const TensorPlan plan3 = plan_tensor(Shape{8}, 8, 3);
  std::vector<std::int64_t> idx3(3);
  std::vector<float> val3(3);
  topk_encode(plan3, coeffs, idx3, val3);
  EXPECT_EQ(idx3, (std::vector<std::int64_t>{1, 2, 4}));
  // Five slots: all the 3s, then the 2 at index 5 (not the 1 at index 0).
  const TensorPlan plan5 = plan_tensor(Shape{8}, 8, 5);
  std::vector<std::int64_t> idx5(5);
  std::vector<float> val5(5);
  topk_encode(plan5, coeffs, idx5, val5);
  EXPECT_EQ(idx5, (std::vector<std::int64_t>{1, 2, 4, 5, 7}));
}

TEST(DemoTopk, MatchesSortReferenceWithManyTies) {
  // Values drawn from a handful of magnitudes so most chunks have ties at the cut.
  const TensorPlan plan = plan_tensor(Shape{16, 24}, 8, 5);
  const auto n = static_cast<std::size_t>(plan.numel());
  std::mt19937 gen(4);
  std::uniform_int_distribution<int> level(-3, 3);
  std::vector<float> coeffs(n);
  for (float& v : coeffs) v = 0.25f * static_cast<float>(level(gen));
  const auto kept = static_cast<std::size_t>(plan.num_chunks() * plan.k);
  std::vector<std::int64_t> idx(kept);
  std::vector<float> val(kept);
  topk_encode(plan, coeffs, idx, val);
  const std::int64_t chunk = plan.chunk_elems();
  for (std::int64_t c = 0; c < plan.num_chunks(); ++c) {
    const std::vector<std::int64_t> want = ref::topk_positions(coeffs.data() + c * chunk, chunk, plan.k);
    for (std::int64_t s = 0; s < plan.k; ++s) {
      EXPECT_EQ(idx[c * plan.k + s], want[s]) << "chunk " << c;
      EXPECT_EQ(val[c * plan.k + s], coeffs[c * chunk + want[s]]);
    }
  }
}

TEST(DemoTopk, ErrorFeedbackSubtractsInverseOfSparse) {
  const TensorPlan plan = plan_tensor(Shape{12, 20}, 6, 4);
  const auto n = static_cast<std::size_t>(plan.numel());
  const std::vector<float> delta0 = random_floats(n, 5);
  std::vector<float> coeffs(n);
  dct_forward(plan, delta0, coeffs);
  const auto kept = static_cast<std::size_t>(plan.num_chunks() * plan.k);
  std::vector<std::int64_t> idx(kept);
  std::vector<float> val(kept);
  topk_encode(plan, coeffs, idx, val);
  std::vector<float> delta = delta0;
  subtract_sparse_inverse(plan, idx, val, delta);

  std::vector<double> sparse(n, 0.0);
  for (std::size_t s = 0; s < kept; ++s)
    sparse[static_cast<std::size_t>((static_cast<std::int64_t>(s) / plan.k) * plan.chunk_elems() + idx[s])] = val[s];
  const std::vector<double> sent = ref::demo_idct(ref::demo_view(Shape{12, 20}, 6, 4), sparse);
  for (std::size_t i = 0; i < n; ++i) EXPECT_NEAR(delta[i], delta0[i] - sent[i], 1e-6);
  // What is left has none of the kept coefficients.
  std::vector<float> rest(n);
  dct_forward(plan, delta, rest);
  for (std::size_t s = 0; s < kept; ++s)
    EXPECT_NEAR(rest[static_cast<std::size_t>((static_cast<std::int64_t>(s) / plan.k) * plan.chunk_elems() + idx[s])], 0.0, 1e-6);
}

TEST(DemoWire, PackUnpackRoundTripEveryFormat) {
  const TensorPlan plan = plan_tensor(Shape{16, 24}, 8, 5);
  const TensorPlan dense = plan_tensor(Shape{2, 11}, 8, 5);
  ASSERT_TRUE(dense.dense);
  const auto kept = static_cast<std::size_t>(plan.coeffs_sent());
  std::vector<std::int64_t> idx(kept);
  for (std::size_t s = 0; s < kept; ++s) idx[s] = static_cast<std::int64_t>((s * 7) % 64);
  std::vector<float> val = random_floats(kept, 6);
  val[0] = 1.0f + 0x1p-8f;        // halfway between bf16 1 and 1 + 2^-7: to even (1)
  val[1] = 1.0f + 3 * 0x1p-8f;    // halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6)
  const std::vector<float> dense_val = random_floats(22, 7);
  for (const DType index : {DType::u16, DType::i64})
    for (const DType value : {DType::f32, DType::bf16}) {
      const WireFormat wire{index, value};
      const std::size_t per = dtype_bytes(index) + dtype_bytes(value);
      ASSERT_EQ(tensor_payload_bytes(plan, wire), kept * per);
      ASSERT_EQ(tensor_payload_bytes(dense, wire), 22 * dtype_bytes(value));
      std::vector<std::uint8_t> bytes(kept * per);
      pack_tensor(plan, wire, idx, val, bytes);
      std::vector<std::int64_t> idx_back(kept);
      std::vector<float> val_back(kept);
      unpack_tensor(plan, wire, bytes, idx_back, val_back);
      EXPECT_EQ(idx_back, idx);
      for (std::size_t s = 0; s < kept; ++s) {
        const float want = value == DType::bf16 ? tensor::bf16_decode(tensor::bf16_encode(val[s])) : val[s];
        EXPECT_EQ(val_back[s], want);
        EXPECT_EQ(wire_round(val[s], value), want);
      }
      if (value == DType::bf16) {
        EXPECT_EQ(val_back[0], 1.0f);
        EXPECT_EQ(val_back[1], 1.0f + 0x1p-6f);
        EXPECT_NEAR(val_back[2], val[2], std::fabs(val[2]) * 0x1p-8f);
      }
      std::vector<std::uint8_t> dense_bytes(22 * dtype_bytes(value));
      pack_tensor(dense, wire, {}, dense_val, dense_bytes);
      std::vector<float> dense_back(22);
      unpack_tensor(dense, wire, dense_bytes, {}, dense_back);
      for (std::size_t i = 0; i < 22; ++i) EXPECT_EQ(dense_back[i], wire_round(dense_val[i], value));
    }
  EXPECT_THROW(check_wire(plan_tensor(Shape{300, 300}, 300, 8), WireFormat{DType::u16, DType::f32}), Error);
  EXPECT_NO_THROW(check_wire(plan_tensor(Shape{300, 300}, 300, 8), WireFormat{DType::i64, DType::f32}));
  EXPECT_THROW(check_wire(plan, WireFormat{DType::i32, DType::f32}), Error);
}

// K ranks' (idx, val) for one tensor packed into blocks with `offset` leading bytes of another
// tensor, then decode_average against the reference table + naive inverse.
void check_decode(const Shape& shape, std::int64_t target, std::int64_t topk, WireFormat wire,
                  const std::vector<std::vector<std::int64_t>>& idx,
                  const std::vector<std::vector<float>>& val) {
  const TensorPlan plan = plan_tensor(shape, target, topk);
  const ref::DemoView view = ref::demo_view(shape, target, topk);
  const int world = static_cast<int>(idx.size());
  const std::size_t offset = 10, tensor_bytes = tensor_payload_bytes(plan, wire);
  const std::size_t block = offset + tensor_bytes + 6;
  std::vector<std::uint8_t> gathered(block * world, 0xAB);
  for (int r = 0; r < world; ++r)
    pack_tensor(plan, wire, idx[r], val[r], {gathered.data() + r * block + offset, tensor_bytes});
  std::vector<float> q(static_cast<std::size_t>(plan.numel()));
  decode_average(plan, wire, gathered, block, offset, world, q);

  std::vector<std::vector<double>> values(world);
  for (int r = 0; r < world; ++r)
    for (const float v : val[r]) values[r].push_back(wire_round(v, wire.value));
  const std::vector<double> want = ref::demo_idct(view, ref::average_contributors(view, idx, values));
  for (std::size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(q[i], want[i], 1e-6) << "element " << i;
}

TEST(DemoDecode, AveragesOnlyOverContributorsTinyHandMade) {
  // [8] with chunk 4, k 2: two chunks. Rank 0 and 2 share position 1 of chunk 0; position 3 of
  // chunk 1 is chosen by rank 1 alone; position 0 of chunk 1 by all three.
  const std::vector<std::vector<std::int64_t>> idx = {{0, 1, 0, 2}, {2, 3, 0, 3}, {1, 3, 0, 1}};
  const std::vector<std::vector<float>> val = {
      {1.0f, 2.0f, -1.0f, 4.0f}, {0.5f, -2.0f, 3.0f, 6.0f}, {4.0f, 1.0f, 2.0f, -0.5f}};
  check_decode(Shape{8}, 4, 2, WireFormat{DType::u16, DType::f32}, idx, val);

  // Hand-computed chunk-0 coefficients: pos0 = 1 (rank 0), pos1 = (2 + 4) / 2 = 3, pos2 = 0.5,
  // pos3 = (-2 + 1) / 2 = -0.5. The inverse DCT of [1, 3, 0.5, -0.5] is checked element-wise.
  const TensorPlan plan = plan_tensor(Shape{8}, 4, 2);
  const WireFormat wire{DType::i64, DType::f32};
  const std::size_t bytes = tensor_payload_bytes(plan, wire);
  std::vector<std::uint8_t> gathered(3 * bytes);
  for (int r = 0; r < 3; ++r) pack_tensor(plan, wire, idx[r], val[r], {gathered.data() + r * bytes, bytes});
  std::vector<float> q(8);
  decode_average(plan, wire, gathered, bytes, 0, 3, q);
  const double chunk0[4] = {1.0, 3.0, 0.5, -0.5};
  for (int i = 0; i < 4; ++i) {
    double x = 0.0;
    for (int k = 0; k < 4; ++k) x += chunk0[k] * ref::dct_weight(4, k, i);
    EXPECT_NEAR(q[i], x, 1e-6);
  }
}

TEST(DemoDecode, RandomSelectionsTwoDimensionalAndBf16) {
  const Shape shape{12, 20};
  const TensorPlan plan = plan_tensor(shape, 6, 4);
  const auto kept = static_cast<std::size_t>(plan.coeffs_sent());
  std::mt19937 gen(8);
  for (const int world : {1, 2, 4}) {
    std::vector<std::vector<std::int64_t>> idx(world);
    std::vector<std::vector<float>> val(world);
    for (int r = 0; r < world; ++r) {
      // Distinct positions per chunk from a small range, so ranks overlap often.
      for (std::int64_t c = 0; c < plan.num_chunks(); ++c) {
        std::vector<std::int64_t> pool = {0, 1, 2, 3, 4, 5, 6, 29};
        std::shuffle(pool.begin(), pool.end(), gen);
        pool.resize(static_cast<std::size_t>(plan.k));
        std::sort(pool.begin(), pool.end());
        idx[r].insert(idx[r].end(), pool.begin(), pool.end());
      }
      val[r] = random_floats(kept, 100 + static_cast<std::uint32_t>(r));
    }
    check_decode(shape, 6, 4, WireFormat{DType::u16, DType::f32}, idx, val);
    check_decode(shape, 6, 4, WireFormat{DType::i64, DType::bf16}, idx, val);
  }
}

TEST(DemoDecode, DenseTensorIsThePlainMean) {
  const Shape shape{2, 11};
  const TensorPlan plan = plan_tensor(shape, 8, 4);
  ASSERT_TRUE(plan.dense);
  const WireFormat wire{DType::u16, DType::f32};
  std::vector<std::vector<float>> val = {random_floats(22, 9), random_floats(22, 10), random_floats(22, 11)};
  std::vector<std::uint8_t> gathered(3 * 22 * 4);
  for (int r = 0; r < 3; ++r) pack_tensor(plan, wire, {}, val[r], {gathered.data() + r * 88, 88});
  std::vector<float> q(22);
  decode_average(plan, wire, gathered, 88, 0, 3, q);
  for (std::size_t i = 0; i < 22; ++i)
    EXPECT_NEAR(q[i], (static_cast<double>(val[0][i]) + val[1][i] + val[2][i]) / 3.0, 1e-6);
}

TEST(DemoCodec, EncodeEqualsTransformTopkPackSubtractAndLaysOutBlocks) {
  const std::vector<Shape> shapes = {Shape{12, 20}, Shape{20}, Shape{4, 2, 3, 3}, Shape{2, 11}, Shape{3}};
  for (const DType value : {DType::f32, DType::bf16}) {
    const WireFormat wire{DType::u16, value};
    Codec codec(shapes, 8, 4, wire);
    // Hand count: [12,20] a=6 b=5 -> 8 chunks; [20] b=5 -> 4; [4,18] a=4 b=6 -> 3; [3] k=3.
    EXPECT_EQ(codec.coeffs_sent(), 8 * 4 + 4 * 4 + 3 * 4 + 22 + 3);
    EXPECT_EQ(codec.block_bytes(), (8 * 4 + 4 * 4 + 3 * 4 + 3) * (2 + dtype_bytes(value)) + 22 * dtype_bytes(value));
    std::vector<std::uint8_t> block(codec.block_bytes());
    for (std::size_t t = 0; t < shapes.size(); ++t) {
      const TensorPlan& plan = codec.plan(t);
      const auto n = static_cast<std::size_t>(plan.numel());
      const std::vector<float> delta0 = random_floats(n, 20 + static_cast<std::uint32_t>(t));
      std::vector<float> delta = delta0;
      codec.encode(t, delta, block);

      // The same by the separate public steps.
      std::vector<float> want_delta = delta0;
      const auto kept = static_cast<std::size_t>(plan.coeffs_sent());
      std::vector<std::int64_t> idx(plan.dense ? 0 : kept);
      std::vector<float> val(kept);
      if (plan.dense) {
        for (std::size_t i = 0; i < n; ++i) {
          val[i] = wire_round(delta0[i], value);
          want_delta[i] -= val[i];
        }
      } else {
        std::vector<float> coeffs(n);
        dct_forward(plan, delta0, coeffs);
        topk_encode(plan, coeffs, idx, val);
        for (float& v : val) v = wire_round(v, value);
        subtract_sparse_inverse(plan, idx, val, want_delta);
      }
      std::vector<std::uint8_t> want_bytes(tensor_payload_bytes(plan, wire));
      pack_tensor(plan, wire, idx, val, want_bytes);
      EXPECT_EQ(std::memcmp(block.data() + codec.offset(t), want_bytes.data(), want_bytes.size()), 0)
          << "tensor " << t;
      EXPECT_EQ(delta, want_delta) << "tensor " << t;
    }
  }
  EXPECT_THROW(Codec({Shape{300, 300}}, 300, 8, WireFormat{DType::u16, DType::f32}), Error);
}

// Model-sized chunks (a = 64, b = 56 as fc1 of the MLP gets; b = 64; a = 10): the batched
// row-block transform of encode gives the bits of the chunk-by-chunk dct_forward + top-k +
// error feedback, through the 64-, 32-, 16- and 8-column tiles and the scalar tail.
TEST(DemoCodec, BatchedEncodeEqualsChunkByChunkOnModelSizedChunks) {
  const std::vector<Shape> shapes = {Shape{128, 112}, Shape{10, 256}, Shape{64, 3, 5, 5}, Shape{64, 60}};
  const WireFormat wire{DType::u16, DType::bf16};
  Codec codec(shapes, 64, 32, wire);
  std::vector<std::uint8_t> block(codec.block_bytes());
  for (std::size_t t = 0; t < shapes.size(); ++t) {
    const TensorPlan& plan = codec.plan(t);
    ASSERT_FALSE(plan.dense);
    const auto n = static_cast<std::size_t>(plan.numel());
    const std::vector<float> delta0 = random_floats(n, 40 + static_cast<std::uint32_t>(t));
    std::vector<float> delta = delta0, want_delta = delta0, coeffs(n);
    codec.encode(t, delta, block);
    const auto kept = static_cast<std::size_t>(plan.coeffs_sent());
    std::vector<std::int64_t> idx(kept);
    std::vector<float> val(kept);
    dct_forward(plan, delta0, coeffs);
    topk_encode(plan, coeffs, idx, val);
    for (float& v : val) v = wire_round(v, DType::bf16);
    subtract_sparse_inverse(plan, idx, val, want_delta);
    std::vector<std::uint8_t> want_bytes(tensor_payload_bytes(plan, wire));
    pack_tensor(plan, wire, idx, val, want_bytes);
    EXPECT_EQ(std::memcmp(block.data() + codec.offset(t), want_bytes.data(), want_bytes.size()), 0) << "tensor " << t;
    EXPECT_EQ(delta, want_delta) << "tensor " << t;
  }
}

// The fused decode + sign step gives the bits of decode followed by the strategy's separate
// p -= lr * sign(q), for sparse and dense tensors, both value types, 4 ranks' blocks.
TEST(DemoCodec, FusedSignStepEqualsDecodeThenSign) {
  const std::vector<Shape> shapes = {Shape{128, 112}, Shape{20}, Shape{2, 11}, Shape{10, 256}};
  for (const DType value : {DType::f32, DType::bf16}) {
    Codec codec(shapes, 64, 8, WireFormat{DType::u16, value});
    const int ranks = 4;
    const std::size_t bb = codec.block_bytes();
    std::vector<std::uint8_t> gathered(bb * ranks);
    for (int r = 0; r < ranks; ++r)
      for (std::size_t t = 0; t < shapes.size(); ++t) {
        std::vector<float> delta = random_floats(static_cast<std::size_t>(codec.plan(t).numel()),
                                                 60 + static_cast<std::uint32_t>(10 * r + t));
        codec.encode(t, delta, {gathered.data() + r * bb, bb});
      }
    for (std::size_t t = 0; t < shapes.size(); ++t) {
      const auto n = static_cast<std::size_t>(codec.plan(t).numel());
      const std::vector<float> p0 = random_floats(n, 90 + static_cast<std::uint32_t>(t));
      std::vector<float> q(n), want = p0, got = p0, q2(n);
      codec.decode(t, gathered, ranks, q);
      for (std::size_t i = 0; i < n; ++i) want[i] -= 1e-3f * static_cast<float>((q[i] > 0.0f) - (q[i] < 0.0f));
      codec.decode_sign_step(t, gathered, ranks, q2, got, 1e-3f);
      EXPECT_EQ(got, want) << "tensor " << t;
      EXPECT_EQ(q2, q) << "tensor " << t;
    }
  }
}

}  // namespace
}  // namespace lowsync::sync::demo
