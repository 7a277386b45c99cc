# The `multihead` command's exit status and one-line errors for every subcommand
# (exit_codes.py), and its parsing layer on its own (arguments_unit.cpp).
if(TARGET multihead_cli)
  add_test(NAME cli.exit_codes
           COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/exit_codes.py $<TARGET_FILE:multihead_cli>)
  set_tests_properties(cli.exit_codes PROPERTIES TIMEOUT 300 ENVIRONMENT "OMP_WAIT_POLICY=passive")

  add_executable(multihead_cli_arguments_tests ${CMAKE_CURRENT_LIST_DIR}/arguments_unit.cpp)
  target_link_libraries(multihead_cli_arguments_tests PRIVATE multihead_cli_arguments GTest::gtest_main
                        multihead_warnings)
  add_test(NAME cli.arguments COMMAND multihead_cli_arguments_tests)
  set_tests_properties(cli.arguments PROPERTIES TIMEOUT 60)
endif()
