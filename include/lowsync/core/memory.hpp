// Training-state accounting: every buffer lowsync allocates for training (parameters, gradients,
// optimizer state, activations, workspaces, communication buffers) is a TrackedBuffer, so
// train_state_bytes in summary.json is the peak of what we really hold, counted where allocated.
#pragma once

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace lowsync::memory {

void add_bytes(std::int64_t delta);
std::int64_t current_bytes();
std::int64_t peak_bytes();
void reset_peak();
// Peak resident set size of this process (getrusage), bytes.
std::int64_t peak_rss_bytes();

// A contiguous, zero-initialised, tracked host buffer of T (a Kokkos::View underneath, so kernels
// can use view()). Movable, not copyable.
template <class T>
class TrackedBuffer {
 public:
  TrackedBuffer() = default;
  TrackedBuffer(const std::string& label, std::size_t count)
      : view_(label, count), count_(count) { add_bytes(static_cast<std::int64_t>(bytes())); }
  ~TrackedBuffer() { add_bytes(-static_cast<std::int64_t>(bytes())); }
  TrackedBuffer(TrackedBuffer&& o) noexcept : view_(std::move(o.view_)), count_(o.count_) { o.count_ = 0; }
  TrackedBuffer& operator=(TrackedBuffer&& o) noexcept {
    if (this != &o) {
      add_bytes(-static_cast<std::int64_t>(bytes()));
      view_ = std::move(o.view_);
      count_ = o.count_;
      o.count_ = 0;
    }
    return *this;
  }
  TrackedBuffer(const TrackedBuffer&) = delete;
  TrackedBuffer& operator=(const TrackedBuffer&) = delete;

  T* data() const { return view_.data(); }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  std::span<T> span() const { return {view_.data(), count_}; }
  T& operator[](std::size_t i) const { return view_.data()[i]; }
  const Kokkos::View<T*, Kokkos::HostSpace>& view() const { return view_; }

 private:
  Kokkos::View<T*, Kokkos::HostSpace> view_;
  std::size_t count_ = 0;
};

}  // namespace lowsync::memory
