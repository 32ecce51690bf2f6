// A batch as the model sees it: row-major images [N, C, H, W] in fp32 and labels [N].
#pragma once

#include <cstdint>

namespace lowsync::data {

struct Batch {
  const float* images = nullptr;      // [N, 1, 28, 28], values in [0, 1]
  const std::int32_t* labels = nullptr;  // [N], 0..9
  int size = 0;                        // N
};

}  // namespace lowsync::data
