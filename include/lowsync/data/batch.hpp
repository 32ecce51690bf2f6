// A batch as the model sees it. Images: row-major [N, C, H, W] fp32 and labels [N]. Text (the gpt
// workload): tokens [N, T] as floats 0..255 (bytes) and next-byte targets [N, T].
#pragma once

#include <cstdint>

namespace lowsync::data {

struct Batch {
  const float* images = nullptr;         // images [N, 1, 28, 28] in [0, 1]; text: tokens [N, T], 0..255
  const std::int32_t* labels = nullptr;  // images [N], 0..9; text: targets [N, T], 0..255
  int size = 0;                          // N
};

}  // namespace lowsync::data
