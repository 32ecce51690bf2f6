// Tensor: a Kokkos::View (unmanaged: a named window into a flat buffer the model owns), a shape
// and a dtype. Parameters and gradients are Tensors over ONE flat fp32 buffer each, so one
// collective covers all of them.
#pragma once

#include "lowsync/core/dtype.hpp"

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lowsync::tensor {

struct Tensor {
  using View = Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  std::string name;
  View view;
  std::vector<std::int64_t> shape;  // e.g. [out, in] or [out, in, kh, kw]
  DType dtype = DType::f32;

  std::size_t size() const { return view.extent(0); }
  float* data() const { return view.data(); }
  std::span<float> span() const { return {view.data(), view.extent(0)}; }
};

}  // namespace lowsync::tensor
