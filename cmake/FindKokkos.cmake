# Find module for Debian's Kokkos (libtrilinos-kokkos-dev, Kokkos 3.4, Serial backend).
# Debian's KokkosConfig.cmake points its targets at an include path that does not exist, so we
# wrap the installed library in our own INTERFACE target with /usr/include/trilinos as SYSTEM.
find_path(Kokkos_INCLUDE_DIR Kokkos_Core.hpp PATH_SUFFIXES trilinos)
find_library(Kokkos_CORE_LIBRARY NAMES trilinos_kokkoscore kokkoscore)
if(Kokkos_INCLUDE_DIR AND EXISTS "${Kokkos_INCLUDE_DIR}/KokkosCore_config.h")
  file(STRINGS "${Kokkos_INCLUDE_DIR}/KokkosCore_config.h" _kokkos_ver REGEX "#define KOKKOS_VERSION [0-9]+")
  string(REGEX REPLACE ".*KOKKOS_VERSION ([0-9]+).*" "\\1" _kokkos_num "${_kokkos_ver}")
  if(_kokkos_num)
    math(EXPR _maj "${_kokkos_num} / 10000")
    math(EXPR _min "${_kokkos_num} / 100 % 100")
    math(EXPR _pat "${_kokkos_num} % 100")
    set(Kokkos_VERSION "${_maj}.${_min}.${_pat}")
  endif()
endif()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Kokkos REQUIRED_VARS Kokkos_CORE_LIBRARY Kokkos_INCLUDE_DIR
                                  VERSION_VAR Kokkos_VERSION)
if(Kokkos_FOUND AND NOT TARGET Kokkos::kokkos)
  find_library(Kokkos_DL_LIBRARY dl)
  add_library(Kokkos::kokkos INTERFACE IMPORTED)
  set_target_properties(Kokkos::kokkos PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${Kokkos_INCLUDE_DIR}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${Kokkos_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${Kokkos_CORE_LIBRARY};${CMAKE_DL_LIBS}")
endif()
mark_as_advanced(Kokkos_INCLUDE_DIR Kokkos_CORE_LIBRARY Kokkos_DL_LIBRARY)
