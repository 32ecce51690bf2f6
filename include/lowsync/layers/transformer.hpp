// Layers of the byte-level causal transformer (model.arch = gpt, ALGORITHMS.md §8). Every layer
// takes per-sample [T, ...] shapes and runs its oneDNN primitives over all batch * T rows at once:
// LayerNorm, GELU (tanh), causal multi-head attention (batched matmuls + softmax), token +
// position embedding (Kokkos gather / scatter-add), and the pre-LN block composed of them and
// Linear (layers::make_linear_rows).
#pragma once

#include "lowsync/layers/layer.hpp"

#include <cstdint>
#include <memory>

namespace lowsync::layers {

// LayerNorm over the last dimension of [rows, width] per sample: y = (x - mean) / sqrt(var + eps)
// * weight + bias, eps = 1e-5, biased variance; parameters "weight" (ones) and "bias" (zeros), [width].
inline constexpr float kLayerNormEps = 1e-5f;
std::unique_ptr<Layer> make_layernorm(std::int64_t rows, std::int64_t width);

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise on `shape`.
std::unique_ptr<Layer> make_gelu(Shape shape);

// Causal multi-head self-attention without projections: input [T, 3C] = (q | k | v) rows as a
// Linear(C, 3C) writes them, head h using columns h*C/H .. (h+1)*C/H - 1 of each third; output
// [T, C], heads concatenated. Position t attends to positions <= t, scores scaled by 1/sqrt(C/H).
std::unique_ptr<Layer> make_causal_attention(std::int64_t ctx, std::int64_t width, std::int64_t heads);

// Token + position embedding: input [T] floats holding byte values (0 .. vocab-1, exact in
// fp32/bf16/fp16), output [T, C] = token[x[t]] + position[t]. Parameters "token" [vocab, C] and
// "position" [T, C], normal(0, 0.02). A non-integral or out-of-range input value is an error.
std::unique_ptr<Layer> make_embedding(std::int64_t ctx, std::int64_t width, std::int64_t vocab);

// Pre-LN transformer block over [T, C]:
//   x += proj(attn(qkv(ln1(x))));  x += fc2(gelu(fc1(ln2(x))))
// qkv Linear(C, 3C), proj Linear(C, C), fc1 Linear(C, 4C), fc2 Linear(4C, C), all with bias.
// Parameters, in order: ln1.weight, ln1.bias, qkv.weight, qkv.bias, proj.weight, proj.bias,
// ln2.weight, ln2.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias.
std::unique_ptr<Layer> make_transformer_block(std::int64_t ctx, std::int64_t width, std::int64_t heads);

}  // namespace lowsync::layers
