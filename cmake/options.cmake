option(MULTIHEAD_BUILD_TESTS "Build the test suite" ON)
option(MULTIHEAD_BUILD_CLI "Build the multihead command-line tool" ON)
option(MULTIHEAD_BUILD_PYTHON "Build the Python bindings" ON)
option(MULTIHEAD_BUILD_FUZZ "Build the libFuzzer target (clang only)" OFF)
option(MULTIHEAD_WERROR "Treat warnings as errors" OFF)
option(MULTIHEAD_SANITIZE "Build with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)

# Flags for our own targets only (never forced on consumers).
add_library(multihead_warnings INTERFACE)
# -Wno-restrict: g++ 12 reports false positives inside <string> at -O3 (GCC bug 105329).
target_compile_options(multihead_warnings INTERFACE -Wall -Wextra -Wpedantic -Wno-unknown-pragmas -Wno-restrict)
if(MULTIHEAD_WERROR)
  target_compile_options(multihead_warnings INTERFACE -Werror)
endif()

# Instruments every target of the build; tests/consumer reuses the flags for its own link.
set(MULTIHEAD_SANITIZE_FLAGS
    -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
if(MULTIHEAD_SANITIZE)
  add_compile_options(${MULTIHEAD_SANITIZE_FLAGS})
  add_link_options(-fsanitize=address,undefined)
endif()
