// oneDNN engine/stream wrapper with optional timing of every primitive (benchmarks compare the
// step time with the sum of primitive times).
#include "lowsync/core/timer.hpp"
#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {

std::int64_t shape_size(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Executor::Executor() : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

void Executor::run(const dnnl::primitive& p, const std::unordered_map<int, dnnl::memory>& args) {
  if (!profiling_) {
    p.execute(stream_, args);
    return;
  }
  Timer t;
  p.execute(stream_, args);
  stream_.wait();
  primitive_seconds_ += t.seconds();
}

}  // namespace lowsync::layers
