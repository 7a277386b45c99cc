# ctest entries for the Python test suites: pytest with the build tree's package
# first on the path. Included from python/CMakeLists.txt (needs target _multihead).
enable_testing()
set(_multihead_test_env
  PYTHONPATH=${CMAKE_CURRENT_BINARY_DIR}
  PYTHONDONTWRITEBYTECODE=1)
if(MULTIHEAD_SANITIZE)
  # The extension is instrumented but python is not: ASan's runtime must load first,
  # and libstdc++ with it so that ASan can intercept C++ throws. Python's own
  # allocations are never freed at exit, so leak checking would only report those.
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libasan.so
                  OUTPUT_VARIABLE _multihead_libasan OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libstdc++.so
                  OUTPUT_VARIABLE _multihead_libstdcxx OUTPUT_STRIP_TRAILING_WHITESPACE)
  list(APPEND _multihead_test_env "LD_PRELOAD=${_multihead_libasan}:${_multihead_libstdcxx}"
       "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1")
endif()
# --capture=sys: what the library or a sanitizer writes to fd 2 reaches the log even
# when the process dies.
foreach(_suite attention vs_torch module module_vs_torch kv_cache rotary attention_cached safetensors_files)
  add_test(NAME python.${_suite}
           COMMAND ${Python_EXECUTABLE} -m pytest -q -p no:cacheprovider --capture=sys
                   ${CMAKE_CURRENT_LIST_DIR}/test_${_suite}.py
           WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(python.${_suite} PROPERTIES ENVIRONMENT "${_multihead_test_env}" TIMEOUT 900)
endforeach()
# Without torch every comparison is skipped (pytest exits 0): report that as skipped.
set_tests_properties(python.vs_torch python.module_vs_torch PROPERTIES SKIP_REGULAR_EXPRESSION "\n[0-9]+ skipped in ")
