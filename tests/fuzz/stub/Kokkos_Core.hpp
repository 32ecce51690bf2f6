// Stand-in for Kokkos in the fuzz build only: the Communicator fences before each collective
// (data may come from a Kokkos kernel), and the fuzz targets run no kernels, so a fence is a no-op.
// It spares compiling Kokkos' OpenMP headers with clang (Debian's clang has no libomp).
#pragma once

namespace Kokkos {
inline void fence() {}
}  // namespace Kokkos
