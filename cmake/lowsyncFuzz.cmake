# libFuzzer targets (tests/fuzz, a separate CMake project built with clang): LOWSYNC_FUZZ = AUTO
# (default: on when clang++ links -fsanitize=fuzzer), ON (fail without it) or OFF. The fuzz
# project is not part of `all`, so the g++ build is not slowed: the ctest fixture fuzz.build
# builds it (ccache-friendly) before the smoke runs (label fuzz) that use it.
set(LOWSYNC_FUZZ "AUTO" CACHE STRING "Build the libFuzzer targets with clang: AUTO, ON or OFF")
set_property(CACHE LOWSYNC_FUZZ PROPERTY STRINGS AUTO ON OFF)
set(LOWSYNC_FUZZ_CXX "" CACHE FILEPATH "clang++ for the fuzz targets (default: clang++ on PATH)")

set(lowsync_fuzz_ok FALSE)
set(lowsync_fuzz_why "LOWSYNC_FUZZ=OFF")
if(NOT LOWSYNC_FUZZ STREQUAL "OFF")
  if(NOT LOWSYNC_FUZZ_CXX)
    find_program(lowsync_clangxx NAMES clang++ clang++-16 clang++-15 clang++-14)
    if(lowsync_clangxx)
      set(LOWSYNC_FUZZ_CXX "${lowsync_clangxx}")
    endif()
  endif()
  string(REGEX REPLACE "\\+\\+" "" lowsync_fuzz_cc "${LOWSYNC_FUZZ_CXX}")
  if(NOT LOWSYNC_FUZZ_CXX)
    set(lowsync_fuzz_why "no clang++ found (apt-get install clang libclang-rt-14-dev)")
  else()
    # Does this clang link a libFuzzer target? (Debian: the runtime is in libclang-rt-N-dev.)
    set(probe "${CMAKE_BINARY_DIR}/fuzz-probe")
    file(WRITE "${probe}.cpp"
         "#include <cstddef>\n#include <cstdint>\nextern \"C\" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n")
    execute_process(COMMAND ${LOWSYNC_FUZZ_CXX} -fsanitize=fuzzer,address "${probe}.cpp" -o "${probe}"
                    RESULT_VARIABLE probe_rc OUTPUT_QUIET ERROR_QUIET)
    if(probe_rc EQUAL 0)
      set(lowsync_fuzz_ok TRUE)
    else()
      set(lowsync_fuzz_why "${LOWSYNC_FUZZ_CXX} cannot link -fsanitize=fuzzer (apt-get install libclang-rt-14-dev)")
    endif()
  endif()
  if(NOT lowsync_fuzz_ok AND LOWSYNC_FUZZ STREQUAL "ON")
    message(FATAL_ERROR "lowsync: LOWSYNC_FUZZ=ON but ${lowsync_fuzz_why}; set LOWSYNC_FUZZ_CXX or LOWSYNC_FUZZ=OFF")
  endif()
endif()

if(NOT lowsync_fuzz_ok)
  message(STATUS "lowsync: LOWSYNC_FUZZ=${LOWSYNC_FUZZ} -> fuzzing off: ${lowsync_fuzz_why}")
  return()
endif()
message(STATUS "lowsync: LOWSYNC_FUZZ=${LOWSYNC_FUZZ} -> libFuzzer targets with ${LOWSYNC_FUZZ_CXX} (ctest -L fuzz)")

include(ExternalProject)
set(lowsync_fuzz_bin "${CMAKE_BINARY_DIR}/fuzz")
ExternalProject_Add(lowsync_fuzz
  SOURCE_DIR "${PROJECT_SOURCE_DIR}/tests/fuzz"
  BINARY_DIR "${lowsync_fuzz_bin}"
  CMAKE_ARGS -DCMAKE_CXX_COMPILER=${LOWSYNC_FUZZ_CXX} -DCMAKE_C_COMPILER=${lowsync_fuzz_cc}
             -DCMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER}
             -DLOWSYNC_SOURCE_DIR=${PROJECT_SOURCE_DIR}
  INSTALL_COMMAND ""
  BUILD_ALWAYS TRUE
  EXCLUDE_FROM_ALL TRUE)

add_test(NAME fuzz.build COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target lowsync_fuzz)
set_tests_properties(fuzz.build PROPERTIES LABELS fuzz FIXTURES_SETUP lowsync_fuzz TIMEOUT 900)
# Smoke runs: the committed seeds plus a scratch corpus (new inputs go there, not into the
# tree), a few thousand executions or 12 s each, whichever comes first. Leak checks are off:
# Open MPI and HDF5 keep allocations until exit.
foreach(target idx config checkpoint)
  add_test(NAME fuzz.${target}
           COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=0
                   bash -c "rm -rf \"$1\" && mkdir -p \"$1\" && exec \"$2\" -runs=3000 -max_total_time=12 -rss_limit_mb=2048 -artifact_prefix=\"$1/\" \"$1\" \"$3\""
                   fuzz "${lowsync_fuzz_bin}/scratch-${target}" "${lowsync_fuzz_bin}/fuzz_${target}"
                   "${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${target}")
  set_tests_properties(fuzz.${target} PROPERTIES LABELS fuzz FIXTURES_REQUIRED lowsync_fuzz TIMEOUT 120)
endforeach()
