// model.arch = "gpt" (ALGORITHMS.md §8): byte-level causal transformer. [T] bytes -> token +
// position embedding [T, C] -> L pre-LN blocks -> LayerNorm -> head Linear(C, 256, no bias) ->
// [T, 256] logits, a next-byte prediction at each of the T positions.
#include "lowsync/layers/transformer.hpp"
#include "lowsync/model/architecture.hpp"

namespace lowsync::model {

namespace {
constexpr int kVocab = 256;  // bytes
}

Architecture gpt_architecture(const ArchOptions& o) {
  return {"gpt", {o.gpt_ctx}, kVocab, o.gpt_ctx, [](const ArchOptions& opt) {
            const std::int64_t t = opt.gpt_ctx, c = opt.gpt_width;
            std::vector<std::unique_ptr<layers::Layer>> ls;
            ls.push_back(layers::make_embedding(t, c, kVocab));
            for (int l = 0; l < opt.gpt_layers; ++l) ls.push_back(layers::make_transformer_block(t, c, opt.gpt_heads));
            ls.push_back(layers::make_layernorm(t, c));
            ls.push_back(layers::make_linear_rows(t, c, kVocab, false));
            return ls;
          }};
}

}  // namespace lowsync::model
