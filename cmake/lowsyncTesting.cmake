# lowsync_add_mpi_test(target RANKS 1 2 4): one ctest per rank count, run by mpiexec. As root
# Open MPI needs --allow-run-as-root; on our 2-core machines --oversubscribe. TIMEOUT turns a
# hang into a failure.
set(LOWSYNC_MPIEXEC_PREFLAGS --oversubscribe --bind-to none)
execute_process(COMMAND id -u OUTPUT_VARIABLE _lowsync_uid OUTPUT_STRIP_TRAILING_WHITESPACE)
if(_lowsync_uid STREQUAL "0")
  list(APPEND LOWSYNC_MPIEXEC_PREFLAGS --allow-run-as-root)
endif()

function(lowsync_add_mpi_test target)
  cmake_parse_arguments(arg "" "" "RANKS" ${ARGN})
  foreach(n IN LISTS arg_RANKS)
    add_test(NAME ${target}.np${n}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n} ${LOWSYNC_MPIEXEC_PREFLAGS}
                     ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${target}> ${MPIEXEC_POSTFLAGS})
    set_tests_properties(${target}.np${n} PROPERTIES LABELS mpi PROCESSORS ${n} TIMEOUT 180
                         ENVIRONMENT "OMP_NUM_THREADS=1;LOWSYNC_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  endforeach()
endfunction()
