# test_report_browser: `fragless report` rendered by headless chromium (DOM and a 1280x800
# screenshot checked). Skipped (exit 77) where chromium is absent; .ci/run installs it.
add_test(NAME test_report_browser
  COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/report_browser.sh $<TARGET_FILE:fragless> ${CMAKE_SOURCE_DIR})
set_tests_properties(test_report_browser PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
