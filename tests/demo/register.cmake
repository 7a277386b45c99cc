# The demo's attention.html rendered in headless Chromium (skipped when chromium is missing).
if(TARGET multihead_cli)
  add_test(NAME demo_attention_html_renders
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/render_test.sh $<TARGET_FILE:multihead_cli>)
  set_tests_properties(demo_attention_html_renders PROPERTIES
    SKIP_RETURN_CODE 77 TIMEOUT 300 ENVIRONMENT "OMP_WAIT_POLICY=passive")
endif()
