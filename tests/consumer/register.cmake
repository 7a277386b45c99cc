# consumer.find_package: installs this build tree into a scratch prefix, then
# configures, builds and runs tests/consumer against it as a user's project would.
# Included from tests/CMakeLists.txt.
set(_consumer_cxx_flags "")
if(MULTIHEAD_SANITIZE)
  # The installed library is instrumented, so its consumer must link the sanitizer runtimes.
  list(JOIN MULTIHEAD_SANITIZE_FLAGS " " _consumer_cxx_flags)
endif()

add_test(NAME consumer.find_package
  COMMAND ${CMAKE_COMMAND}
    -DMULTIHEAD_BINARY_DIR=${PROJECT_BINARY_DIR}
    -DCONSUMER_SOURCE_DIR=${CMAKE_CURRENT_LIST_DIR}
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer
    -DGENERATOR=${CMAKE_GENERATOR}
    -DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}
    -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
    -DBUILD_TYPE=${CMAKE_BUILD_TYPE}
    -DCXX_FLAGS=${_consumer_cxx_flags}
    -P ${CMAKE_CURRENT_LIST_DIR}/run.cmake)
set_tests_properties(consumer.find_package PROPERTIES TIMEOUT 300)
unset(_consumer_cxx_flags)
