# Fuzz targets and sanitizer suites (docs/RELIABILITY.md), included from CMakeLists.txt.
# Always: each target in tests/fuzz/fuzz_*.c is built with standalone.c (any compiler) and
# replays its seed corpus and crash regressions (fuzz_corpus_<target>). With
# FL_SANITIZER_SUITES: the project is built again with clang under ASan+UBSan and TSan and
# its tests run there (sanitize_asan, sanitize_tsan), and each target runs under libFuzzer
# for FL_FUZZ_SECONDS (fuzz_<target>). tests/fuzz/suite.sh does the work; it exits 77
# (skipped) where clang or libFuzzer is missing.

set(FL_FUZZ_TARGETS csv pickle conf ops state args commands state_report top)
set(FL_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})
option(FL_SANITIZER_SUITES "register the sanitizer and libFuzzer tests (clang sub-builds)" ON)
option(FL_LIBFUZZER "build the libFuzzer targets fuzz_<target> (clang; set by tests/fuzz/suite.sh)" OFF)
set(FL_FUZZ_SECONDS 30 CACHE STRING "seconds each libFuzzer target runs in CTest")

foreach(t ${FL_FUZZ_TARGETS})
  add_executable(fuzz_${t}_corpus ${FL_FUZZ_DIR}/fuzz_${t}.c ${FL_FUZZ_DIR}/fuzz_support.c ${FL_FUZZ_DIR}/standalone.c)
  target_include_directories(fuzz_${t}_corpus PRIVATE src ${FL_FUZZ_DIR})
  target_compile_definitions(fuzz_${t}_corpus PRIVATE _GNU_SOURCE)
  target_link_libraries(fuzz_${t}_corpus PRIVATE fragless_cli)
  add_test(NAME fuzz_corpus_${t}
    COMMAND fuzz_${t}_corpus ${FL_FUZZ_DIR}/corpus/${t} ${FL_FUZZ_DIR}/crashes/${t})
  set_tests_properties(fuzz_corpus_${t} PROPERTIES TIMEOUT 300)
  if(FL_LIBFUZZER)
    # Only in suite.sh's clang build, which also instruments the library for coverage.
    add_executable(fuzz_${t} EXCLUDE_FROM_ALL ${FL_FUZZ_DIR}/fuzz_${t}.c ${FL_FUZZ_DIR}/fuzz_support.c)
    target_include_directories(fuzz_${t} PRIVATE src ${FL_FUZZ_DIR})
    target_compile_definitions(fuzz_${t} PRIVATE _GNU_SOURCE)
    target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_link_libraries(fuzz_${t} PRIVATE fragless_cli)
  endif()
endforeach()

if(FL_SANITIZER_SUITES)
  set(fl_suite sh ${FL_FUZZ_DIR}/suite.sh)
  # The sub-builds compile with two jobs: PROCESSORS 2 keeps `ctest -j2` from running
  # anything beside them. Measured on the 2-core CI machine (docs/RELIABILITY.md):
  # asan ~3 min, tsan ~30 s, fuzz build ~15 s; the whole `make test` ~6 min.
  add_test(NAME sanitize_asan COMMAND ${fl_suite} asan ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
  set_tests_properties(sanitize_asan PROPERTIES TIMEOUT 1500 PROCESSORS 2)
  # Every test named like threads, stress or top: the multi-threaded ones; and CUDA IPC
  # under fragless run (the exporter's server thread).
  # test_preload_ipc is `test_preload --ipc`: the targets to build are named.
  add_test(NAME sanitize_tsan COMMAND ${fl_suite} tsan ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}
           "^test_(threads|graphs|stress_top|top|preload_ipc)$" test_threads test_graphs test_stress_top test_top test_preload)
  set_tests_properties(sanitize_tsan PROPERTIES TIMEOUT 900 PROCESSORS 2)
  add_test(NAME fuzz_build COMMAND ${fl_suite} fuzz-build ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR} ${FL_FUZZ_TARGETS})
  set_tests_properties(fuzz_build PROPERTIES TIMEOUT 900 PROCESSORS 2 FIXTURES_SETUP fl_fuzz_build)
  set(fl_sanitize_tests sanitize_asan sanitize_tsan fuzz_build)
  foreach(t ${FL_FUZZ_TARGETS})
    add_test(NAME fuzz_${t} COMMAND ${fl_suite} fuzz ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR} ${t} ${FL_FUZZ_SECONDS})
    math(EXPR fl_fuzz_timeout "${FL_FUZZ_SECONDS} + 120")
    set_tests_properties(fuzz_${t} PROPERTIES TIMEOUT ${fl_fuzz_timeout} FIXTURES_REQUIRED fl_fuzz_build)
    list(APPEND fl_sanitize_tests fuzz_${t})
  endforeach()
  set_tests_properties(${fl_sanitize_tests} PROPERTIES LABELS sanitize SKIP_RETURN_CODE 77)
endif()
