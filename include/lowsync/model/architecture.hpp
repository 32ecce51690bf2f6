// Model architectures by name (model.arch): each is one builder file (src/model/arch_*.cpp) and
// one line of the table in src/model/architecture.cpp. An architecture says what one sample looks
// like ([C, H, W] images, [T] token windows), how many classes its output scores and at how many
// positions per sample (1 for an image classifier, T for a causal language model).
#pragma once

#include "lowsync/layers/layer.hpp"

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace lowsync::model {

// Sizes of the configurable architectures (model.gpt.*); mlp and cnn ignore them.
struct ArchOptions {
  int gpt_ctx = 128, gpt_width = 128, gpt_layers = 4, gpt_heads = 4;
};

// ArchOptions from the model.gpt.* values, validated: each positive and within bounds, width a
// multiple of heads; a bad value is a one-line error naming its key.
ArchOptions arch_options(std::int64_t ctx, std::int64_t width, std::int64_t layers, std::int64_t heads);

struct Architecture {
  std::string_view name;
  layers::Shape input_shape;  // one sample, without the batch dimension
  int num_classes = 0;        // logits per position
  int positions = 1;          // logit rows per sample: labels per sample, loss rows per sample
  std::vector<std::unique_ptr<layers::Layer>> (*build)(const ArchOptions&) = nullptr;
};

// The registered architecture `name` with its shapes for `options`; an unknown name fails naming
// model.arch and every known one.
Architecture find_architecture(std::string_view name, const ArchOptions& options = {});
// Registered names, in table order.
std::vector<std::string_view> architecture_names();

// Refuses a precision.compute (fp32 | fp8 | bf16 | fp16) the architecture cannot run, with one
// line naming model.arch and precision.compute: gpt refuses fp8 (its fake quantization covers the
// weight of a single GEMM per layer, and a transformer block runs six).
void validate_arch_compute(std::string_view arch, std::string_view compute);

// The builders (one file each).
Architecture mlp_architecture(const ArchOptions& options);
Architecture cnn_architecture(const ArchOptions& options);
Architecture gpt_architecture(const ArchOptions& options);

}  // namespace lowsync::model
