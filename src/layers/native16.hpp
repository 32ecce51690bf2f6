// Pieces shared by the native 16-bit plans of several layers (private to src/layers).
#pragma once

#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {

// Floats of `stage` stage_activations16 takes: x, y, dy and dx of the whole batch.
constexpr std::size_t activation_stage16_floats(std::size_t input_size, std::size_t output_size) {
  return 2 * (input_size + output_size);
}

// Runs `inner`, an fp32 plan whose parameters already live in 16 bits (it encodes its own
// gradients) and whose y and dx already lie on the 16-bit grid, on u16 activations: x (and y, dy
// in backward) are decoded into `stage`, y and dx encoded back. input_size / output_size:
// elements of x / y for the plan's batch.
std::unique_ptr<LayerPlan16> stage_activations16(std::unique_ptr<LayerPlan> inner, std::size_t input_size,
                                                 std::size_t output_size, bool bf16, std::span<float> stage);

}  // namespace lowsync::layers
